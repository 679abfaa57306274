"""Training state on disk: full resume points, the best weights, and their average.

A state file holds everything a resumed run needs to continue as if it had
never stopped: model, optimiser, the step count (which fixes the data position
and the learning rate, see ``train``), the seeds, the best-checkpoint table and
the global torch RNG. Files are written to a temporary name and renamed, so a
killed job leaves either the old or the new file, never half of one; they are
read with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from auricle.errors import CheckpointError
from auricle.io import atomic

STATE_FORMAT = "auricle-distill-state"
STATE_VERSION = 1
_STATE_NAME = re.compile(r"^state-(\d{8})\.pt$")


def atomic_torch_save(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as temporary:
        torch.save(payload, temporary)


def state_path(folder: Path, step: int) -> Path:
    return folder / f"state-{step:08d}.pt"


def list_states(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete state file in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STATE_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_state(folder: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` for ``step`` and delete all but the newest ``keep`` state files."""
    path = state_path(folder, step)
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, **state}, path)
    for _, old in list_states(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable training state ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an auricle distillation state file")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: state version {state.get('version')} (this auricle reads {STATE_VERSION})")
    return state


@dataclass
class BestCheckpoints:
    """The ``keep`` best weight snapshots by score (higher is better), as files in ``folder``.

    Ties keep the later (longer trained) step. The table itself (score, step) travels in the
    state file, so a resumed run knows which files count.
    """

    folder: Path
    keep: int
    entries: list[tuple[float, int]] = field(default_factory=list)

    def path(self, step: int) -> Path:
        return self.folder / f"weights-{step:08d}.pt"

    def offer(self, score: float, step: int, weights: dict[str, torch.Tensor]) -> bool:
        """Keep these weights if they rank among the best; return whether they were kept."""
        if self.keep < 1 or score != score:  # NaN never ranks
            return False
        candidates = sorted(self.entries + [(score, step)], key=lambda entry: (-entry[0], -entry[1]))
        kept = candidates[: self.keep]
        if (score, step) not in kept:
            return False
        atomic_torch_save({key: value.detach().cpu().clone() for key, value in weights.items()}, self.path(step))
        # The dropped files go with :meth:`tidy` once the next state is saved: the state on disk until then
        # still lists them, and a run killed in between resumes from it.
        self.entries = kept
        return True

    def tidy(self) -> None:
        """Remove weight files the table does not list (left by a run killed between writes)."""
        if not self.folder.is_dir():
            return
        listed = {self.path(step).name for _, step in self.entries}
        for path in self.folder.glob("weights-*.pt"):
            if path.name not in listed:
                path.unlink(missing_ok=True)

    def average(self) -> dict[str, torch.Tensor] | None:
        """Element-wise mean of the kept weights (integer buffers from the best one); None if none kept."""
        if not self.entries:
            return None
        loaded = []
        for _, step in self.entries:
            path = self.path(step)
            if not path.exists():  # removed by a run of older code killed between an offer and its state
                continue
            try:
                loaded.append(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as error:
                raise CheckpointError(f"{path}: unreadable weights ({type(error).__name__}: {error})") from None
        return average_state_dicts(loaded) if loaded else None


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of floating-point tensors; other tensors (counters) are taken from the first dict."""
    first = state_dicts[0]
    averaged = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            stacked = torch.stack([sd[key].to(torch.float64) for sd in state_dicts])
            averaged[key] = stacked.mean(dim=0).to(tensor.dtype)
        else:
            averaged[key] = tensor.clone()
    return averaged
