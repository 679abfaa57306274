"""The teacher pass: score every view of every chunk, keep the top-k, one file per (shard, epoch).

Work is cut into units, one per (shard, epoch). Under ``torchrun`` rank r takes
units r, r + world, r + 2 world, ... of the store's fixed unit list, so ranks
never share a unit; each unit is written atomically, and a resumed run skips the
units already on disk, so a killed run loses at most the units in flight and
never writes one twice. The only communication is the manifest hand-off at the
start and a barrier at the end (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from auricle.devices import torch_device
from auricle.distill import DistillError, DistillUsageError
from auricle.distill.augment import AugmentConfig, View, ViewRenderer, iter_views
from auricle.distill.shards import MANIFEST as SHARDS_MANIFEST
from auricle.distill.shards import ShardReader, ShardSet
from auricle.distill import file_sha256
from auricle.distill.store import CODECS, DEFAULT_CODEC, TargetStore, encode_values
from auricle.distill.teachers import TeacherEnsemble, TeacherSpec, load_ensemble
from auricle.errors import AuricleError
from auricle.io import atomic
from auricle.training.distributed import Distributed

#: The job stops when this many units failed (over all ranks) before any succeeded.
FAILED_UNITS_TO_STOP = 3
# Views of other lengths waiting for a full batch, in batches, before all are scored.
_MAX_WAITING = 8
# Manifest fields that must agree for --resume (and for verify to trust the teachers).
_RUN_FIELDS = ("teachers", "augment", "seed", "epochs", "top_k", "codec", "num_classes", "shards")


@dataclass(frozen=True)
class TeachConfig:
    epochs: int = 1
    top_k: int = 20
    seed: int = 0
    batch_size: int = 16
    codec: str = DEFAULT_CODEC
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise DistillError(f"epochs must be at least 1, got {self.epochs}")
        if self.top_k < 1:
            raise DistillError(f"top-k must be at least 1, got {self.top_k}")
        if self.batch_size < 1:
            raise DistillError(f"batch size must be at least 1, got {self.batch_size}")
        if self.codec not in CODECS:
            raise DistillError(f"unknown value codec {self.codec!r} (choose from {', '.join(CODECS)})")


@dataclass
class TeachReport:
    """What a teacher pass did and what the store costs (sizes cover the whole store)."""

    store: str
    rank: int
    world_size: int
    units_total: int
    units_skipped: int
    units_written: int
    views_written: int
    seconds: float
    views_per_second: float
    views_total: int
    store_bytes: int
    bytes_per_view: float
    payload_bytes_per_view: int
    audio_bytes: int
    audio_pcm16_bytes: int
    store_fraction_of_shards: float
    store_fraction_of_pcm16: float
    complete: bool
    #: Units of this rank that could not be scored ("shard epoch N: reason"); --resume tries them again.
    failures: list[str] = field(default_factory=list)
    #: Units of this rank whose file was there but unreadable (cut short, corrupt), so they were done again.
    redone: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def code_version() -> dict:
    """auricle's version and, when run from a git checkout, its commit."""
    from auricle.version import __version__

    version = {"auricle": __version__, "git": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0:
            version["git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def build_manifest(shards: ShardSet, ensemble: TeacherEnsemble, config: TeachConfig) -> dict:
    return {
        "teachers": ensemble.identities(),
        "augment": config.augment.to_dict(),
        "seed": config.seed,
        "epochs": config.epochs,
        "top_k": config.top_k,
        "codec": config.codec,
        "num_classes": ensemble.num_classes,
        "uncovered_classes": [int(i) for i in np.flatnonzero(~ensemble.coverage.numpy())],
        "shards": {
            "path": str(shards.directory.resolve()),
            "manifest_sha256": file_sha256(shards.directory / SHARDS_MANIFEST),
            "names": [path.name for path in shards.shards],
            "chunks": {path.name: len(shards.keys(path)) for path in shards.shards},
        },
        "code_version": code_version(),
        "complete": False,
    }


def _differences(stored: dict, wanted: dict) -> list[str]:
    """The run fields that differ, each with the part that differs (the refusal should say what to fix)."""
    return [_describe(name, _comparable(name, stored.get(name)), _comparable(name, wanted.get(name)))
            for name in _RUN_FIELDS if _comparable(name, stored.get(name)) != _comparable(name, wanted.get(name))]


def _describe(field: str, stored, wanted) -> str:
    """``teachers (teacher 1: sha256)`` or ``shards (manifest_sha256)``; other fields by name alone."""
    if field == "teachers" and isinstance(stored, list) and isinstance(wanted, list):
        if len(stored) != len(wanted):
            return f"teachers ({len(stored)} in the store, {len(wanted)} given)"
        parts = [f"teacher {number}: {', '.join(_changed_keys(old, new))}"
                 for number, (old, new) in enumerate(zip(stored, wanted), 1) if old != new]
        return f"teachers ({'; '.join(parts)})"
    if field == "shards" and isinstance(stored, dict) and isinstance(wanted, dict):
        return f"shards ({', '.join(_changed_keys(stored, wanted))})"
    return field


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _comparable(field: str, value):
    """What must match on resume: content, not how a path was spelled (weights by sha256, shards by manifest)."""
    if field == "teachers" and isinstance(value, list):
        return [{key: item for key, item in teacher.items()
                 if not (teacher.get("kind") in ("checkpoint", "model") and key in ("spec", "name"))}
                for teacher in value]
    if field == "shards" and isinstance(value, dict):
        return {key: item for key, item in value.items() if key != "path"}
    return value


def _prepare_store(store_dir: Path, wanted: dict, resume: bool, rank: int) -> TargetStore:
    """Rank 0 creates (or checks, on resume) the manifest; other ranks only check it."""
    exists = (store_dir / "manifest.json").exists()
    if rank == 0 and not exists:
        return TargetStore.create(store_dir, wanted)
    if not exists:
        raise DistillError(f"{store_dir}: no manifest was written by rank 0")
    store = TargetStore.open(store_dir)
    if rank == 0 and not resume:
        if not store.done_units():  # an earlier run failed before its first unit: nothing to keep
            return TargetStore.create(store_dir, wanted)
        raise DistillUsageError(f"{store_dir}: already holds targets; use --resume to continue it or choose another --out")
    different = _differences(store.manifest, wanted)
    if different and rank == 0 and not store.done_units():  # nothing computed with the old settings to lose
        return TargetStore.create(store_dir, wanted)
    if different:
        raise DistillUsageError(f"{store_dir}: was made with other {', '.join(different)}; cannot resume it with these")
    if rank == 0:
        atomic.remove_leftovers(store_dir / "targets")
    return store


def _score_unit(reader: ShardReader, keys: list[str], epoch: int, renderer: ViewRenderer,
                ensemble: TeacherEnsemble, config: TeachConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, K), probabilities (N, K)) of a shard's views for one epoch, in key order.

    Only views of equal length share a batch (padding would change what the
    teacher hears), so views wait in one bucket per length; a bucket is scored
    when full, and all are scored when too many views wait.
    """
    k = min(config.top_k, ensemble.num_classes)
    indices = np.zeros((len(keys), k), dtype=np.int64)
    values = np.zeros((len(keys), k), dtype=np.float32)
    needs_mel = any(teacher.takes_mel for teacher in ensemble.teachers)
    buckets: dict[int, list[tuple[int, View]]] = {}

    def flush(length: int) -> None:
        batch = buckets.pop(length)
        waves = torch.from_numpy(np.stack([view.waveform for _, view in batch]))
        mel = renderer.mel(waves, [view.params for _, view in batch]) if needs_mel else None
        probabilities = ensemble.probabilities(waves, mel)
        if not torch.isfinite(probabilities).all():  # stored, NaN became zeros that passed for targets
            view = batch[int(torch.nonzero(~torch.isfinite(probabilities).all(dim=1))[0])][1]
            raise DistillError(f"view {view.key}: the teachers' output is not finite (broken teacher weights, "
                               "or audio far beyond full scale)")
        top = probabilities.topk(k, dim=1)
        rows = [row for row, _ in batch]
        indices[rows], values[rows] = top.indices.numpy(), top.values.numpy()

    for row, view in enumerate(iter_views(reader, epoch, renderer, keys)):
        length = len(view.waveform)
        buckets.setdefault(length, []).append((row, view))
        if len(buckets[length]) == config.batch_size:
            flush(length)
        elif sum(len(bucket) for bucket in buckets.values()) >= _MAX_WAITING * config.batch_size:
            for waiting in sorted(buckets):
                flush(waiting)
    for waiting in sorted(buckets):
        flush(waiting)
    return indices, values


def teach(
    shards_dir: str | os.PathLike,
    store_dir: str | os.PathLike,
    teachers: Sequence[TeacherSpec | str] = (),
    config: TeachConfig = TeachConfig(),
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    ensemble: TeacherEnsemble | None = None,
    on_failure: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> TeachReport:
    """Run (this rank's share of) the teacher pass; see the module docstring.

    A unit that cannot be scored (a damaged shard) is reported through ``on_failure``,
    listed in the report's ``failures`` and left for a later ``--resume``; the rest go on.
    ``precision`` is what the CED teachers named in ``teachers`` run in (auricle.distill.teachers).
    """
    from tqdm import tqdm

    device = torch_device(device)  # one line for a device this machine lacks
    shards = ShardSet.open(shards_dir)
    store_dir = Path(store_dir)
    if ensemble is None:
        ensemble = load_ensemble(teachers, device, precision)
    if config.augment.masks_mel and not ensemble.takes_mel:
        names = ", ".join(t.spec.spec for t in ensemble.teachers if not t.takes_mel)
        raise DistillUsageError(f"teacher {names} scores waveforms, so views cannot be masked on the log-mel; "
                                "pass --time-mask 0 --freq-mask 0 (in Python, AugmentConfig(time_mask=0, freq_mask=0))")
    if config.top_k > ensemble.num_classes:  # the store and its figures would claim more columns than it has
        raise DistillUsageError(f"--top-k {config.top_k}: the teachers score {ensemble.num_classes} classes; "
                                f"give at most {ensemble.num_classes}")
    wanted = build_manifest(shards, ensemble, config)
    runtime = Distributed(device)
    try:
        problem, store = None, None
        if runtime.rank == 0:
            try:
                store = _prepare_store(store_dir, wanted, resume, 0)
            except DistillError as error:
                problem = (str(error), isinstance(error, DistillUsageError))
        problem = runtime.share(problem)
        if problem is not None:
            raise (DistillUsageError if problem[1] else DistillError)(problem[0])
        if store is None:
            store = _prepare_store(store_dir, wanted, resume, runtime.rank)

        units = store.units()
        mine = units[runtime.rank :: runtime.world]
        # A unit's file that cannot be read (a copy cut short, a disk error) is no finished unit: do it again.
        damaged = {unit: problem for unit in mine if store.has_unit(*unit)
                   for problem in [store.unit_problem(*unit)] if problem}
        todo = [unit for unit in mine if unit in damaged or not store.has_unit(*unit)]
        renderer = ViewRenderer(config.augment, config.seed)
        bar = tqdm(total=sum(store.manifest["shards"]["chunks"][s] for s, _ in todo), unit="view",
                   disable=not (progress and runtime.rank == 0), file=sys.stderr,
                   desc=f"teacher pass ({len(todo)} units)")
        started = time.perf_counter()
        views = written = 0
        failures: list[str] = []
        queue = list(todo)
        # The job (all ranks together) stops when its first units all fail: not one bad shard but the teachers
        # or the set. Until a unit succeeds somewhere, the ranks add up their counts after each unit, in step.
        undecided = True
        while queue or undecided:
            failure = None
            if queue:
                shard, epoch = queue.pop(0)
                keys = shards.keys(shard)
                try:
                    with ShardReader(shards.directory / shard) as reader:
                        if reader.keys != keys:
                            raise DistillError(f"{reader.path}: members do not match {shards.directory / 'index.csv'}")
                        indices, values = _score_unit(reader, keys, epoch, renderer, ensemble, config)
                except AuricleError as error:  # a damaged shard: the other units still get done
                    failure = f"{shard} epoch {epoch}: {error}"
                    failures.append(failure)
                else:
                    store.write_unit(shard, epoch, keys, indices, values)
                    views += len(keys)
                    written += 1
                    bar.update(len(keys))
            if undecided:
                failed, succeeded, left = runtime.total(len(failures), written, len(queue))
                if succeeded == 0 and failed >= FAILED_UNITS_TO_STOP:
                    first = f"; the first here: {failures[0]}" if failures else ""
                    raise DistillError(f"the first {failed} units of the job all failed{first}") from None
                undecided = succeeded == 0 and left > 0
            if failure is not None and on_failure is not None:
                on_failure(failure)
        bar.close()
        elapsed = time.perf_counter() - started
        runtime.barrier()
        complete = len(store.done_units()) == len(units)
        if runtime.rank == 0 and complete and not store.manifest.get("complete"):
            store.update_manifest(complete=True, views=store.views(), store_bytes=store.size_bytes())
        report = _report(store, shards, config, runtime, units, len(mine) - len(todo), len(todo) - len(failures),
                         views, elapsed, complete)
        report.failures = failures
        report.redone = list(damaged.values())
        return report
    finally:
        runtime.close()


def _report(store, shards, config, runtime, units, skipped, written, views, elapsed, complete) -> TeachReport:
    size = store.size_bytes()
    total_views = store.views()
    pcm16 = int(round(sum(int(shards.row(key)["num_samples"]) for path in shards.shards
                          for key in shards.keys(path)) * 2))
    value_bytes = encode_values(np.zeros(1), config.codec).itemsize
    return TeachReport(
        store=str(store.directory),
        rank=runtime.rank,
        world_size=runtime.world,
        units_total=len(units),
        units_skipped=skipped,
        units_written=written,
        views_written=views,
        seconds=elapsed,
        views_per_second=views / elapsed if elapsed > 0 else float("nan"),
        views_total=total_views,
        store_bytes=size,
        bytes_per_view=size / total_views if total_views else float("nan"),
        payload_bytes_per_view=config.top_k * (2 + value_bytes),
        audio_bytes=shards.audio_bytes,
        audio_pcm16_bytes=pcm16,
        store_fraction_of_shards=size / shards.audio_bytes if shards.audio_bytes else float("nan"),
        store_fraction_of_pcm16=size / pcm16 if pcm16 else float("nan"),
        complete=complete,
    )
