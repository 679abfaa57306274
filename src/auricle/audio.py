"""Audio decoding: files and in-memory arrays -> 16 kHz mono float32.

Every entry point goes through the same three steps:

1. **Decode** at the native rate to float32. libsndfile (via ``soundfile``) is
   tried first (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, CAF, AU, ...); when it
   cannot open a file, FFmpeg (via PyAV, imported only then) decodes it (M4A/AAC,
   WebM, MP4 and MKV, including the audio of a video file, WMA, AMR, ...).
   Integer PCM is scaled by its full scale: int16 / 32768, int32 / 2**31,
   unsigned 8-bit centred at 128.
2. **Mix** to mono by the plain mean of the channels (not FFmpeg's downmix
   matrix, which weights channels unequally). Mono input passes unchanged.
3. **Resample** with libsoxr (``soxr.ResampleStream``, quality
   :data:`RESAMPLE_QUALITY`) whose state carries across chunks, so streaming a
   file in blocks gives exactly the samples of decoding it whole. Input already
   at the target rate is not resampled at all (bit-exact passthrough).

Every failure raises :class:`~auricle.errors.AudioError` with a one-line
message ``"<file>: <cause>"``.

A file cut short (a copy or download that stopped) is decoded as far as it
goes, where the decoder allows, and reported as :class:`Truncation` (declared
against decoded length) on the iterator :func:`iter_blocks` returns. What is
detected: WAV whose data chunk declares more than the file holds; MP3 (header
frame count) and MP4/M4A (sample table) decoding short of their declared
length. FLAC cut short is refused (libsndfile loses sync at the cut and cannot
tell it from damage inside the file), and so are M4A files whose index (the
``moov`` box, written last by most encoders) was cut off. What libmpg123
(inside libsndfile) prints about damaged MPEG data is caught and said once per
file as an :class:`~auricle.errors.AudioWarning`.

The FFmpeg fallback is :mod:`auricle.audio_ffmpeg`, file listing :mod:`auricle.audio_files` (both
re-exported here where public). Over 400 lines: one pipeline (decode, mix, check, resample, block)
whose steps share the record of what was decoded; apart, each step would be read across files.
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import soxr

from auricle.audio_files import AUDIO_EXTENSIONS, list_audio_files  # noqa: F401 (their old import path)
from auricle.errors import AudioError, AudioWarning

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
"""The rate every model works at; decoded audio is resampled to it."""

RESAMPLE_QUALITY = "HQ"
"""libsoxr quality preset: 'HQ' (20-bit precision, linear phase; python-soxr's
default). 'VHQ' only adds precision (28-bit) far below the 120 dB dynamic range
the log-mel frontend keeps, at a higher cost."""

DECODE_FRAMES = 65536
"""Native-rate frames decoded (and fed to the resampler) per step."""

# First bytes of formats libsndfile reads: when neither decoder can open such a
# file, it is a damaged file of that format rather than a foreign one.
_SNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff")


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, at its native rate and channel count.

    ``format`` is ``"<container>/<encoding>"`` in lower case, e.g. ``"wav/pcm_16"``,
    ``"flac/pcm_24"``, ``"mp3/mpeg_layer_iii"`` (read by libsndfile) or
    ``"mov/aac"``, ``"matroska/opus"`` (read by FFmpeg).
    """

    path: str
    sample_rate: int
    channels: int
    frames: int | None
    duration: float | None
    format: str


@dataclass(frozen=True)
class Truncation:
    """A file that holds less audio than its header declares: both lengths in seconds."""

    declared: float
    decoded: float

    def message(self, name: str) -> str:
        return (f"{name}: truncated: the header declares {self.declared:.3f} s, only {self.decoded:.3f} s "
                "could be decoded; what there is was used")


class Blocks(Iterator[np.ndarray]):
    """The blocks of one file; once exhausted, :attr:`truncation` says whether the file was cut short."""

    def __init__(self, name: str, pieces: Iterator[np.ndarray], block_samples: int, report: _Report) -> None:
        self._blocks = _blocks(name, pieces, block_samples)
        self._report = report

    def __next__(self) -> np.ndarray:
        return next(self._blocks)

    @property
    def truncation(self) -> Truncation | None:
        """Declared and decoded length when decoding ended short of the header's length, else None."""
        return self._report.truncation()


