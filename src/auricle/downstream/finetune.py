"""Fine-tune a CED or Dasheng encoder with a new head on a labelled dataset.

What a run does:

1. decode every clip once into memory (16 kHz mono; training crops to
   ``max_seconds``, evaluation sees whole clips exactly as ``auricle tag`` does);
2. build the network: the encoder's weights (a named model, a checkpoint, or a
   random initialisation of that size) under a new LayerNorm+Linear head over
   the dataset's classes; ``train_blocks`` freezes all but the last N blocks;
3. train with AdamW, linear warm-up then cosine decay, SpecAugment masks and
   optional mixup on the normalised log-mel, optionally class-balanced draws;
4. after each epoch score the validation set, keep the best weights as an
   auricle checkpoint (``model.safetensors`` + ``model.json``), stop after
   ``patience`` epochs without improvement, and write a resume point
   (``last.pt``: model, optimiser, scheduler, RNG, epoch, history);
5. score the test split (if any) with the best weights.

``precision`` ("auto", "fp32", "bf16"): the encoder and head may run under bf16
autocast (auricle.devices.training_bf16); the log-mel, the loss, the weights and
the optimiser stay float32, and validation and test scoring run in float32.

A Dasheng encoder trains the same way: its head is LayerNorm+Linear over the mean of the
clip's valid tokens (as ``auricle tag`` pools it), its keys past a clip's end are masked, and
the saved ``model.safetensors`` is a Dasheng checkpoint that ``auricle tag`` loads.

Single-label datasets train with softmax cross-entropy and save a head with
``head_activation="softmax"`` (scores of a clip sum to 1); multi-label
datasets train with binary cross-entropy and keep the sigmoid.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on
its share of each epoch's draws (``EpochSampler``: one seeded permutation or
balanced draw, dealt out by rank, which is what ``DistributedSampler`` does
plus class balancing), gradients are averaged by DDP (gloo on CPU, nccl on
CUDA), and rank 0 evaluates, saves and broadcasts the stop decision. The process
group, device per rank and collectives are :class:`auricle.training.distributed.Distributed`,
as in ``auricle distill train``.

The network and its augmentation are :mod:`auricle.downstream.finetune_net`, reading and drawing
the clips :mod:`auricle.downstream.finetune_data` (both re-exported here). Over 400 lines: the
run itself (:func:`finetune` with its config, records and result) is one piece; :func:`load_encoder`
leaves for the one loading path (the architecture issue's item 1), which brings it under.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from auricle.audio import SAMPLE_RATE
from auricle.devices import TRAINING_PRECISIONS, torch_device, training_bf16
from auricle.downstream.classification import Scores, score_classification
from auricle.downstream.finetune_data import (  # noqa: F401 (re-exported: their old import path)
    EpochSampler, collate, load_waveforms, predict, readable,
)
from auricle.downstream.finetune_net import (  # noqa: F401 (re-exported: their old import path)
    AugmentPlan, TrainingNet, draw_augment_plan, freeze_for_partial, valid_time_patches, with_new_head,
)
from auricle.errors import CheckpointError
from auricle.frontend import num_frames
from auricle.io import atomic
from auricle.io.datasets import LabelledDataset
from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng
from auricle.training.checkpointing import atomic_torch_save
from auricle.training.distributed import Distributed
from auricle.training.schedule import Schedule

STATE_FORMAT = "auricle-finetune-state"
#: FinetuneConfig fields a resumed run may change: how long it goes on, and what it computes in.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "precision"})


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    #: Train only the last N transformer blocks (+ final norm and head); None trains everything.
    train_blocks: int | None = None
    #: SpecAugment: number of time masks, each up to this fraction of the clip's frames.
    time_masks: int = 2
    time_mask_fraction: float = 0.15
    #: SpecAugment: number of frequency masks, each up to this many mel bands.
    freq_masks: int = 2
    freq_mask_bands: int = 8
    #: Mixup Beta(alpha, alpha) on the normalised log-mel; 0 turns it off.
    mixup_alpha: float = 0.0
    #: Draw training clips with probability inversely proportional to their class frequency.
    balanced: bool = False
    #: Stop after this many epochs without a better validation metric.
    patience: int = 8
    #: "accuracy" or "map"; "auto" is accuracy for single-label and mAP for multi-label data.
    metric: str = "auto"
    #: Longer training clips are cut at a random offset to this length (evaluation sees whole clips).
    max_seconds: float = 10.0
    seed: int = 0
    #: "auto", "fp32" or "bf16": bf16 autocast of the encoder and head (auricle.devices.training_bf16).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def metric_for(self, multi_label: bool) -> str:
        if self.metric == "auto":
            return "map" if multi_label else "accuracy"
        if self.metric not in ("accuracy", "map"):
            raise ValueError(f"metric must be auto, accuracy or map, not {self.metric!r}")
        return self.metric


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    learning_rate: float
    validation: dict
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """Where the model went and how well it did."""

    checkpoint: str
    classes: tuple[str, ...]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    validation: dict
    test: dict | None
    history: list[EpochRecord] = field(default_factory=list)
    #: Files that could not be decoded and were left out, one line each.
    failures: list[str] = field(default_factory=list)
    #: What the last epochs trained in: "fp32", or "bf16" (autocast).
    precision: str = "fp32"

    def to_dict(self) -> dict:
        values = asdict(self)
        values["classes"] = list(self.classes)
        return values


# --------------------------------------------------------------------------- training


def _metric_value(scores: Scores, metric: str) -> float:
    return scores.accuracy if metric == "accuracy" else scores.mean_average_precision


def finetune(
    encoder: CED | Dasheng,
    train: LabelledDataset,
    validation: LabelledDataset,
    output: str | os.PathLike,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    test: LabelledDataset | None = None,
    name: str = "finetuned",
    resume: bool = False,
    stop_after: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> FinetuneResult:
    """Fine-tune ``encoder`` with a new head on ``train``; see the module docs for the steps.

    ``stop_after`` ends this call after that many epochs (a resume point is
    kept; for jobs with a time limit); the test split is then not scored.
    """
    from tqdm import tqdm

    output = Path(output)
    torch_device(device)  # a device this machine cannot use is refused before any work
    train.require_something_to_tell_apart(train.multi_label or validation.multi_label)  # before any decoding
    where = Distributed(device)
    device = str(where.device)
    # A clip that cannot be decoded is left out, as probe does; the run ends with exit status 1.
    failed: list[str] = []
    quiet = lambda line: None  # noqa: E731 - the other ranks decode the same files
    train, train_waves = readable(train, failed, log if where.main else quiet, progress and where.main)
    if where.main:
        validation, validation_waves = readable(validation, failed, log, progress)
    else:
        validation_waves = []
    train.require_examples("the training data")
    classes = train.classes
    multi_label = train.multi_label or validation.multi_label
    metric = config.metric_for(multi_label)
    activation = "sigmoid" if multi_label else "softmax"
    state_path = output / "last.pt"
    checkpoint_path = output / "model.safetensors"
    if state_path.exists() and not resume:
        raise CheckpointError(f"{state_path}: a run is already here; pass --resume or choose another output")
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    network = with_new_head(encoder, len(classes), activation).to(device)
    trainable = freeze_for_partial(network, config.train_blocks)
    # Every process trains in rank 0's precision; a resumed run keeps its own below.
    net = model = TrainingNet(network, where.share(training_bf16(config.precision, torch.device(device))))
    if where.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    optimiser = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    train_targets = train.targets()
    sampler = EpochSampler(train_targets, config.balanced, config.seed, where.rank, where.world)
    steps_per_epoch = math.ceil(len(sampler.indices(0)) / config.batch_size)
    # A factor of the optimiser's learning rate: warm-up, then cosine to zero.
    schedule = Schedule(1.0, max(1, steps_per_epoch * config.epochs),
                        max(1, int(config.warmup_epochs * steps_per_epoch)), final_fraction=0.0)
    # A plain function, so the scheduler's saved state stays as it was (it keeps the __dict__ of other callables).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: schedule.lr(step))
    generator = torch.Generator().manual_seed(config.seed * 7919 + where.rank)
    max_samples = int(config.max_seconds * SAMPLE_RATE)
    start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, 0, 0
    best_scores: dict = {}
    history: list[EpochRecord] = []

    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or tuple(state["classes"]) != tuple(classes):
            raise CheckpointError(f"{state_path}: not a resume point of this run (other classes or format)")
        # The optimiser and schedule states would quietly override a new learning rate; other settings would
        # train a different run under this one's name. Epochs and patience may change (a longer or shorter
        # schedule from the step reached), and the precision (said below).
        saved_config = state.get("config", {})
        changed = [f"{key} {saved_config[key]!r} -> {value!r}" for key, value in config.to_dict().items()
                   if key not in RESUMABLE_CHANGES and key in saved_config and saved_config[key] != value]
        if changed:
            raise CheckpointError(f"{state_path}: cannot resume with other settings ({'; '.join(changed)}); "
                                  "use the run's settings, or another output folder")
        try:
            network.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(f"{state_path}: made from another encoder than this one; resume with the "
                                  "run's --model or --checkpoint") from None
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"][where.rank] if where.rank < len(state["generator"]) else state["generator"][0])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, best_epoch, bad_epochs = state["epoch"], state["best"], state["best_epoch"], state["bad_epochs"]
        best_scores = state["best_scores"]
        history = [EpochRecord(**record) for record in state["history"]]
        saved_bf16 = state.get("bf16", False)  # resume points from before precision trained in float32
        if saved_bf16 != net.bf16:
            if config.precision == "auto":
                net.bf16 = saved_bf16
                log(f"--precision auto keeps this run's {'bf16' if saved_bf16 else 'fp32'}")
            else:
                log(f"continuing in {config.precision} (epochs so far trained in {'bf16' if saved_bf16 else 'fp32'})")
        log(f"resumed after epoch {start_epoch} (best {metric} {best:.4f} at epoch {best_epoch})")

    if net.bf16:
        log("training in bf16 autocast (log-mel, loss and weights in float32; --precision fp32 to turn it off)")
    loss_function = nn.BCEWithLogitsLoss() if multi_label else None
    stopped_early = False
    last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        if bad_epochs >= config.patience:
            stopped_early = True
            break
        began = time.perf_counter()
        model.train()
        if config.train_blocks is not None:
            network.init_bn.eval()  # a frozen encoder keeps its input statistics
        order = sampler.indices(epoch)
        total_loss, batches = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}", unit="batch",
                   disable=not (progress and where.main), leave=False)
        for first in bar:
            chosen = order[first:first + config.batch_size]
            waves, lengths = collate([train_waves[i] for i in chosen], max_samples, generator)
            targets = torch.from_numpy(train_targets[chosen])
            frames = num_frames(waves.shape[-1])
            plan = draw_augment_plan((len(chosen), network.config.n_mels, frames), lengths, config, generator)
            if plan.mix_order is not None:
                weight = plan.mix_weight[:, None]
                targets = weight * targets + (1 - weight) * targets[plan.mix_order]
            logits = model(waves.to(device), lengths.to(device), _to_device(plan, device))
            targets = targets.to(device)
            loss = loss_function(logits, targets) if multi_label else F.cross_entropy(logits, targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 5.0)
            optimiser.step()
            scheduler.step()
            total_loss += loss.item()
            batches += 1
            bar.set_postfix(loss=f"{total_loss / batches:.3f}")
        bar.close()

        improved = False
        record = EpochRecord(epoch + 1, total_loss / max(1, batches), scheduler.get_last_lr()[0], {}, 0.0)
        if where.main:
            scores = score_classification(validation.targets(), predict(network, validation_waves, device=device),
                                          multi_label)
            record.validation = scores.to_dict()
            value = _metric_value(scores, metric)
            improved = value > best
            if improved:
                best, best_epoch, best_scores = value, epoch + 1, scores.to_dict()
                _save_model(network, checkpoint_path, classes, name)
        improved = where.share(improved)
        bad_epochs = 0 if improved else bad_epochs + 1
        record.seconds = time.perf_counter() - began
        history.append(record)
        if where.main:
            log(f"epoch {epoch + 1}/{config.epochs}: loss {record.train_loss:.4f}, validation "
                f"{metric} {_metric_value(scores, metric):.4f}{' (best)' if improved else ''}, {record.seconds:.0f} s")
            atomic_torch_save({
                "format": STATE_FORMAT,
                "classes": list(classes),
                "model": network.state_dict(),
                "optimizer": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": where.gather(generator.get_state()),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "best": best,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "best_scores": best_scores,
                "history": [r.to_dict() for r in history],
                "config": config.to_dict(),
                "bf16": net.bf16,
            }, state_path)
        else:
            where.gather(generator.get_state())

    test_scores = None
    finished = stopped_early or len(history) >= config.epochs or bad_epochs >= config.patience
    if where.main and finished and test is not None and len(test):
        from auricle.loading import read_weights

        family, saved = read_weights(checkpoint_path)
        best_network = family.call("build", saved).to(device)
        test, test_waves = readable(test, failed, log)
        test_scores = score_classification(test.targets(), predict(best_network, test_waves, device=device),
                                           multi_label).to_dict()
    result = FinetuneResult(str(checkpoint_path), classes, best_epoch, len(history), stopped_early,
                            best_scores, test_scores, history, failed, "bf16" if net.bf16 else "fp32")
    if where.main:
        atomic.write_text(output / "result.json", json.dumps(result.to_dict(), indent=2))
    where.close()  # no collective is left; each rank leaves the group it joined
    return result


def _to_device(plan: AugmentPlan, device: str) -> AugmentPlan:
    return AugmentPlan(
        plan.keep.to(device),
        None if plan.mix_order is None else plan.mix_order.to(device),
        None if plan.mix_weight is None else plan.mix_weight.to(device),
    )


def _save_model(network: CED | Dasheng, path: Path, classes: Sequence[str], name: str) -> None:
    from auricle.models.checkpoints import save_checkpoint

    save_checkpoint(network, path, labels=list(classes), name=name)


def load_encoder(model_name: str, checkpoint: str | None, from_scratch: bool,
                 seed: int = 0) -> tuple[CED | Dasheng, str]:
    """The encoder (CED or Dasheng) to start from and where its weights came from, in words
    (:func:`auricle.loading.load_network`). A random initialisation is drawn from ``seed``."""
    from auricle.loading import load_network

    return load_network(model_name, checkpoint, from_scratch=from_scratch, seed=seed)


__all__ = [
    "FinetuneConfig", "FinetuneResult", "EpochRecord", "EpochSampler", "finetune", "load_encoder",
    "with_new_head", "freeze_for_partial", "predict", "load_waveforms", "readable",
]
