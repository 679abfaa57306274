"""Moved to :mod:`auricle.training.checkpointing`; kept so old imports keep working."""

from auricle.training.checkpointing import (
    STATE_FORMAT,
    STATE_VERSION,
    BestCheckpoints,
    average_state_dicts,
    list_states,
    load_state,
    save_state,
    state_path,
)

__all__ = ["STATE_FORMAT", "STATE_VERSION", "BestCheckpoints", "average_state_dicts", "list_states", "load_state",
           "save_state", "state_path"]
