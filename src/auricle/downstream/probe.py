"""Linear and MLP probes on frozen encoder embeddings, saved as heads of the encoder.

The probe reads a clip's embedding (the mean of all encoder tokens, as
``auricle embed``) and is, by construction, a CED head: LayerNorm + Linear
(``linear``) or LayerNorm + Linear + GELU + Linear (``mlp``). So the saved
checkpoint is the encoder with the probe as its ``outputlayer`` and
``auricle tag --checkpoint PROBE`` predicts the new classes. For clips up to
10.12 s the scores are exactly the probe's; longer clips are scored per
10.12 s piece and averaged (the CED rule), while the probe saw the mean
embedding of the whole clip. A Dasheng encoder's clip embedding is the mean of its
frame tokens and its head reads the same mean, so up to the tag window (10 s) its scores
are the probe's too; its head is linear only (``--head mlp`` is refused with ``--output``).

Embeddings are cached on disk, one ``.npy`` per (model, file content):
``<cache>/<model sha256[:16]>/<content sha256>.npy``. The model key is the
SHA-256 of its weights (every tensor of the state dict), so renaming a
checkpoint keeps the cache and changing one weight invalidates it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auricle.downstream.classification import Scores, score_classification
from auricle.errors import DatasetError, OptionError
from auricle.fingerprints import file_key, model_key
from auricle.inference.results import Failure
from auricle.io import atomic
from auricle.io.datasets import LabelledDataset, listing
from auricle.models.ced import CED, make_head
from auricle.models.dasheng import Dasheng

HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is trained."""

    head: str = "linear"
    hidden: int = 256
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")

    @property
    def hidden_width(self) -> int:
        return self.hidden if self.head == "mlp" else 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult:
    """Scores of a probe: on the test split and/or per cross-validation fold."""

    classes: tuple[str, ...]
    multi_label: bool
    train_examples: int
    test: dict | None = None
    folds: list[dict] = field(default_factory=list)
    fold_mean: dict | None = None
    checkpoint: str | None = None
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["classes"] = list(self.classes)
        return values


# --------------------------------------------------------------------------- embedding cache


class EmbeddingCache:
    """Clip embeddings of one model on disk, keyed by file content; atomic writes."""

    def __init__(self, folder: str | os.PathLike, model_sha256: str) -> None:
        self.folder = Path(folder) / model_sha256[:16]

    def path(self, content_sha256: str) -> Path:
        return self.folder / f"{content_sha256}.npy"

    def get(self, content_sha256: str) -> np.ndarray | None:
        path = self.path(content_sha256)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed

    def put(self, content_sha256: str, embedding: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(content_sha256)
        with atomic.replacing(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, np.asarray(embedding, dtype=np.float32), allow_pickle=False)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "auricle" / "embeddings"


def clip_embeddings(
    model, files: Sequence[str], cache: EmbeddingCache | None, progress: bool = False
) -> tuple[np.ndarray, list[int], list[Failure], int]:
    """(embeddings of the readable files, their positions, failures, how many came from the cache).

    Files not in the cache are embedded together (``model.iter_embed``: several at once on the streams).
    """
    from tqdm import tqdm

    found: dict[int, np.ndarray] = {}
    failed: dict[int, Failure] = {}
    keys: dict[int, str] = {}
    hits = 0
    with tqdm(total=len(files), desc="embedding", unit="file", disable=not progress) as bar:
        for position, file in enumerate(files):
            try:
                keys[position] = file_key(file) if cache is not None else ""
            except OSError as error:
                failed[position] = Failure(str(file), f"{file}: cannot read ({error.strerror or error})")
                bar.update()
                continue
            embedding = cache.get(keys[position]) if cache is not None else None
            if embedding is not None:
                found[position] = embedding
                hits += 1
                bar.update()
        todo = [position for position in keys if position not in found]
        for position, result in zip(todo, model.iter_embed([files[position] for position in todo])):
            bar.update()
            if isinstance(result, Failure):
                failed[position] = result
                continue
            found[position] = result.clip
            if cache is not None:
                cache.put(keys[position], result.clip)
    kept = sorted(found)
    rows = [found[position] for position in kept]
    failures = [failed[position] for position in sorted(failed)]
    width = model.embedding_dim
    return (np.stack(rows) if rows else np.zeros((0, width), np.float32)), kept, failures, hits


# --------------------------------------------------------------------------- probe training


def train_probe(
    embeddings: np.ndarray, targets: np.ndarray, multi_label: bool, config: ProbeConfig = ProbeConfig()
) -> nn.Sequential:
    """Fit a CED-shaped head (see :func:`auricle.models.ced.make_head`) on fixed embeddings."""
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = make_head(embeddings.shape[1], targets.shape[1], config.hidden_width)
    inputs = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    labels = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * steps_per_epoch)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for first in range(0, len(order), config.batch_size):
            chosen = order[first:first + config.batch_size]
            logits = head(inputs[chosen])
            if multi_label:
                loss = F.binary_cross_entropy_with_logits(logits, labels[chosen])
            else:
                loss = F.cross_entropy(logits, labels[chosen])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
    return head.eval()


@torch.inference_mode()
def probe_scores(head: nn.Module, embeddings: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = head(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)))
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)).numpy()


