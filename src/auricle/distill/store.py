"""The target store: top-k teacher outputs per view, one columnar file per (shard, epoch).

Layout of a store folder::

    manifest.json                 teachers (identity, sha256, weight), augmentation config, seed,
                                  epochs, top_k, codec, shard set (path, manifest sha256), code version
    targets/<shard>.e<epoch>.npz  arrays ``indices`` (N, K) uint16 and ``values`` (N, K) in the codec's
                                  dtype, ``keys_sha256`` (32,) uint8; row i is the shard's i-th chunk

Nothing random is stored: a view is regenerated from (seed, epoch, key). Keys
are not stored either (rows follow the shard's key order; ``keys_sha256``
checks that order), so a view costs K indices and K quantised values.

Value codecs (probabilities in [0, 1]):

* ``sqrt-u8`` (default): ``round(255 * sqrt(p))``, 1 byte; absolute error at most
  ``sqrt(p)/255 + 1/260100`` (<= 0.0039 at p = 1, about 0.0004 at p = 0.01): finer
  where small probabilities live;
* ``u16``: ``round(65535 * p)``, 2 bytes, error <= 7.7e-6;
* ``f16``: float16, 2 bytes (the official store's value type); ``f32``: exact, 4 bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auricle.distill import DistillError, read_manifest, write_json_atomic
from auricle.io import atomic

MANIFEST = "manifest.json"
TARGETS = "targets"
FORMAT_NAME = "auricle-targets"
FORMAT_VERSION = 1
CODECS = ("sqrt-u8", "u16", "f16", "f32")
DEFAULT_CODEC = "sqrt-u8"


def encode_values(probabilities: np.ndarray, codec: str = DEFAULT_CODEC) -> np.ndarray:
    """Quantise probabilities (clipped to [0, 1]) with ``codec``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if codec == "sqrt-u8":
        return np.rint(np.sqrt(p) * 255.0).astype(np.uint8)
    if codec == "u16":
        return np.rint(p * 65535.0).astype(np.uint16)
    if codec == "f16":
        return p.astype(np.float16)
    if codec == "f32":
        return np.asarray(probabilities, dtype=np.float32)
    raise DistillError(f"unknown value codec {codec!r} (choose from {', '.join(CODECS)})")


def decode_values(codes: np.ndarray, codec: str = DEFAULT_CODEC) -> np.ndarray:
    """Probabilities (float32) from codes written by :func:`encode_values`."""
    if codec == "sqrt-u8":
        return np.square(codes.astype(np.float32) / np.float32(255.0))
    if codec == "u16":
        return codes.astype(np.float32) / np.float32(65535.0)
    if codec in ("f16", "f32"):
        return codes.astype(np.float32)
    raise DistillError(f"unknown value codec {codec!r} (choose from {', '.join(CODECS)})")


def code_distance(a: np.ndarray, b: np.ndarray, codec: str) -> np.ndarray:
    """How many quantisation steps apart two code arrays are (float codecs: ulps)."""
    if codec == "f16":
        a, b = a.astype(np.float16).view(np.int16), b.astype(np.float16).view(np.int16)
    elif codec == "f32":
        a, b = a.astype(np.float32).view(np.int32), b.astype(np.float32).view(np.int32)
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


def keys_digest(keys: list[str]) -> np.ndarray:
    return np.frombuffer(hashlib.sha256("\n".join(keys).encode("utf-8")).digest(), dtype=np.uint8).copy()


def unit_name(shard: str, epoch: int) -> str:
    return f"{Path(shard).name.removesuffix('.tar')}.e{epoch:04d}.npz"


