"""Audio shards: fixed-length 16 kHz chunks in tar files (WebDataset convention).

A shard set is a folder::

    shard-000000.tar    members <key>.flac (16 kHz mono, lossless) and <key>.json
    shard-000001.tar    ({"source", "start", "end", "num_samples"}), in key order
    index.csv           key,shard,source,start,end,num_samples (one row per chunk)
    manifest.json       config, per-shard sha256, counts, failures, "complete"

Keys are ``<16 hex digits of sha256(absolute source path)>-<chunk number>``: unique
across sources and the same in every run over the same files. A shard is written
to a temporary name and renamed when full, and the manifest (the resume point)
is rewritten after each shard, so a killed job resumed with ``resume=True``
produces byte-identical shards. Tar headers carry no time or owner, so the same
sources and options always give the same sha256.

The audio in a shard is the canonical data: teachers and students both read it,
so 16-bit quantisation of decoded float audio is seen identically by both.

Over 400 lines: one file format (tar shards, index, manifest) with its writer, resume and reader,
kept in one place as the layout review advises (docs/architecture.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from auricle.audio import SAMPLE_RATE, iter_blocks
from auricle.distill import DistillError, DistillUsageError, file_sha256, read_manifest, write_json_atomic
from auricle.errors import AuricleError
from auricle.io import atomic

MANIFEST = "manifest.json"
INDEX = "index.csv"
FORMAT_NAME = "auricle-shards"
FORMAT_VERSION = 1
SUBTYPES = ("PCM_16", "PCM_24")
INDEX_FIELDS = ("key", "shard", "source", "start", "end", "num_samples")


@dataclass(frozen=True)
class ShardConfig:
    """How sources become chunks and chunks become shards."""

    chunk_seconds: float = 10.0
    #: Chunks (including a file's only chunk or its tail) shorter than this are dropped;
    #: 0.15 s is one encoder patch, so nothing the model could use is lost by default.
    min_seconds: float = 0.15
    chunks_per_shard: int = 1000
    #: FLAC sample format: PCM_16 (compact) or PCM_24.
    subtype: str = "PCM_16"

    def __post_init__(self) -> None:
        if not self.chunk_seconds > 0:
            raise DistillError(f"chunk length must be positive, got {self.chunk_seconds}")
        if not 0 <= self.min_seconds <= self.chunk_seconds:
            raise DistillError(f"minimum chunk length must be in [0, {self.chunk_seconds}], got {self.min_seconds}")
        if self.chunks_per_shard < 1:
            raise DistillError(f"chunks per shard must be at least 1, got {self.chunks_per_shard}")
        if self.subtype not in SUBTYPES:
            raise DistillError(f"sample format {self.subtype!r} is not one of {', '.join(SUBTYPES)}")

    @property
    def chunk_samples(self) -> int:
        return round(self.chunk_seconds * SAMPLE_RATE)

    @property
    def min_samples(self) -> int:
        return max(1, round(self.min_seconds * SAMPLE_RATE))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ShardConfig":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass(frozen=True)
class Chunk:
    """One chunk of a source: float32 mono 16 kHz samples and where they came from."""

    key: str
    audio: np.ndarray
    source: str
    start: float
    end: float

    @property
    def num_samples(self) -> int:
        return int(self.audio.shape[0])


@dataclass
class ShardReport:
    """What :func:`write_shards` did; ``failures`` are (source, error) pairs."""

    out_dir: str
    shards: int = 0
    chunks: int = 0
    seconds: float = 0.0
    sources: int = 0
    failures: list[dict] = field(default_factory=list)
    dropped_short: int = 0
    resumed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def chunk_key(source: str, index: int) -> str:
    digest = hashlib.sha256(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{digest[:16]}-{index:05d}"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def _sources_digest(sources: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(os.path.abspath(s) for s in sources).encode("utf-8", "surrogateescape")).hexdigest()


def encode_flac(audio: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    # Clip so out-of-range float samples saturate rather than wrap around.
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype=subtype)
    return buffer.getvalue()


def decode_flac(data: bytes, name: str = "<flac>") -> np.ndarray:
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except RuntimeError as error:
        raise DistillError(f"{name}: corrupt FLAC member ({error})") from None
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise DistillError(f"{name}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}")
    return audio


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # no time, owner or group: identical input gives identical bytes
    return info, io.BytesIO(data)


class _ShardWriter:
    """Accumulates chunks into numbered shards; each shard is renamed into place when full."""

    def __init__(self, out_dir: Path, config: ShardConfig, number: int) -> None:
        self.out_dir = out_dir
        self.config = config
        self.number = number
        self.count = 0
        self.tar: tarfile.TarFile | None = None
        self.tmp: Path | None = None

    def add(self, chunk: Chunk) -> None:
        if self.tar is None:
            self.tmp = atomic.temporary_sibling(self.out_dir / shard_name(self.number))
            self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        meta = {"source": chunk.source, "start": chunk.start, "end": chunk.end, "num_samples": chunk.num_samples}
        self.tar.addfile(*_tar_member(f"{chunk.key}.flac", encode_flac(chunk.audio, self.config.subtype)))
        self.tar.addfile(*_tar_member(f"{chunk.key}.json", json.dumps(meta, sort_keys=True).encode()))
        self.count += 1

    @property
    def full(self) -> bool:
        return self.count >= self.config.chunks_per_shard

    def close(self) -> dict | None:
        """Finish the open shard; returns its manifest entry (None if nothing was added)."""
        if self.tar is None:
            return None
        self.tar.close()
        final = self.out_dir / shard_name(self.number)
        atomic.commit(self.tmp, final, durable=True)
        entry = {"name": final.name, "chunks": self.count, "bytes": final.stat().st_size, "sha256": file_sha256(final)}
        self.tar, self.tmp, self.number, self.count = None, None, self.number + 1, 0
        return entry


def _source_chunks(source: str, config: ShardConfig, skip: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(chunk number, samples, first sample) of a source, from chunk ``skip`` on."""
    position = 0
    for number, block in enumerate(iter_blocks(source, config.chunk_samples)):
        start = position
        position += len(block)
        if number < skip:
            continue
        yield number, block, start


