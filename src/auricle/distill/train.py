"""Student training on a teacher's stored top-k targets (the paper's consistent distillation).

For every step the student sees exactly the augmented view the teacher saw:
the view is regenerated from (store seed, stored epoch, chunk key) and its
targets are the teacher's top-k expanded to all classes. With
``inconsistent=True`` the augmentation is drawn afresh (the paper's ablation)
while the targets stay those of the teacher's view.

Reproducibility and resume: all randomness of a run is a pure function of
(seed, epoch, step, rank): the data order of an epoch, the student-side mixup
weights, the random fill. The position in the data is ``step`` itself (equal
steps per epoch on every rank), the learning rate is a function of ``step``,
so a state file with model, optimiser and step resumes to bit-identical
weights (tested). Runs under ``torchrun`` with DistributedDataParallel (gloo on
CPU, nccl on GPU); each rank reads a disjoint, contiguous block of the epoch's
order, so it decodes only a few shards at a time.

Over 400 lines: :class:`Trainer` (about 380 of them) is one resumable loop whose state (step,
generators, logs, best checkpoints) all its parts share; cutting it is a change of code, not a move.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auricle.devices import TRAINING_PRECISIONS, bf16_trains_faster
from auricle.distill.evaluation import mean_average_precision, top1_agreement, topk_overlap
from auricle.distill.targets import DEFAULT_FILL, FILL_MODES, expand_topk
from auricle.distill.views import seed_from, unit_interval
from auricle.errors import AuricleError, CheckpointError
from auricle.io import atomic
from auricle.models.ced import CED, CEDConfig
from auricle.training.checkpointing import BestCheckpoints, list_states, load_state, save_state
from auricle.training.distributed import Distributed
from auricle.training.schedule import Schedule

PRECISIONS = TRAINING_PRECISIONS
TRAIN_LOG = "train.csv"
EVAL_LOG = "eval.csv"
FINAL_NAME = "student.safetensors"
LAST_NAME = "student-last.safetensors"
#: What a training run writes in --out; anything else there means --out is some other folder.
RUN_FILES = frozenset({TRAIN_LOG, EVAL_LOG, FINAL_NAME, LAST_NAME, "student.json", "student-last.json", "config.json",
                       "result.json", "state", "best", "tensorboard"})
TRAIN_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "views_per_second")
EVAL_COLUMNS = ("step", "kind", "score", "map", "accuracy", "agreement_top1", "topk_overlap", "holdout_bce")


class TrainingError(AuricleError):
    """A training run cannot start or continue (bad options, incompatible resume, ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; the fields under "trajectory" must match on resume."""

    shards: str
    targets: str
    out: str
    student: str = "ced-tiny"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: 5 % of all steps
    final_lr_fraction: float = 0.1
    clip_grad: float = 1.0
    fill: str = DEFAULT_FILL
    mixup_alpha: float = 0.0
    inconsistent: bool = False
    seed: int = 0
    precision: str = "auto"
    shuffle_shards: int = 4
    holdout_fraction: float = 0.01
    holdout_max: int = 128
    eval_csv: str | None = None
    eval_split: str | None = None
    eval_label_column: str = "labels"
    eval_audio_dir: str | None = None
    head_prior: bool = True
    # Not part of the trajectory: how often to save and look, and where to run.
    checkpoint_every: int = 500
    eval_every: int | None = None  # None: with every checkpoint
    average_best: int = 4
    keep_states: int = 2
    log_every: int = 10
    device: str = "auto"
    stop_after_steps: int | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.fill in FILL_MODES, f"fill must be one of {', '.join(FILL_MODES)}, got {self.fill!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.mixup_alpha >= 0, "mixup alpha must be >= 0"),
            (0 <= self.holdout_fraction < 1, "held-out fraction must be in [0, 1)"),
            (self.checkpoint_every >= 1, "checkpoint interval must be >= 1 step"),
            (self.keep_states >= 1, "keep at least one state file"),
            (self.shuffle_shards >= 1, "shuffle window must be >= 1 shard"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    def trajectory(self) -> dict:
        """The settings that change the weights a run produces (compared on resume)."""
        ignored = {"out", "checkpoint_every", "eval_every", "average_best", "keep_states", "log_every",
                   "device", "stop_after_steps", "resume", "progress"}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ignored}
        for key in PATH_SETTINGS:  # another spelling of the same path (./x/, absolute, another cwd) is no change
            values[key] = _resolved(values[key])
        return values

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Where the run left its outputs, and how it ended."""

    out: Path
    steps: int
    total_steps: int
    finished: bool
    final_checkpoint: Path | None
    averaged_steps: list[int] = field(default_factory=list)
    final_scores: dict[str, float] = field(default_factory=dict)
    #: Whether this process is the main one (rank 0): under torchrun only it reports, as only it writes.
    main: bool = True

    def to_dict(self) -> dict:
        values = asdict(self)
        values["out"] = str(self.out)
        values["final_checkpoint"] = str(self.final_checkpoint) if self.final_checkpoint else None
        return values


# --------------------------------------------------------------------------- the student


def build_student(spec: str, num_classes: int) -> CED:
    """A randomly initialised student: a model name (``ced-tiny``) or a JSON file of CEDConfig fields."""
    from auricle.models.registry import model_info

    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise TrainingError(f"{spec}: unreadable student config ({error})") from None
        if isinstance(values, dict):
            values = values.get("config", values)  # an auricle checkpoint's JSON works too
        if not isinstance(values, dict):
            raise TrainingError(f"{spec}: a student config is a JSON object of CEDConfig fields")
        known = [item.name for item in fields(CEDConfig)]
        unknown = sorted(set(values) - set(known))
        if unknown:  # a typo ("dept") would otherwise train the default silently
            raise TrainingError(f"{spec}: unknown student config keys {', '.join(map(repr, unknown))} "
                                f"(known: {', '.join(known)})")
        # Fields without a default, read from CEDConfig itself so a new required field is asked for too.
        required = [item.name for item in fields(CEDConfig) if item.default is MISSING
                    and item.default_factory is MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise TrainingError(f"{spec}: the student config needs {' and '.join(map(repr, missing))}")
        try:
            config = CEDConfig.from_dict(values)
        except (TypeError, ValueError) as error:
            raise TrainingError(f"{spec}: invalid student config ({error})") from None
    else:
        config = model_info(spec).config
    # The student is trained with BCE, so it is a sigmoid (multi-label) head whatever the config says.
    values = config.to_dict() | {"num_classes": num_classes}
    values.pop("head_activation", None)
    return CED(CEDConfig.from_dict(values))


class StudentForward(nn.Module):
    """Masked log-mels of equal length per group -> logits; the one module DDP wraps.

    Groups of different lengths go through one forward so that DDP sees one
    forward per backward. Chunks past 10.12 s are split into pieces like at
    inference; their logits are averaged.
    """

    def __init__(self, network: CED) -> None:
        super().__init__()
        self.network = network

    def forward(self, mels: list[torch.Tensor]) -> torch.Tensor:
        network = self.network
        outputs = []
        for mel in mels:
            pieces, count = network.pieces(network.normalize(mel))
            logits = network.forward_head(network.forward_features(pieces))
            outputs.append(logits.reshape(count, mel.shape[0], -1).mean(dim=0))
        return torch.cat(outputs)


# --------------------------------------------------------------------------- data order


def held_out_keys(views, fraction: float, limit: int) -> dict[str, list[str]]:
    """Keys kept out of training for the agreement check: a fixed hash of the key picks them.

    Shards are scanned in name order and the scan stops at ``limit`` keys, so a
    huge shard set is not read in full for a few hundred views.
    """
    chosen: dict[str, list[str]] = {}
    count = 0
    if fraction <= 0 or limit <= 0:
        return chosen
    for shard in sorted(views.shard_names):
        for key in views.keys(shard):
            if unit_interval(key) < fraction:
                chosen.setdefault(shard, []).append(key)
                count += 1
                if count >= limit:
                    return chosen
    return chosen


def epoch_order(shard_keys: dict[str, list[str]], seed: int, epoch: int, window: int) -> list[tuple[str, str]]:
    """The (shard, key) order of one training epoch.

    Shards are shuffled, then the chunks of each run of ``window`` consecutive
    shards are shuffled together: a streaming shuffle that holds ``window``
    decoded shards, and a pure function of (seed, epoch).
    """
    generator = np.random.Generator(np.random.Philox(key=seed_from(seed, "order", epoch)))
    shards = sorted(shard_keys)
    shards = [shards[i] for i in generator.permutation(len(shards))]
    order: list[tuple[str, str]] = []
    for start in range(0, len(shards), window):
        group = [(shard, key) for shard in shards[start:start + window] for key in shard_keys[shard]]
        order.extend(group[i] for i in generator.permutation(len(group)))
    return order


def rank_block(order: list, rank: int, world: int, batch_size: int) -> list:
    """The contiguous part of an epoch's order that ``rank`` trains on, whole batches only."""
    per_rank = len(order) // world
    steps = per_rank // batch_size
    start = rank * per_rank
    return order[start:start + steps * batch_size]


# --------------------------------------------------------------------------- the trainer


class _Logs:
    """CSV logs (and TensorBoard when it is installed), trimmed back to the resume step."""

    def __init__(self, out: Path, resumed_step: int | None, enabled: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.tensorboard = None
        if not enabled:
            return
        for name, columns in ((TRAIN_LOG, TRAIN_COLUMNS), (EVAL_LOG, EVAL_COLUMNS)):
            self._prepare(out / name, columns, resumed_step)
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_step)

    @staticmethod
    def _prepare(path: Path, columns: tuple[str, ...], resumed_step: int | None) -> None:
        # Rows past the resume point were made by steps that will run again: drop them.
        rows = []
        if resumed_step is not None and path.is_file():
            with path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle)
                        if row.get("kind", "") != "final" and int(row["step"]) <= resumed_step]
        with atomic.replacing(path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, name: str, columns: tuple[str, ...], row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with (self.out / name).open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=columns).writerow({key: _fmt(row.get(key)) for key in columns})
        if self.tensorboard is not None:
            prefix = "train" if name == TRAIN_LOG else f"eval_{row.get('kind', 'eval')}"
            for key, value in row.items():
                if isinstance(value, float) and not math.isnan(value):
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, int(row["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


@dataclass
class _Batch:
    waveforms: list[np.ndarray]
    params: list[Any]
    indices: np.ndarray
    values: np.ndarray


class Trainer:
    """One training run; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, views=None) -> None:
        from auricle.distill.views import StoreViews

        self.config = config
        self.out = Path(config.out)
        self.dist = Distributed(config.device)
        self.views = views if views is not None else StoreViews(config.shards, config.targets,
                                                                cache_shards=config.shuffle_shards + 1)
        self.labels = tuple(self.views.labels)
        self.holdout = held_out_keys(self.views, config.holdout_fraction, config.holdout_max)
        held = {key for keys in self.holdout.values() for key in keys}
        mixing = self._mixing_with(held)
        self.train_keys = {shard: [k for k in self.views.keys(shard) if k not in held and k not in mixing]
                           for shard in self.views.shard_names}
        total_keys = sum(len(keys) for keys in self.train_keys.values())
        self.steps_per_epoch = (total_keys // self.dist.world) // config.batch_size
        if self.steps_per_epoch < 1:
            raise TrainingError(
                f"{config.shards}: {total_keys} training chunks are too few for batch size "
                f"{config.batch_size} on {self.dist.world} processes"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        warmup = config.warmup_steps if config.warmup_steps is not None else int(0.05 * self.total_steps)
        self.schedule = Schedule(config.lr, self.total_steps, min(warmup, self.total_steps), config.final_lr_fraction)
        # Every process trains in the same precision: bf16 only where all of them gain from it.
        self.use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and self.dist.all_true(bf16_trains_faster(self.dist.device)))
        torch.manual_seed(seed_from(config.seed, "init"))  # same initial weights on every rank
        self.network = build_student(config.student, len(self.labels))
        if config.head_prior:
            self._init_head_prior()
        self.network.to(self.dist.device)
        self.forward = StudentForward(self.network)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.forward, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.network, config.weight_decay), lr=config.lr)
        self.best = BestCheckpoints(self.out / "best", config.average_best)
        self.step = 0
        self._loss_since_eval: list[float] = []
        self._mixup_views = self._mixup_alone = 0
        self._mixup_warned = False
        self._eval_set = None
        self._holdout_views = None

    def _init_head_prior(self, max_shards: int = 16) -> None:
        """Set the output biases to the log-odds of each class's mean target (the prior).

        A random head starts near probability 0.5 for every class while almost
        all targets are near 0; the first steps then push all logits down, and
        Adam's second-moment estimate remembers those large gradients for
        thousands of steps, shrinking the steps that carry the teachers' actual
        information. (Seen on spoken digits: 10 active of 527 classes, the
        student stayed at chance without this.) Deterministic: the same sample
        of the store on every rank and run.
        """
        epoch = self.views.stored_epochs[0]
        generator = torch.Generator().manual_seed(seed_from(self.config.seed, "prior"))
        total, count = torch.zeros(len(self.labels), dtype=torch.float64), 0
        for shard in sorted(self.views.shard_names)[:max_shards]:
            stored = list(self.views.targets(shard, epoch).values())
            if not stored:
                continue
            indices = torch.from_numpy(np.stack([i for i, _ in stored]).astype(np.int64))
            values = torch.from_numpy(np.stack([v for _, v in stored]).astype(np.float32))
            total += expand_topk(indices, values, len(self.labels), self.config.fill, generator).double().sum(0)
            count += len(stored)
        if count:
            prior = (total / count).clamp(1e-4, 1 - 1e-4).float()
            with torch.no_grad():
                self.network.outputlayer[-1].bias.copy_(torch.logit(prior))

    # -- state --------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "trajectory": self.config.trajectory(),
            "world_size": self.dist.world,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": [[score, step] for score, step in self.best.entries],
            "loss_since_eval": list(self._loss_since_eval),
            "torch_rng": torch.get_rng_state(),
            "bf16": self.use_bf16,
        }

    def _restore(self) -> int | None:
        """Load the newest state file if resuming; return its step (None when starting fresh)."""
        # A temporary of one of our files is the main process writing it now, or what a killed
        # run was writing: ours either way, not a sign that --out is some other folder.
        foreign = sorted(path.name for path in self.out.iterdir()
                         if path.name not in RUN_FILES and atomic.written_name(path.name) not in RUN_FILES)
        if foreign:  # a target store, a shard set, someone's notes: not ours to fill
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise TrainingError(f"{self.out}: holds files that are not a training run's ({shown}); "
                                "choose an empty or new --out")
        states = list_states(self.out / "state")
        if not self.config.resume:
            if states or (self.out / FINAL_NAME).exists():
                raise TrainingError(f"{self.out}: holds an earlier run; pass --resume to continue it or choose another --out")
            return None
        if not states:
            return None
        step, path = states[-1]
        state = load_state(path)
        saved, current = dict(state["trajectory"]), self.config.trajectory()
        for key in PATH_SETTINGS:  # states saved before eval paths were resolved hold them as typed
            if key in saved:
                saved[key] = _resolved(saved[key])
        if "bf16" in state:
            # Compare what the runs compute in, not how it was asked for: "auto" resolves per machine,
            # and a run resumed elsewhere (another CPU, a GPU) keeps the precision it started in.
            saved["precision"] = "bf16" if state["bf16"] else "fp32"
            if current["precision"] == "auto":
                current["precision"] = saved["precision"]
                if state["bf16"] != self.use_bf16 and self.dist.main:
                    print(f"{path}: --precision auto keeps this run's {saved['precision']} "
                          f"(this machine alone would train in {'bf16' if self.use_bf16 else 'fp32'})",
                          file=sys.stderr)
        differences = _differences(saved, current)
        if state["world_size"] != self.dist.world:
            differences.append(f"processes {state['world_size']} -> {self.dist.world}")
        if differences:
            raise CheckpointError(f"{path}: cannot resume with other settings ({'; '.join(differences)})")
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best.entries = [(float(score), int(s)) for score, s in state["best"]]
        self._loss_since_eval = [float(v) for v in state["loss_since_eval"]]
        torch.set_rng_state(state["torch_rng"])
        self.use_bf16 = bool(state.get("bf16", self.use_bf16))
        self.step = step
        return step

    # -- data ---------------------------------------------------------------------
    def _views_of(self, epoch: int) -> tuple[int, int]:
        """(stored epoch, view seed) that training epoch ``epoch`` replays."""
        stored_epoch = self.views.stored_epochs[epoch % len(self.views.stored_epochs)]
        # The paper's ablation: a fresh augmentation, unrelated to the teacher's, per (run, epoch).
        inconsistent = self.config.inconsistent
        return stored_epoch, seed_from(self.config.seed, "inconsistent", epoch) if inconsistent else self.views.seed

    def _mixing_with(self, held: set[str]) -> set[str]:
        """Chunks whose view, in an epoch this run trains on, mixes in a held-out chunk of their shard.

        Trained on, held-out audio would not be held out. The view cannot take another partner (it is
        the mix the teachers scored), so these chunks are left out of training.
        """
        if not held:
            return set()
        replayed = {self._views_of(epoch) for epoch in range(self.config.epochs)}
        mixing = set()
        for shard in self.holdout:
            for index, key in enumerate(self.views.keys(shard)):
                if key not in held and any(self.views.partner(shard, key, stored, seed, index) in held
                                           for stored, seed in replayed):
                    mixing.add(key)
        return mixing

    def _batches(self, epoch: int, first_batch: int) -> Iterator[_Batch]:
        config, views = self.config, self.views
        block = rank_block(epoch_order(self.train_keys, config.seed, epoch, config.shuffle_shards),
                           self.dist.rank, self.dist.world, config.batch_size)
        stored_epoch, view_seed = self._views_of(epoch)
        for start in range(first_batch * config.batch_size, len(block), config.batch_size):
            waveforms, params, indices, values = [], [], [], []
            for shard, key in block[start:start + config.batch_size]:
                waveform, view_params = views.view(shard, key, stored_epoch, view_seed)
                top_indices, top_values = views.targets(shard, stored_epoch)[key]
                waveforms.append(np.asarray(waveform, dtype=np.float32))
                params.append(view_params)
                indices.append(top_indices)
                values.append(top_values)
            yield _Batch(waveforms, params, np.stack(indices), np.stack(values))

    def _mels(self, waveforms: list[np.ndarray], params: list[Any]) -> tuple[list[torch.Tensor], list[int]]:
        """Masked log-mels grouped by length, and the batch order of the concatenated groups."""
        groups: dict[int, list[int]] = {}
        for position, waveform in enumerate(waveforms):
            groups.setdefault(len(waveform), []).append(position)
        mels, order = [], []
        for positions in groups.values():
            mel = self.views.mel([waveforms[p] for p in positions], [params[p] for p in positions])
            mels.append(mel.clone().to(self.dist.device))  # clone: out of inference mode, autograd may use it
            order.extend(positions)
        return mels, order

    def _note_mixup_partners(self, mels: list[torch.Tensor]) -> None:
        """Say once if mixup mostly had no partner: clips of other lengths are never mixed, so on a corpus of
        varied lengths --mixup-alpha would do nothing, silently."""
        self._mixup_views += sum(mel.shape[0] for mel in mels)
        self._mixup_alone += sum(mel.shape[0] % 2 for mel in mels)  # an odd group's middle view meets itself
        if self._mixup_warned or self._mixup_views < MIXUP_CHECK_VIEWS:
            return
        self._mixup_warned = True
        share = self._mixup_alone / self._mixup_views
        if share > 0.5 and self.dist.main:
            print(f"auricle: warning: mixup found no partner for {share:.0%} of the views so far: only views of "
                  "one length are mixed; cut the shards into chunks of one length (distill shards "
                  "--chunk-seconds, with --min-seconds equal to it) for mixup to take effect", file=sys.stderr)

    # -- one step -----------------------------------------------------------------
    def _train_step(self, batch: _Batch) -> tuple[float, float]:
        config = self.config
        generator = torch.Generator().manual_seed(seed_from(config.seed, "step", self.step, self.dist.rank))
        targets = expand_topk(torch.from_numpy(batch.indices.astype(np.int64)),
                              torch.from_numpy(batch.values.astype(np.float32)),
                              len(self.labels), config.fill, generator)
        mels, order = self._mels(batch.waveforms, batch.params)
        targets = targets[order].to(self.dist.device)
        if config.mixup_alpha > 0:
            mels, targets = _mixup(mels, targets, config.mixup_alpha, generator)
            self._note_mixup_partners(mels)
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.forward.train()
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.forward(mels)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.network.parameters(), config.clip_grad))
        else:
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.network.parameters() if p.grad is not None])))
        self.optimizer.step()
        return float(loss.detach()), grad_norm

    # -- evaluation (main process only) ---------------------------------------------
    def _load_eval_set(self):
        if self._eval_set is None and self.config.eval_csv:
            self._eval_set = _EvalSet(self.config, self.labels)
        return self._eval_set

    def _load_holdout(self) -> list[tuple[np.ndarray, Any, np.ndarray, np.ndarray]]:
        if self._holdout_views is None:
            epoch = self.views.stored_epochs[0]
            self._holdout_views = []
            for shard, keys in self.holdout.items():
                targets = self.views.targets(shard, epoch)
                for key in keys:
                    waveform, params = self.views.view(shard, key, epoch, self.views.seed)
                    self._holdout_views.append((np.asarray(waveform, np.float32), params, *targets[key]))
        return self._holdout_views

    @torch.no_grad()
    def evaluate(self, kind: str = "eval") -> dict[str, float]:
        self.network.eval()
        scores = {"map": math.nan, "accuracy": math.nan, "agreement_top1": math.nan,
                  "topk_overlap": math.nan, "holdout_bce": math.nan}
        holdout = self._load_holdout()
        if holdout:
            probabilities, bce = [], []
            for start in range(0, len(holdout), self.config.batch_size):
                chunk = holdout[start:start + self.config.batch_size]
                mels, order = self._mels([item[0] for item in chunk], [item[1] for item in chunk])
                logits = StudentForward(self.network)(mels).float().cpu()
                indices = np.stack([chunk[i][2] for i in order])
                values = np.stack([chunk[i][3] for i in order])
                targets = expand_topk(torch.from_numpy(indices.astype(np.int64)),
                                      torch.from_numpy(values.astype(np.float32)), len(self.labels), "zero")
                bce.append(float(F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")))
                probabilities.append((torch.sigmoid(logits).numpy(), indices))
            student = np.concatenate([p for p, _ in probabilities])
            teacher = np.concatenate([i for _, i in probabilities])
            scores["agreement_top1"] = top1_agreement(student, teacher)
            scores["topk_overlap"] = topk_overlap(student, teacher)
            scores["holdout_bce"] = sum(bce) / (len(student) * len(self.labels))
        eval_set = self._load_eval_set()
        if eval_set is not None:
            scores.update(eval_set.score(self.network, self.dist.device))
        if not math.isnan(scores["map"]):
            scores["score"] = scores["map"]
        elif not math.isnan(scores["holdout_bce"]):
            # The distillation loss itself on unseen views: finer-grained than top-1 agreement, which saturates.
            scores["score"] = -scores["holdout_bce"]
        else:
            losses = self._loss_since_eval
            scores["score"] = -float(np.mean(losses)) if losses else math.nan
        self._loss_since_eval = []
        self.network.train()
        return scores

    # -- the run ------------------------------------------------------------------
    def run(self) -> TrainResult:
        config, dist = self.config, self.dist
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        resumed = self._restore()
        dist.barrier()  # every process has read --out as it was before the main one writes there
        if dist.main:
            atomic.remove_leftovers(self.out, of=RUN_FILES)  # its state folder keeps its own
            self.best.tidy()
            atomic.write_text(self.out / "config.json", json.dumps(
                {"config": config.to_dict(), "labels": list(self.labels), "steps_per_epoch": self.steps_per_epoch,
                 "total_steps": self.total_steps, "world_size": dist.world, "bf16": self.use_bf16}, indent=2))
        logs = _Logs(self.out, resumed, enabled=dist.main)
        eval_every = config.eval_every or config.checkpoint_every
        stop_at = self.total_steps if config.stop_after_steps is None else min(self.total_steps, config.stop_after_steps)
        progress = _progress(config.progress and dist.main, self.total_steps, self.step)
        views_per_second = math.nan
        try:
            while self.step < stop_at:
                epoch, first_batch = divmod(self.step, self.steps_per_epoch)
                tick = time.perf_counter()
                for batch in self._batches(epoch, first_batch):
                    loss, grad_norm = self._train_step(batch)
                    loss = dist.mean(loss)
                    self.step += 1
                    self._loss_since_eval.append(loss)
                    elapsed = time.perf_counter() - tick
                    views_per_second = len(batch.waveforms) * dist.world / elapsed if elapsed > 0 else math.nan
                    tick = time.perf_counter()
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                    if self.step % config.log_every == 0 or self.step == self.total_steps:
                        logs.write(TRAIN_LOG, TRAIN_COLUMNS, {
                            "step": self.step, "epoch": epoch, "loss": loss, "lr": self.schedule.lr(self.step - 1),
                            "grad_norm": grad_norm, "views_per_second": views_per_second})
                    self._after_step(logs, eval_every)
                    if self.step >= stop_at:
                        break
        finally:
            if progress is not None:
                progress.close()
        finished = self.step >= self.total_steps
        if not finished and self.step % config.checkpoint_every != 0:
            # Stopped on purpose (--stop-after-steps) between checkpoints: keep the way back in.
            if dist.main:
                save_state(self.out / "state", self.step, self._state(), config.keep_states)
                self.best.tidy()
            dist.barrier()
        result = TrainResult(self.out, self.step, self.total_steps, finished, None, main=self.dist.main)
        if finished:
            self._finish(logs, result)
        logs.close()
        dist.barrier()
        dist.close()
        return result

    def _after_step(self, logs: _Logs, eval_every: int) -> None:
        config, dist = self.config, self.dist
        last = self.step == self.total_steps
        if self.step % eval_every == 0 or last:
            if dist.main:
                scores = self.evaluate()
                self.best.offer(scores["score"], self.step, self.network.state_dict())
                logs.write(EVAL_LOG, EVAL_COLUMNS, {"step": self.step, "kind": "eval", **scores})
            dist.barrier()
        if self.step % config.checkpoint_every == 0 or last:
            if dist.main:
                save_state(self.out / "state", self.step, self._state(), config.keep_states)
                self.best.tidy()  # weights the saved state no longer lists
            dist.barrier()

    def _finish(self, logs: _Logs, result: TrainResult) -> None:
        from auricle.models.checkpoints import save_checkpoint

        if not self.dist.main:
            return
        name = f"{Path(self.config.student).stem}-distilled"
        save_checkpoint(self.network, self.out / LAST_NAME, labels=self.labels, name=name)
        averaged = self.best.average()
        if averaged is not None:
            self.network.load_state_dict(averaged)
            result.averaged_steps = sorted(step for _, step in self.best.entries if self.best.path(step).exists())
        result.final_checkpoint = save_checkpoint(self.network, self.out / FINAL_NAME, labels=self.labels, name=name)
        scores = self.evaluate("final")
        result.final_scores = {key: value for key, value in scores.items() if not math.isnan(value)}
        logs.write(EVAL_LOG, EVAL_COLUMNS, {"step": self.step, "kind": "final", **scores})
        atomic.write_text(self.out / "result.json", json.dumps(result.to_dict(), indent=2))


class _EvalSet:
    """A labelled CSV scored by the student: mAP over the classes it shares with the student, and accuracy."""

    def __init__(self, config: TrainConfig, labels: tuple[str, ...]) -> None:
        from auricle.audio import load_audio
        from auricle.io.datasets import read_dataset

        dataset = read_dataset(config.eval_csv, config.eval_split, audio_dir=config.eval_audio_dir,
                               label_column=config.eval_label_column)
        by_name = {name.casefold(): index for index, name in enumerate(labels)}
        shared = [(column, by_name[name.casefold()]) for column, name in enumerate(dataset.classes)
                  if name.casefold() in by_name]
        if not shared:
            raise TrainingError(f"{config.eval_csv}: none of its classes is one of the student's")
        self.columns = np.array([column for column, _ in shared])
        self.student_columns = np.array([index for _, index in shared])
        self.targets = dataset.targets()[:, self.columns]
        self.single_label = not dataset.multi_label
        # Eval sets are small; decoding once saves a decode per evaluation.
        self.audio = [load_audio(item.file) for item in dataset.items]

    def score(self, network: CED, device: torch.device) -> dict[str, float]:
        rows = [network(torch.from_numpy(a).unsqueeze(0).to(device)).float().cpu().numpy()[0] for a in self.audio]
        scores = np.stack(rows)[:, self.student_columns]
        result = {"map": mean_average_precision(scores, self.targets)}
        if self.single_label:
            result["accuracy"] = float(np.mean(scores.argmax(axis=1) == self.targets.argmax(axis=1)))
        return result


#: Views seen before judging whether mixup finds partners.
MIXUP_CHECK_VIEWS = 64


def _mixup(mels: list[torch.Tensor], targets: torch.Tensor, alpha: float, generator: torch.Generator):
    """Student-side mixup as the official trainer: each clip with its mirror in the batch (per length group)."""
    mixed_mels, mixed_targets, start = [], [], 0
    for mel in mels:
        size = mel.shape[0]
        lam = _beta(alpha, size, generator).to(mel.device)
        part = targets[start:start + size]
        mixed_mels.append(mel * lam.view(-1, 1, 1) + mel.flip(0) * (1 - lam.view(-1, 1, 1)))
        mixed_targets.append(part * lam.view(-1, 1) + part.flip(0) * (1 - lam.view(-1, 1)))
        start += size
    return mixed_mels, torch.cat(mixed_targets)


def _beta(alpha: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) draws from ``generator`` (torch's Beta sampler takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size).astype(np.float32))


def _parameter_groups(network: CED, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and position embeddings (the usual ViT recipe)."""
    decay, no_decay = [], []
    for name, parameter in network.named_parameters():
        if parameter.ndim <= 1 or name.endswith("pos_embed"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


#: Settings that name files: compared as the paths they resolve to.
PATH_SETTINGS = ("shards", "targets", "eval_csv", "eval_audio_dir")


def _resolved(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _differences(saved: dict, current: dict) -> list[str]:
    return [f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="distill train", dynamic_ncols=True)


def train(config: TrainConfig, views=None) -> TrainResult:
    """Train (or resume) a student; see :class:`TrainConfig`. ``views`` replaces the shard/store reader (tests)."""
    return Trainer(config, views).run()