@dataclass(frozen=True)
class UnitTargets:
    """The stored targets of one (shard, epoch): row i belongs to the shard's i-th key."""

    indices: np.ndarray  # (N, K) int64
    probabilities: np.ndarray  # (N, K) float32, decoded
    codes: np.ndarray  # (N, K) as stored
    keys_sha256: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class TargetStore:
    """A folder of teacher targets; see the module docstring for the layout."""

    def __init__(self, directory: str | os.PathLike, manifest: dict) -> None:
        self.directory = Path(directory)
        self.manifest = manifest

    # -- opening and creating -------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike) -> "TargetStore":
        manifest = read_manifest(directory, MANIFEST, FORMAT_NAME, "a target store")
        return cls(directory, manifest)

    @classmethod
    def create(cls, directory: str | os.PathLike, manifest: dict) -> "TargetStore":
        directory = Path(directory)
        (directory / TARGETS).mkdir(parents=True, exist_ok=True)
        manifest = dict(manifest, format=FORMAT_NAME, format_version=FORMAT_VERSION)
        write_json_atomic(directory / MANIFEST, manifest)
        return cls(directory, manifest)

    def update_manifest(self, **fields) -> None:
        self.manifest.update(fields)
        write_json_atomic(self.directory / MANIFEST, self.manifest)

    # -- properties from the manifest ----------------------------------------
    @property
    def codec(self) -> str:
        return self.manifest["codec"]

    @property
    def top_k(self) -> int:
        return int(self.manifest["top_k"])

    @property
    def epochs(self) -> int:
        return int(self.manifest["epochs"])

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def shards_dir(self) -> Path:
        return Path(self.manifest["shards"]["path"])

    def augment_config(self):
        from auricle.distill.augment import AugmentConfig

        return AugmentConfig.from_dict(self.manifest["augment"])

    def units(self) -> list[tuple[str, int]]:
        """Every (shard name, epoch) the store is meant to hold, epoch-major."""
        return [(shard, epoch) for epoch in range(self.epochs) for shard in self.manifest["shards"]["names"]]

    # -- units ------------------------------------------------------------------
    def unit_path(self, shard: str, epoch: int) -> Path:
        return self.directory / TARGETS / unit_name(shard, epoch)

    def has_unit(self, shard: str, epoch: int) -> bool:
        return self.unit_path(shard, epoch).exists()

    def unit_problem(self, shard: str, epoch: int, keys: list[str] | None = None) -> str | None:
        """Why a unit's file cannot be used (unreadable, cut short, another row count), or None.

        Reads the whole unit (they are small): a file that exists is not yet a finished unit.
        ``keys``: the shard's keys, which its rows must follow (a unit swapped or renamed).
        """
        try:
            unit = self.read_unit(shard, epoch)
        except DistillError as error:
            return str(error)
        expected = self.manifest["shards"]["chunks"].get(shard)
        if expected is not None and len(unit.indices) != expected:
            return f"{self.unit_path(shard, epoch)}: {len(unit.indices)} rows where {shard} has {expected} chunks"
        if keys is not None and not np.array_equal(unit.keys_sha256, keys_digest(keys)):
            return f"{self.unit_path(shard, epoch)}: rows do not follow the keys of {shard}"
        return None

    def done_units(self) -> list[tuple[str, int]]:
        return [unit for unit in self.units() if self.has_unit(*unit)]

    def write_unit(self, shard: str, epoch: int, keys: list[str], indices: np.ndarray, probabilities: np.ndarray) -> Path:
        """Quantise and write one unit atomically (temporary file, fsync, rename)."""
        indices = np.asarray(indices)
        if indices.shape != np.shape(probabilities) or indices.ndim != 2 or indices.shape[0] != len(keys):
            raise DistillError(f"{shard} epoch {epoch}: {len(keys)} keys, indices {indices.shape}, "
                               f"values {np.shape(probabilities)}")
        if indices.size and (indices.min() < 0 or indices.max() > np.iinfo(np.uint16).max):
            raise DistillError(f"{shard} epoch {epoch}: class index out of the uint16 range")
        path = self.unit_path(shard, epoch)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, indices=indices.astype(np.uint16), values=encode_values(probabilities, self.codec),
                            keys_sha256=keys_digest(keys))
        atomic.write_bytes(path, buffer.getvalue(), durable=True)
        return path

    def read_unit(self, shard: str, epoch: int) -> UnitTargets:
        path = self.unit_path(shard, epoch)
        try:
            with np.load(path, allow_pickle=False) as data:
                codes = data["values"]
                return UnitTargets(data["indices"].astype(np.int64), decode_values(codes, self.codec), codes,
                                   data["keys_sha256"])
        except FileNotFoundError:
            raise DistillError(f"{path}: no targets for {shard} epoch {epoch} (teacher pass not finished?)") from None
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as error:
            raise DistillError(f"{path}: unreadable targets ({error or type(error).__name__})") from None

    def targets(self, shard: str, epoch: int, keys: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (indices int64 (K,), probabilities float32 (K,)) of one unit.

        ``keys`` are the shard's keys in order (default: read from the shard set
        the manifest names); their checksum must match the unit's.
        """
        if keys is None:
            from auricle.distill.shards import ShardSet

            keys = ShardSet.open(self.shards_dir).keys(shard)
        unit = self.read_unit(shard, epoch)
        if not np.array_equal(unit.keys_sha256, keys_digest(keys)):
            raise DistillError(f"{self.unit_path(shard, epoch)}: rows do not follow the keys of {shard}")
        return {key: (unit.indices[row], unit.probabilities[row]) for row, key in enumerate(keys)}

    # -- sizes ----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """Bytes of the finished unit files."""
        return sum(self.unit_path(*unit).stat().st_size for unit in self.done_units())

    def views(self) -> int:
        counts = self.manifest["shards"]["chunks"]
        return sum(counts[shard] for shard, _ in self.done_units())

    def bytes_per_view(self) -> float:
        views = self.views()
        return self.size_bytes() / views if views else float("nan")