@dataclass
class _Report:
    """What decoding a file found out about its length, filled in as it goes."""

    rate: float = 0.0
    declared: int | None = None  # native-rate frames the header declares, where it is trusted
    decoded: int = 0
    slack: int = 0  # frames the declared length may be off by on an intact file

    def truncation(self) -> Truncation | None:
        if self.declared is None or not self.rate or self.decoded + self.slack >= self.declared:
            return None
        return Truncation(self.declared / self.rate, self.decoded / self.rate)


# -- public API -----------------------------------------------------------------


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to a float32 mono 1-D array at ``sample_rate`` Hz.

    Exactly the concatenation of :func:`iter_blocks` for the same file.
    Raises :class:`AudioError` for a missing, empty, unreadable, corrupt or
    unsupported file, for NaN/Inf samples and for a file with no samples.
    """
    rate = _check_rate(sample_rate)
    name, head = _check_file(path)
    pieces = list(_signal(name, head, rate))
    if not pieces:
        raise AudioError(f"{name}: no audio samples")
    return np.concatenate(pieces)


def iter_blocks(
    path: str | os.PathLike, block_samples: int, sample_rate: int = SAMPLE_RATE
) -> Blocks:
    """Stream a file as float32 mono blocks of exactly ``block_samples`` samples.

    Only the last block may be shorter. Memory stays bounded whatever the
    duration, and the blocks concatenate to exactly :func:`load_audio`'s array.
    Missing files, folders and empty files raise :class:`AudioError` at once;
    decoding errors (including NaN/Inf in any block, or no samples at all) are
    raised while iterating, possibly after some blocks were yielded. Once
    exhausted, the iterator's ``truncation`` says whether the file was cut short.
    """
    if isinstance(block_samples, bool) or not isinstance(block_samples, (int, np.integer)) or block_samples <= 0:
        raise ValueError(f"block_samples must be a positive integer, got {block_samples!r}")
    rate = _check_rate(sample_rate)
    name, head = _check_file(path)
    report = _Report()
    return Blocks(name, _signal(name, head, rate, report), int(block_samples), report)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read sample rate, channels, length and format from the header, without decoding.

    For files libsndfile reads, ``frames`` is the header's frame count (exact
    for PCM formats). For files only FFmpeg reads, ``frames`` and ``duration``
    come from the container's declared duration: approximate (e.g. AAC encoder
    padding is included or not depending on the container) or ``None`` when
    the container does not declare one (e.g. some streamed WebM).
    """
    name, head = _check_file(path)
    try:
        info = soundfile.info(name)
    except RuntimeError as sndfile_error:  # LibsndfileError is a RuntimeError
        from auricle.audio_ffmpeg import _pyav_info  # the fallback: imported only when needed

        return _pyav_info(name, head, sndfile_error)
    return AudioInfo(
        path=name,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        duration=float(info.duration),
        format=f"{info.format}/{info.subtype}".lower(),
    )


def prepare_waveform(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, name: str = "<array>"
) -> np.ndarray:
    """Turn an in-memory signal into a float32 mono 1-D array at 16 kHz.

    ``waveform`` is 1-D (samples) or 2-D (channels, samples), the
    torch/torchaudio convention (an array of more channels than samples is
    refused as probably transposed). Integer samples are scaled by their full
    scale (int16 / 32768, int32 / 2**31, uint8 centred at 128); channels are
    averaged; the result is resampled from ``sample_rate`` exactly as a file
    would be, so decoding a file yourself and passing the array gives the same
    samples as :func:`load_audio`. Errors name the array by ``name``.
    """
    rate = _check_rate(sample_rate)
    array = _as_numpy(waveform, name)
    if array.ndim == 1:
        array = array[np.newaxis]
    elif array.ndim != 2:
        raise AudioError(
            f"{name}: expected a 1-D (samples) or 2-D (channels, samples) array, got shape {tuple(array.shape)}"
        )
    channels, samples = array.shape
    if channels == 0 or samples == 0:
        raise AudioError(f"{name}: no audio samples")
    if channels > samples:
        raise AudioError(
            f"{name}: 2-D arrays are (channels, samples) but shape {tuple(array.shape)} "
            "has more channels than samples; transpose it"
        )
    mono = _mix(_to_float(array, name))
    chunks = ((rate, mono[start : start + DECODE_FRAMES]) for start in range(0, samples, DECODE_FRAMES))
    pieces = list(_resampled(name, _finite(name, chunks), SAMPLE_RATE))
    if not pieces:
        raise AudioError(f"{name}: no audio samples")
    return np.concatenate(pieces)