def stratified_folds(targets: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each fold; clips dealt round-robin per (first) class after a seeded shuffle."""
    if folds < 2:
        raise ValueError("k-fold needs at least 2 folds")
    if folds > len(targets):
        raise DatasetError(f"{folds} folds but only {len(targets)} clips")
    generator = np.random.default_rng(seed)
    first_class = np.where(targets.any(axis=1), targets.argmax(axis=1), -1)
    assignment = np.empty(len(targets), dtype=np.int64)
    offset = 0
    for label in np.unique(first_class):
        members = generator.permutation(np.flatnonzero(first_class == label))
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # so small classes do not all start in fold 0
    return [np.flatnonzero(assignment == fold) for fold in range(folds)]


def with_probe_head(encoder: CED | Dasheng, head: nn.Sequential, multi_label: bool,
                    config: ProbeConfig) -> CED | Dasheng:
    """The encoder with ``head`` as its outputlayer (a network ``auricle tag`` can load)."""
    classes = head[-1].out_features
    activation = "sigmoid" if multi_label else "softmax"
    if isinstance(encoder, Dasheng):
        _check_head_fits(encoder, config)
        network = Dasheng(replace(encoder.config, num_classes=classes, head_activation=activation))
    else:
        network = CED(replace(encoder.config, num_classes=classes, head_hidden=config.hidden_width,
                              head_activation=activation))
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("outputlayer.")}
    state.update({f"outputlayer.{k}": v for k, v in head.state_dict().items()})
    network.load_state_dict(state, strict=True)
    return network.eval()


def _check_head_fits(encoder, config: ProbeConfig) -> None:
    # A Dasheng checkpoint's head is read from its tensors' shapes, which know LayerNorm+Linear only.
    if isinstance(encoder, Dasheng) and config.hidden_width:
        raise OptionError("a Dasheng encoder saves a linear probe head only (--head linear); "
                          "an mlp probe can be trained and scored without --output")


def _mean_scores(scores: Sequence[Scores]) -> dict:
    values = [s.to_dict() for s in scores]
    mean = {}
    for key, value in values[0].items():
        # Scores only: counts (examples, skipped classes) are summed or left out, not averaged.
        numbers = [v[key] for v in values if isinstance(v[key], float)]
        if numbers:
            mean[key] = round(float(np.mean(numbers)), 6)  # as each fold's scores are rounded
            mean[f"{key}_std"] = round(float(np.std(numbers)), 6)
    mean["examples"] = int(sum(v["examples"] for v in values))
    return mean


def run_probe(
    model,
    train: LabelledDataset,
    test: LabelledDataset | None,
    config: ProbeConfig = ProbeConfig(),
    *,
    folds: int = 0,
    cache_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> ProbeResult:
    """Embed, fit the probe on ``train`` (k-fold scores if ``folds`` >= 2), score ``test``, save as a head.

    ``model`` is an :class:`auricle.model.AudioModel` (or :class:`auricle.dasheng_model.DashengModel`)
    whose network is the frozen encoder.
    Unreadable files are left out and listed in ``failures``.
    """
    if output is not None:  # before any embedding: the head could not be saved
        _check_head_fits(model.network, config)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, model_key(model.network))
    multi_label = train.multi_label or (test is not None and test.multi_label)
    train.require_something_to_tell_apart(multi_label)
    failures: list[Failure] = []

    def embed(dataset: LabelledDataset) -> tuple[np.ndarray, np.ndarray]:
        embeddings, kept, failed, hits = clip_embeddings(model, dataset.files, cache, progress)
        failures.extend(failed)
        log(f"{dataset.source}: {len(kept)} clips embedded ({hits} from the cache), {len(failed)} failed")
        return embeddings, dataset.targets()[kept]

    train_x, train_y = embed(train)
    missing = [name for name, count in zip(train.classes, train_y.sum(axis=0)) if count == 0]
    if missing:
        raise DatasetError(f"{train.source}: {len(missing)} classes have no readable training clip: "
                           f"{listing(missing, quoted=True)}")
    result = ProbeResult(train.classes, multi_label, len(train_x))
    if folds >= 2:
        fold_scores = []
        for number, held in enumerate(stratified_folds(train_y, folds, config.seed), start=1):
            rest = np.setdiff1d(np.arange(len(train_y)), held)
            head = train_probe(train_x[rest], train_y[rest], multi_label, config)
            scores = score_classification(train_y[held], probe_scores(head, train_x[held], multi_label), multi_label)
            log(f"fold {number}/{folds}: {scores.line()}")
            fold_scores.append(scores)
        result.folds = [s.to_dict() for s in fold_scores]
        result.fold_mean = _mean_scores(fold_scores)
    head = train_probe(train_x, train_y, multi_label, config)
    if test is not None and len(test):
        test_x, test_y = embed(test)
        scores = score_classification(test_y, probe_scores(head, test_x, multi_label), multi_label)
        log(f"test: {scores.line()}")
        result.test = scores.to_dict()
    if output is not None:
        from auricle.models.checkpoints import save_checkpoint

        network = with_probe_head(model.network.cpu(), head, multi_label, config)
        result.checkpoint = str(save_checkpoint(network, output, labels=list(train.classes),
                                                name=name or Path(output).stem))
    result.failures = [{"file": f.file, "error": f.error} for f in failures]
    return result


__all__ = [
    "ProbeConfig", "ProbeResult", "EmbeddingCache", "run_probe", "train_probe", "probe_scores",
    "with_probe_head", "stratified_folds", "model_key", "file_key", "clip_embeddings", "default_cache_dir", "HEADS",
]
