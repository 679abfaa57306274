"""Spot-check a target store: regenerate random views, rerun the teachers, compare.

A view passes when every stored value is within one quantisation step of the
recomputed probability of its class, and the stored classes are the recomputed
top-k (or differ from it only by a near-tie: the best class left out scores
within one step of the smallest stored value).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from auricle.distill import DistillError, DistillUsageError, file_sha256
from auricle.distill.augment import ViewRenderer, iter_views
from auricle.distill.shards import ShardReader, ShardSet
from auricle.distill.store import TargetStore, code_distance, encode_values
from auricle.distill.teachers import OWN_TEACHERS, TeacherEnsemble, TeacherSpec, is_callable_spec, load_teacher


@dataclass
class VerifyReport:
    store: str
    sampled: int
    passed: int
    max_abs_error: float
    max_code_distance: int
    index_mismatches: int
    failures: list[dict] = field(default_factory=list)
    #: Units ("shard epoch N") the store is meant to hold but does not: a teacher pass cut short.
    missing_units: list[str] = field(default_factory=list)
    #: Units whose rows do not follow their shard's keys, and sampled shards whose bytes changed, one line each.
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sampled > 0 and self.passed == self.sampled and not self.missing_units and not self.damaged

    def to_dict(self) -> dict:
        return dict(asdict(self), ok=self.ok)


def screen_store_teachers(store: TargetStore, callables: Iterable[str] = ()) -> list[TeacherSpec]:
    """The teachers a store names, refusing what verify must not load, before anything is loaded.

    A ``module:function`` is imported only when it is one of auricle's own teachers or is in
    ``callables`` (what the user named with --teacher): the manifest is data that anyone can write.
    """
    allowed = set(OWN_TEACHERS) | {TeacherSpec.parse(text).spec for text in callables}
    specs = []
    for identity in store.manifest["teachers"]:
        spec = TeacherSpec(str(identity["spec"]), float(identity.get("weight", 1.0)))
        if is_callable_spec(spec.spec) and spec.spec not in allowed:
            raise DistillUsageError(f"{store.directory / 'manifest.json'}: names the teacher {spec.spec}, code that "
                                    f"verify imports only when given as --teacher {spec.spec} (if you trust it)")
        specs.append(spec)
    return specs


def load_store_teachers(store: TargetStore, device: str | torch.device = "cpu",
                        callables: Iterable[str] = ()) -> TeacherEnsemble:
    """The teachers a store names, refusing any whose weights (or module) changed since the teacher pass."""
    specs = screen_store_teachers(store, callables)
    return TeacherEnsemble([load_teacher(spec, device, identity.get("precision", "fp32"), recorded=identity)
                            for spec, identity in zip(specs, store.manifest["teachers"])])


def verify(
    store_dir: str | os.PathLike,
    sample: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    ensemble: TeacherEnsemble | None = None,
    shards_dir: str | os.PathLike | None = None,
    callables: Iterable[str] = (),
) -> VerifyReport:
    """Recompute ``sample`` random stored views (drawn with ``seed``) and compare with the store.

    ``shards_dir``: where the shard set is now, if it moved since the teacher pass. Units the
    store lacks are reported in ``missing_units`` and make the report fail. ``callables``: the
    ``module:function`` teachers the user allows to be imported (see :func:`screen_store_teachers`).
    """
    store = TargetStore.open(store_dir)
    callables = tuple(callables)
    if ensemble is None:
        screen_store_teachers(store, callables)
    if shards_dir is None and not store.shards_dir.is_dir():
        raise DistillUsageError(f"{store_dir}: its shard set {store.shards_dir} is not there; give its new place with "
                                "--shards")
    shards = ShardSet.open(shards_dir if shards_dir is not None else store.shards_dir)
    if file_sha256(shards.directory / "manifest.json") != store.manifest["shards"]["manifest_sha256"]:
        raise DistillError(f"{store_dir}: its targets were computed on another version of {shards.directory}")
    report = VerifyReport(str(store_dir), 0, 0, 0.0, 0, 0)
    done = store.done_units()
    if not done:
        raise DistillError(f"{store_dir}: holds no finished targets")
    report.missing_units = [f"{shard} epoch {epoch}" for shard, epoch in store.units() if (shard, epoch) not in done]
    # What training would refuse or silently use, every unit (they are small), each named: unreadable units,
    # and units swapped or renamed. Views are then drawn from the units that can be read.
    units = []
    for shard, epoch in done:
        problem = store.unit_problem(shard, epoch, shards.keys(shard))
        if problem is None:
            units.append((shard, epoch))
        else:
            report.damaged.append(problem)
    if not units:
        return report
    if ensemble is None:
        ensemble = load_store_teachers(store, device, callables)
    renderer = ViewRenderer(store.augment_config(), store.seed)
    needs_mel = any(teacher.takes_mel for teacher in ensemble.teachers)

    # Views are numbered unit by unit; draw positions without listing every view.
    ends = np.cumsum([store.manifest["shards"]["chunks"][shard] for shard, _ in units])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(int(ends[-1]), size=min(sample, int(ends[-1])), replace=False)
    by_unit: dict[tuple[str, int], list[int]] = defaultdict(list)
    for position in sorted(int(p) for p in chosen):
        number = int(np.searchsorted(ends, position, side="right"))
        by_unit[units[number]].append(position - (int(ends[number - 1]) if number else 0))

    # Shards whose audio changed since the teacher pass: only those sampled (hashing reads all their audio).
    for shard in shards.check(sorted({shard for shard, _ in by_unit})):
        report.damaged.append(f"{shards.directory / shard}: its bytes changed since the teacher pass "
                              "(the manifest's sha256 differs)")
    codec = store.codec
    for (shard, epoch), rows in by_unit.items():
        keys = shards.keys(shard)
        stored = store.read_unit(shard, epoch)
        with ShardReader(shards.directory / shard) as reader:
            for row, view in zip(rows, iter_views(reader, epoch, renderer, [keys[r] for r in rows])):
                waves = torch.from_numpy(view.waveform).unsqueeze(0)
                mel = renderer.mel(waves, [view.params]) if needs_mel else None
                probabilities = ensemble.probabilities(waves, mel)[0].numpy()
                _check_view(report, view.key, shard, epoch, stored.indices[row], stored.codes[row],
                            stored.probabilities[row], probabilities, codec)
    return report


#: float32 targets are compared within this, not within a step (one ulp): the teacher pass scores views in
#: batches and verify one at a time, and the matrix kernels round batches differently in the last bits.
F32_TOLERANCE = 1e-5


def _check_view(report: VerifyReport, key, shard, epoch, indices, codes, decoded, probabilities, codec) -> None:
    k = len(indices)
    recomputed = probabilities[indices]
    distance = code_distance(encode_values(recomputed, codec), codes, codec)
    error = float(np.max(np.abs(recomputed - decoded))) if k else 0.0
    finite = bool(np.isfinite(decoded).all() and np.isfinite(probabilities).all())  # a store of NaN once passed
    order = np.argsort(-probabilities, kind="stable")[:k]
    same = np.array_equal(order, indices)
    near_tie = True
    if not same:
        report.index_mismatches += 1
        left_out = np.setdiff1d(np.arange(len(probabilities)), indices)
        best_left = probabilities[left_out].max() if len(left_out) else 0.0
        gap = code_distance(encode_values(np.array([best_left]), codec), codes[-1:], codec)
        near_tie = bool(best_left <= decoded.min() or gap.max() <= 1)
    report.sampled += 1
    if finite:
        report.max_abs_error = max(report.max_abs_error, error)
    report.max_code_distance = max(report.max_code_distance, int(distance.max()) if k else 0)
    close = distance.max(initial=0) <= 1 or (codec == "f32" and error <= F32_TOLERANCE)
    if close and near_tie and finite:
        report.passed += 1
    else:
        report.failures.append({"shard": shard, "epoch": epoch, "key": key, "max_abs_error": error if finite else None,
                                "code_distance": int(distance.max(initial=0)), "same_classes": same})
