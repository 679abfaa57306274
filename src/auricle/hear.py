"""The HEAR 2021 API under the short module name ``auricle.hear`` (as issue 5 names it).

Everything lives in :mod:`auricle.downstream.hear`; HEAR tools take either name.
"""

from auricle.downstream.hear import (  # noqa: F401
    FRAMES,
    TIMESTAMP_MODES,
    HearModel,
    get_scene_embeddings,
    get_timestamp_embeddings,
    load_model,
    timestamp_hop_ms,
)