def prepare_batch(waveforms: np.ndarray | torch.Tensor, name: str = "<batch>") -> np.ndarray:
    """(batch, samples) clips at 16 kHz, or one clip (samples), as float32 (batch, samples).

    Integer samples are scaled as :func:`prepare_waveform` scales them; NaN or Inf, an
    empty batch and more clips than samples (surely a (samples, channels) signal) are refused.
    """
    array = _as_numpy(waveforms, name)
    if array.ndim == 1:
        array = array[np.newaxis]
    if array.ndim != 2:
        raise AudioError(f"{name}: expected (batch, samples) waveforms, got shape {tuple(array.shape)}")
    clips, samples = array.shape
    if clips == 0 or samples == 0:
        raise AudioError(f"{name}: no audio samples (shape {tuple(array.shape)})")
    if clips > samples:
        raise AudioError(f"{name}: (batch, samples) waveforms but shape {tuple(array.shape)} has more clips than "
                         "samples; a (samples, channels) signal? give one mono clip per row")
    batch = _to_float(array, name)
    if not np.isfinite(batch).all():
        raise AudioError(f"{name}: contains NaN or Inf samples")
    return np.ascontiguousarray(batch, dtype=np.float32)


# -- path checks ----------------------------------------------------------------


def _check_file(path: str | os.PathLike) -> tuple[str, bytes]:
    """Refuse what is not a readable, non-empty regular file; return (name, first bytes)."""
    name = os.fsdecode(os.fspath(path))
    if not os.path.exists(name):
        raise AudioError(f"{name}: file not found")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory")
    if not os.path.isfile(name):
        raise AudioError(f"{name}: not a regular file")
    try:
        with open(name, "rb") as handle:
            head = handle.read(16)
    except PermissionError:
        raise AudioError(f"{name}: permission denied") from None
    except OSError as error:
        raise AudioError(f"{name}: cannot read file ({_one_line(error.strerror or str(error))})") from None
    if not head:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return name, head