def write_shards(
    sources: Sequence[str],
    out_dir: str | os.PathLike,
    config: ShardConfig = ShardConfig(),
    resume: bool = False,
    progress: bool = False,
    on_failure: Callable[[str], None] | None = None,
) -> ShardReport:
    """Decode ``sources`` into chunk shards under ``out_dir``; bad sources are reported and skipped.

    With ``resume=True`` a killed run continues from the last finished shard (the
    sources and options must be the same). A complete set is left as it is.
    ``on_failure`` hears each source that fails in this run, as it fails; the
    report lists them all, those of earlier runs of a resumed set included.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = list(sources)
    if len({os.path.abspath(source) for source in sources}) != len(sources):
        raise DistillUsageError("a source is listed twice; its chunks would get the same keys")
    digest = _sources_digest(sources)
    manifest_path = out / MANIFEST
    report = ShardReport(out_dir=str(out), sources=len(sources))
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "sources_sha256": digest,
        "sources": len(sources),
        "shards": [],
        "next": {"source": 0, "chunk": 0},
        "failures": [],
        "dropped_short": 0,
        "complete": False,
    }
    if manifest_path.exists():
        if not resume:
            raise DistillUsageError(f"{out}: already holds a shard set; use --resume to continue it or choose another --out")
        previous = _read_manifest(out)
        if previous.get("config") != config.to_dict() or previous.get("sources_sha256") != digest:
            raise DistillUsageError(f"{out}: was made from other sources or options; cannot resume it with these")
        state = previous
        report.resumed = True
        for entry in state["shards"]:
            path = out / entry["name"]
            if not path.exists() or file_sha256(path) != entry["sha256"]:
                raise DistillError(f"{path}: missing or checksum mismatch; the shard set is damaged")
    atomic.remove_leftovers(out)  # what a killed run was writing
    if not state["complete"]:
        _fill_shards(sources, out, config, state, progress, tqdm, on_failure)
        if not state["shards"]:  # a "complete" set of nothing would pass for one until teach divides by it
            raise DistillError(f"{out}: no source gave any audio ({len(state['failures'])} failed, "
                               f"{state['dropped_short']} too short); no shard set was made")
        _write_index(out, state)
        state["complete"] = True
        write_json_atomic(manifest_path, state)
    report.shards = len(state["shards"])
    report.chunks = sum(entry["chunks"] for entry in state["shards"])
    report.seconds = state.get("seconds", 0.0)
    report.failures = list(state["failures"])
    report.dropped_short = state["dropped_short"]
    return report


def _fill_shards(sources, out: Path, config: ShardConfig, state: dict, progress: bool, tqdm,
                 on_failure: Callable[[str], None] | None) -> None:
    manifest_path = out / MANIFEST
    writer = _ShardWriter(out, config, number=len(state["shards"]))
    first_source, skip = state["next"]["source"], state["next"]["chunk"]
    failures: list[dict] = list(state["failures"])
    dropped = state["dropped_short"]
    seconds = state.get("seconds", 0.0)
    bar = tqdm(total=len(sources), initial=first_source, unit="file", disable=not progress, file=sys.stderr)

    def checkpoint(next_source: int, next_chunk: int) -> None:
        entry = writer.close()
        if entry is not None:
            state["shards"].append(entry)
        state.update(next={"source": next_source, "chunk": next_chunk}, failures=failures,
                     dropped_short=dropped, seconds=seconds)
        write_json_atomic(manifest_path, state)

    for source_number in range(first_source, len(sources)):
        source = sources[source_number]
        kept = 0
        try:
            for number, block, start in _source_chunks(source, config, skip if source_number == first_source else 0):
                if len(block) < config.min_samples:
                    dropped += 1
                    continue
                writer.add(Chunk(chunk_key(source, number), block, source,
                                 start / SAMPLE_RATE, (start + len(block)) / SAMPLE_RATE))
                seconds += len(block) / SAMPLE_RATE
                kept += 1
                if writer.full:
                    checkpoint(source_number, number + 1)
        except AuricleError as error:
            detail = str(error) if kept == 0 else f"{error} (kept its first {kept} chunks)"
            failures.append({"source": source, "error": detail})
            if on_failure is not None:
                on_failure(detail)
        bar.update(1)
    bar.close()
    checkpoint(len(sources), 0)


def _iter_members(tar: tarfile.TarFile, name: str) -> Iterator[tuple[str, bytes, dict]]:
    """(key, flac bytes, meta) per chunk of an open tar, in member order."""
    pending: dict[str, dict[str, bytes]] = {}
    for member in tar:
        if not member.isfile():
            continue
        key, _, extension = member.name.partition(".")
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
        parts = pending.setdefault(key, {})
        parts[extension] = data
        if "flac" in parts and "json" in parts:
            del pending[key]
            try:
                meta = json.loads(parts["json"])
            except json.JSONDecodeError as error:
                raise DistillError(f"{name}: {key}.json is not valid JSON ({error})") from None
            yield key, parts["flac"], meta
    if pending:
        raise DistillError(f"{name}: incomplete members for keys {', '.join(sorted(pending)[:3])}")


def iter_chunks(shard_path: str | os.PathLike) -> Iterator[Chunk]:
    """Stream the chunks of one shard in order (reads the tar sequentially)."""
    name = str(shard_path)
    try:
        with tarfile.open(name, "r|") as tar:
            for key, flac, meta in _iter_members(tar, name):
                yield Chunk(key, decode_flac(flac, f"{name}:{key}"), meta["source"], meta["start"], meta["end"])
    except (tarfile.TarError, OSError) as error:
        raise DistillError(f"{name}: unreadable shard ({error})") from None


class ShardReader:
    """Random access to one shard's chunks by key (for mixup partners and spot checks)."""

    def __init__(self, shard_path: str | os.PathLike) -> None:
        self.path = Path(shard_path)
        try:
            self._tar = tarfile.open(self.path, "r:")
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError) as error:
            raise DistillError(f"{self.path}: unreadable shard ({error})") from None
        self._flac: dict[str, tarfile.TarInfo] = {}
        self._meta: dict[str, tarfile.TarInfo] = {}
        for member in members:
            key, _, extension = member.name.partition(".")
            if extension == "flac":
                self._flac[key] = member
            elif extension == "json":
                self._meta[key] = member
        self.keys: list[str] = [key for key in self._flac if key in self._meta]

    def __len__(self) -> int:
        return len(self.keys)

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def audio(self, key: str) -> np.ndarray:
        member = self._flac.get(key)
        if member is None:
            raise DistillError(f"{self.path}: no chunk {key!r}")
        return decode_flac(self._tar.extractfile(member).read(), f"{self.path}:{key}")

    def chunk(self, key: str) -> Chunk:
        meta = json.loads(self._tar.extractfile(self._meta[key]).read())
        return Chunk(key, self.audio(key), meta["source"], meta["start"], meta["end"])

    def __iter__(self) -> Iterator[Chunk]:
        return (self.chunk(key) for key in self.keys)


