"""What the student trainer reads: chunks, the teacher's stored targets and the replayed views.

:class:`StoreViews` joins a shard set and a target store (both written by
``auricle distill shards`` / ``teach``) behind the few calls the trainer makes,
so the training loop does not depend on their file layouts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auricle.distill import DistillError


def seed_from(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (counter-based randomness)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def unit_interval(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a chunk key (held-out selection)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"holdout").digest()
    return int.from_bytes(digest, "little") / 2**64


class StoreViews:
    """Shards + target store, with a small cache of decoded shards and their targets."""

    def __init__(self, shards_dir: str | Path, store_dir: str | Path, cache_shards: int = 4) -> None:
        from auricle.distill.augment import AugmentConfig
        from auricle.distill.shards import MANIFEST, ShardSet, file_sha256
        from auricle.distill.store import TargetStore

        self.shard_set = ShardSet.open(shards_dir)
        self.store = TargetStore.open(store_dir)
        manifest = self.store.manifest
        if not manifest.get("complete"):
            raise DistillError(f"{store_dir}: the teacher pass is not finished (rerun `auricle distill teach --resume`)")
        if manifest["shards"]["manifest_sha256"] != file_sha256(Path(shards_dir) / MANIFEST):
            raise DistillError(f"{store_dir}: its targets were computed on another shard set than {shards_dir}")
        self.augment_config = AugmentConfig.from_dict(manifest["augment"])
        self.seed = int(manifest["seed"])
        self.stored_epochs = list(range(int(manifest["epochs"])))
        self.shard_names = [Path(shard).name for shard in self.shard_set.shards]
        self._shard_paths = {Path(shard).name: Path(shard) for shard in self.shard_set.shards}
        # The store's class list: its own when it names one, else AudioSet's.
        self.labels: tuple[str, ...] = tuple(manifest.get("labels") or _audioset_names())
        if len(self.labels) != int(manifest.get("num_classes", len(self.labels))):
            raise DistillError(f"{store_dir}: {manifest['num_classes']} classes stored but {len(self.labels)} names")
        self.cache_shards = max(cache_shards, 1)
        self._audio: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._targets: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self._renderers: dict[int, Any] = {}
        self._keys: dict[str, list[str]] = {}

    def keys(self, shard_name: str) -> list[str]:
        return list(self.shard_set.keys(self._shard_paths[shard_name]))

    def audio(self, shard_name: str) -> dict[str, np.ndarray]:
        """Every chunk of a shard, decoded (kept while it is among the last few used)."""
        from auricle.distill.shards import iter_chunks

        if shard_name not in self._audio:
            self._audio[shard_name] = {chunk.key: chunk.audio for chunk in iter_chunks(self._shard_paths[shard_name])}
            while len(self._audio) > self.cache_shards:
                self._audio.popitem(last=False)
        self._audio.move_to_end(shard_name)
        return self._audio[shard_name]

    def targets(self, shard_name: str, epoch: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (class indices, probabilities) the teachers stored for this shard and epoch."""
        unit = (shard_name, epoch)
        if unit not in self._targets:
            self._targets[unit] = self.store.targets(shard_name, epoch, self._shard_keys(shard_name))
            while len(self._targets) > self.cache_shards:
                self._targets.popitem(last=False)
        self._targets.move_to_end(unit)
        return self._targets[unit]

    def _renderer(self, seed: int):
        from auricle.distill.augment import ViewRenderer

        if seed not in self._renderers:
            self._renderers[seed] = ViewRenderer(self.augment_config, seed)
        return self._renderers[seed]

    def view(self, shard_name: str, key: str, epoch: int, seed: int) -> tuple[np.ndarray, Any]:
        """The augmented waveform of ``key`` for (epoch, seed) and its view parameters.

        Mixup partners come from the whole shard, as in the teacher pass.
        """
        audio = self.audio(shard_name)
        renderer = self._renderer(seed)
        params = renderer.params(key, epoch, len(audio[key]), self._shard_keys(shard_name))
        return renderer.waveform(audio[key], params, audio.__getitem__), params

    def partner(self, shard_name: str, key: str, epoch: int, seed: int, index: int | None = None) -> str | None:
        """The chunk that view (epoch, seed) of ``key`` mixes in, if any, without decoding audio.

        ``index``: the position of ``key`` among the shard's keys, when known.
        """
        from auricle.distill.augment import mixup_partner

        return mixup_partner(key, epoch, seed, self.augment_config, self._shard_keys(shard_name), index)[0]

    def mel(self, waveforms: list[np.ndarray], params: list[Any]) -> torch.Tensor:
        """Masked log-mel (batch, n_mels, frames) of equal-length views, computed as the teacher pass does."""
        return self._renderer(self.seed).mel(waveforms, params)

    def _shard_keys(self, shard_name: str) -> list[str]:
        if shard_name not in self._keys:
            self._keys[shard_name] = self.keys(shard_name)
        return self._keys[shard_name]


def _audioset_names() -> tuple[str, ...]:
    from auricle.labels import audioset_labels

    return audioset_labels().names