def _check_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    if not (math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    return sample_rate


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


# -- the pipeline: decode -> mix -> check -> resample -> (re)block ---------------------


def _signal(name: str, head: bytes, sample_rate: float, report: _Report | None = None) -> Iterator[np.ndarray]:
    """Validated mono pieces of a file at ``sample_rate`` (sizes follow the decoder)."""
    return _resampled(name, _finite(name, _counted(_decoded(name, head, report or _Report()), report)), sample_rate)


def _counted(chunks: Iterable[tuple[float, np.ndarray]], report: _Report | None) -> Iterator[tuple[float, np.ndarray]]:
    """``chunks`` unchanged, their native-rate samples added up in ``report``."""
    for rate, chunk in chunks:
        if report is not None:
            report.decoded += len(chunk)
        yield rate, chunk


def _decoded(name: str, head: bytes, report: _Report) -> Iterator[tuple[float, np.ndarray]]:
    """(native rate, float32 mono chunk) pairs: libsndfile first, FFmpeg if it cannot open the file."""
    notes = _LibraryNotes(enabled=not head.startswith(_SNDFILE_MAGIC))  # maybe MPEG: libmpg123 talks
    try:
        with notes.caught():
            sound = soundfile.SoundFile(name)
    except RuntimeError as sndfile_error:  # LibsndfileError is a RuntimeError
        from auricle.audio_ffmpeg import _pyav_decoded  # the fallback: imported only when needed

        yield from _pyav_decoded(name, head, sndfile_error, report)
        return
    notes.enabled = notes.enabled and sound.format in _ESTIMATED_LENGTH
    with sound:
        rate = sound.samplerate
        report.rate = rate
        report.declared = _declared_frames(name, head, sound)
        if sound.format in _ESTIMATED_LENGTH:
            report.slack = _MPEG_FRAME
        while True:
            try:
                with notes.caught():
                    frames = sound.read(DECODE_FRAMES, dtype="float32", always_2d=True)
            except RuntimeError as error:
                raise AudioError(f"{name}: corrupt or truncated audio ({_sndfile_detail(error)})") from None
            if not len(frames):
                break
            yield rate, _mix(frames.T)
    if notes.lines:
        more = f", and {len(notes.lines) - 1} more" if len(notes.lines) > 1 else ""
        warnings.warn(f"{name}: the MPEG decoder met damaged or inconsistent data "
                      f"(libmpg123: {_one_line(notes.lines[0])}{more})",
                      AudioWarning, stacklevel=2)


#: What libmpg123 (inside libsndfile) writes on stderr about damaged or odd MPEG data, unprefixed.
_MPG123_LINE = re.compile(r"^(Note: |Warning: |Error: |Trying to resync|Skipped \d+ bytes|\[src/libmpg123)")
#: One file descriptor 2 per process: only one thread may divert it at a time.
_STDERR_LOCK = threading.Lock()


class _LibraryNotes:
    """libmpg123's lines on stderr, caught while libsndfile decodes MPEG, to be said once in auricle's words.

    File descriptor 2 is diverted to a temporary file for each call (a few ms), under a lock:
    what other threads write meanwhile lands there too and is written back to stderr right
    after, in order, so nothing else is lost, only delayed. libmpg123 cannot be told to be
    quiet through libsndfile, and decoding MPEG with FFmpeg instead would change the samples.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.lines: list[str] = []

    @contextmanager
    def caught(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):  # no stderr, or a closed one: nothing pending
                pass
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                caught = sink.read()
        if not caught:
            return
        others = []
        for line in caught.decode("utf-8", "replace").splitlines(keepends=True):
            (self.lines if _MPG123_LINE.match(line) else others).append(line.rstrip("\n"))
        if others:
            os.write(2, ("\n".join(others) + "\n").encode())


#: A RIFF data size at least this big is a placeholder of a writer that could not seek back
#: (0xFFFFFFFF from a pipe, 0x7FFFF000 and the like), not a length.
_RIFF_UNKNOWN_SIZE = 0x7FFF0000


#: Formats whose declared length libsndfile may estimate (from the bitrate, without a Xing
#: header), by up to one MPEG frame of samples.
_ESTIMATED_LENGTH = ("MP3", "MPEG")
_MPEG_FRAME = 1152


def _declared_frames(name: str, head: bytes, sound: soundfile.SoundFile) -> int | None:
    """Frames the header declares, where that is a length a whole file decodes to; else None.

    libsndfile cuts a WAV's frame count to what the file holds, so the data chunk's own size
    is read here. For MP3 its count comes from the Xing/LAME header (or the bitrate) and is
    what decoding an intact file gives. Ogg's comes from the last page there is, so a cut
    file declares what it holds; FLAC's decoder refuses a cut file itself.
    """
    if sound.format in _ESTIMATED_LENGTH:
        return int(sound.frames)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav_data_frames(name)
    return None


def _wav_data_frames(name: str) -> int | None:
    """Frames a WAV's ``data`` chunk declares (size / block align), None if unknown or unreadable."""
    block_align = 0
    try:
        with open(name, "rb") as handle:
            handle.seek(12)
            for _ in range(64):  # a few chunks precede the data; more is not a WAV we can judge
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if kind == b"fmt ":
                    fmt = handle.read(size + (size & 1))
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                elif kind == b"data":
                    if not block_align or size == 0 or size >= _RIFF_UNKNOWN_SIZE:
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _finite(name: str, chunks: Iterable[tuple[float, np.ndarray]]) -> Iterator[tuple[float, np.ndarray]]:
    for rate, chunk in chunks:
        if not np.isfinite(chunk).all():
            raise AudioError(f"{name}: contains NaN or Inf samples")
        yield rate, chunk


def _resampled(name: str, chunks: Iterable[tuple[float, np.ndarray]], sample_rate: float) -> Iterator[np.ndarray]:
    """Resample a stream of (rate, chunk) to ``sample_rate``; same-rate chunks pass untouched.

    One resampler serves the whole stream, so the output does not depend on
    how the input was chunked. Should the native rate change mid-stream
    (possible in some FFmpeg streams), the resampler is flushed and restarted.
    """
    stream: soxr.ResampleStream | None = None
    current_rate: float | None = None

    def flushed() -> Iterator[np.ndarray]:
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if not np.isfinite(tail).all():
                raise AudioError(f"{name}: contains NaN or Inf samples")
            if len(tail):
                yield tail

    for rate, chunk in chunks:
        if rate != current_rate:
            yield from flushed()
            current_rate = rate
            stream = None if rate == sample_rate else soxr.ResampleStream(
                rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        if stream is None:
            out = chunk
        else:
            out = stream.resample_chunk(chunk)
            if not np.isfinite(out).all():  # finite input: only by overflow of huge values
                raise AudioError(f"{name}: contains NaN or Inf samples")
        if len(out):
            yield out
    yield from flushed()


def _blocks(name: str, pieces: Iterable[np.ndarray], block_samples: int) -> Iterator[np.ndarray]:
    """Re-cut pieces of any size into blocks of ``block_samples`` (last one shorter)."""
    pending: list[np.ndarray] = []
    pending_samples = 0
    any_samples = False
    for piece in pieces:
        pending.append(piece)
        pending_samples += len(piece)
        if pending_samples < block_samples:
            continue
        buffer = np.concatenate(pending)
        full = len(buffer) // block_samples * block_samples
        for start in range(0, full, block_samples):
            any_samples = True
            yield buffer[start : start + block_samples]
        rest = buffer[full:]
        pending = [rest] if len(rest) else []
        pending_samples = len(rest)
    if pending_samples:
        yield np.concatenate(pending)
    elif not any_samples:
        raise AudioError(f"{name}: no audio samples")


# -- samples ------------------------------------------------------------------------


def _as_numpy(waveform: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(waveform, torch.Tensor):
        tensor = waveform.detach().cpu()
        if tensor.is_complex():
            raise AudioError(f"{name}: unsupported sample type {tensor.dtype}")
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(waveform)


def _to_float(array: np.ndarray, name: str) -> np.ndarray:
    """Samples as floats in [-1, 1): integers scaled by their full scale, floats as they are."""
    dtype = array.dtype
    if dtype.kind == "f":
        return array.astype(np.float32) if dtype.itemsize < 4 else array
    if dtype.kind in "iu":
        half_scale = 2.0 ** (8 * dtype.itemsize - 1)
        # int8/16 (and uint8/16) are exact in float32; wider integers need float64
        as_float = array.astype(np.float32 if dtype.itemsize <= 2 else np.float64)
        if dtype.kind == "u":
            as_float -= half_scale
        as_float /= half_scale
        return as_float
    raise AudioError(f"{name}: unsupported sample type {dtype}")


def _mix(channels_first: np.ndarray) -> np.ndarray:
    """Float32 mono: the single channel unchanged, or the plain mean of all channels.

    Always exactly ``channels_first.mean(axis=0, dtype=np.float64)`` rounded to
    float32, computed without numpy's reduction over the (usually strided)
    channel axis, which cost more than decoding itself.
    """
    channels, samples = channels_first.shape
    if channels == 1:
        return np.ascontiguousarray(channels_first[0], dtype=np.float32)
    if channels == 2 and channels_first.dtype == np.float32:
        # The float64 sum of two float32 rounds to float32 exactly as the float32 sum
        # does, and halving commutes with rounding (subnormal sums are exact in both),
        # so this is the float64 mean bit for bit, unless the float32 sum overflows.
        with np.errstate(over="ignore", invalid="ignore"):
            mono = np.add(channels_first[0], channels_first[1])
        mono += np.float32(0)  # numpy's sum starts from +0: -0 + -0 gives +0 there
        mono *= np.float32(0.5)
        if np.isfinite(mono).all():
            return mono
    elif 2 <= channels < 8:
        # numpy's mean adds fewer than 8 rows one after another too (from 8 on it may
        # pair them up, depending on the memory layout), so this matches it bit for bit.
        total = np.zeros(samples, dtype=np.float64)
        for row in channels_first:
            total += row
        total /= channels
        return total.astype(np.float32)
    return channels_first.mean(axis=0, dtype=np.float64).astype(np.float32)


# -- errors -------------------------------------------------------------------------


def _sndfile_detail(error: Exception) -> str:
    detail = _one_line(getattr(error, "error_string", None) or str(error))
    return detail.removeprefix("Error : ")