def _write_index(out: Path, state: dict) -> None:
    with atomic.replacing(out / INDEX) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INDEX_FIELDS)
        for entry in state["shards"]:
            with tarfile.open(out / entry["name"], "r|") as tar:
                for key, member_name in _iter_meta(tar):
                    writer.writerow([key, entry["name"], member_name["source"], member_name["start"],
                                     member_name["end"], member_name["num_samples"]])


def _iter_meta(tar: tarfile.TarFile) -> Iterator[tuple[str, dict]]:
    for member in tar:
        if member.isfile() and member.name.endswith(".json"):
            yield member.name[: -len(".json")], json.loads(tar.extractfile(member).read())


def _read_manifest(directory: Path) -> dict:
    return read_manifest(directory, MANIFEST, FORMAT_NAME, "a shard set")


@dataclass
class ShardSet:
    """A finished shard set: its shards, their keys in order, and the manifest."""

    directory: Path
    manifest: dict
    shards: list[Path]
    _keys: dict[str, list[str]]
    _rows: dict[str, dict]

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "ShardSet":
        directory = Path(directory)
        manifest = _read_manifest(directory)
        if not manifest.get("complete"):
            raise DistillError(f"{directory}: shard set is incomplete; rerun `auricle distill shards` with --resume")
        if not manifest["shards"]:
            raise DistillError(f"{directory}: the shard set holds no audio")
        keys: dict[str, list[str]] = {entry["name"]: [] for entry in manifest["shards"]}
        rows: dict[str, dict] = {}
        try:
            with open(directory / INDEX, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    keys[row["shard"]].append(row["key"])
                    rows[row["key"]] = row
        except (OSError, KeyError) as error:
            raise DistillError(f"{directory / INDEX}: unreadable or inconsistent index ({error})") from None
        for entry in manifest["shards"]:
            if len(keys[entry["name"]]) != entry["chunks"]:
                raise DistillError(f"{directory / INDEX}: {entry['name']} lists {len(keys[entry['name']])} "
                                   f"chunks, the manifest {entry['chunks']}")
        shards = [directory / entry["name"] for entry in manifest["shards"]]
        return cls(directory, manifest, shards, keys, rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def config(self) -> ShardConfig:
        return ShardConfig.from_dict(self.manifest["config"])

    @property
    def audio_bytes(self) -> int:
        """Total size of the shard files."""
        return sum(entry["bytes"] for entry in self.manifest["shards"])

    @property
    def seconds(self) -> float:
        return float(self.manifest.get("seconds", 0.0))

    def keys(self, shard: str | os.PathLike) -> list[str]:
        """Keys of a shard (by file name or path), in shard order."""
        return list(self._keys[Path(shard).name])

    def row(self, key: str) -> dict:
        return dict(self._rows[key])

    def sha256(self, shard: str | os.PathLike) -> str:
        name = Path(shard).name
        return next(entry["sha256"] for entry in self.manifest["shards"] if entry["name"] == name)

    def check(self, names: Sequence[str] | None = None) -> list[str]:
        """Names of shards (all, or those in ``names``) whose file is missing or whose sha256 differs from the
        manifest."""
        bad = []
        for entry in self.manifest["shards"]:
            if names is not None and entry["name"] not in names:
                continue
            path = self.directory / entry["name"]
            if not path.exists() or file_sha256(path) != entry["sha256"]:
                bad.append(entry["name"])
        return bad
