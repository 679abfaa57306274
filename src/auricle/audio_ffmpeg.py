"""Decoding through FFmpeg (PyAV): what libsndfile cannot open (M4A/AAC, WebM, MP4 and MKV, WMA, AMR, ...).

Apart from :mod:`auricle.audio` because it is the fallback: imported only when libsndfile refuses a
file, as PyAV itself is. Chunks come out as (native rate, float32 mono), mixed and scaled as
libsndfile's are (``auricle.audio._mix``, ``_to_float``); an MP4/M4A track is cut to the length its
sample table declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from auricle.audio import DECODE_FRAMES, _SNDFILE_MAGIC, AudioInfo, _mix, _one_line, _sndfile_detail, _to_float
from auricle.errors import AudioError

if TYPE_CHECKING:
    from auricle.audio import _Report

def _import_av(name: str, sndfile_error: Exception):
    """The PyAV module, or an AudioError for this file where it is missing (a minimal, exported-files-only install)."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{name}: libsndfile cannot read it ({_sndfile_detail(sndfile_error)}) and PyAV (FFmpeg), "
                         f"which reads more formats, is not installed: pip install av") from None
    return av


def _pyav_open(name: str, head: bytes, sndfile_error: Exception):
    """Open with PyAV; return (container, first audio stream) or raise AudioError."""
    av = _import_av(name, sndfile_error)

    try:
        container = av.open(name, mode="r", metadata_errors="ignore")
    except av.FFmpegError:
        raise _unopenable(name, head, sndfile_error) from None
    streams = container.streams.audio
    if not streams:
        container.close()
        raise AudioError(f"{name}: no audio stream")
    stream = streams[0]
    if stream.codec_context is None:
        container.close()
        raise AudioError(f"{name}: unsupported codec (this FFmpeg build has no decoder for its audio stream)")
    return container, stream


def _pyav_decoded(name: str, head: bytes, sndfile_error: Exception,
                  report: _Report) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the first audio stream at its native rate, mixing channels by their mean.

    FFmpeg frames are small (about 1000 samples); they are gathered into chunks
    of about DECODE_FRAMES samples, then read, converted and mixed at once. A
    chunk ends early where the rate, sample format or channel count changes.
    """
    av = _import_av(name, sndfile_error)

    container, stream = _pyav_open(name, head, sndfile_error)
    with container:
        declared = _mp4_samples(container, stream)
        if declared is not None:
            report.rate, report.declared = declared
        yield from _within_duration(_pyav_chunks(name, av, container, stream), declared)


def _mp4_samples(container, stream) -> tuple[int, int] | None:
    """(rate, samples) an MP4/M4A audio track declares, or None for other containers.

    An AAC encoder pads its last frame to 1024 samples; the decoder trims the
    priming at the start (the edit list's skip), but not that padding. MP4's
    sample table and edit list give the exact length, so decoding is cut there.
    Other containers' durations are estimates (MP3's from the bitrate) and are
    not cut to.
    """
    rate = stream.codec_context.sample_rate
    if not container.format.name.startswith("mov") or not stream.duration or stream.time_base is None or not rate:
        return None
    return rate, round(stream.duration * stream.time_base * rate)


def _within_duration(chunks: Iterator[tuple[float, np.ndarray]],
                     declared: tuple[int, int] | None) -> Iterator[tuple[float, np.ndarray]]:
    """``chunks`` cut after the ``declared`` (rate, samples); unchanged where the rate differs or none is declared."""
    if declared is None:
        yield from chunks
        return
    rate, left = declared
    for chunk_rate, mono in chunks:
        if chunk_rate == rate:
            mono = mono[:left]
            left -= len(mono)
        if len(mono):
            yield chunk_rate, mono


def _pyav_chunks(name: str, av, container, stream) -> Iterator[tuple[float, np.ndarray]]:
    codec = stream.codec_context.name
    pending: list = []
    pending_samples = 0
    kind = (0, "", False, 0)  # (rate, sample format, planar, channels) of the pending frames
    try:
        for frame in container.decode(stream):
            if not frame.samples:
                continue
            sample_format = frame.format
            frame_kind = (frame.sample_rate, sample_format.name, sample_format.is_planar, frame.layout.nb_channels)
            if pending and frame_kind != kind:
                yield kind[0], _frames_mono(name, pending, *kind[1:])
                pending, pending_samples = [], 0
            kind = frame_kind
            pending.append(frame)
            pending_samples += frame.samples
            if pending_samples >= DECODE_FRAMES:
                yield kind[0], _frames_mono(name, pending, *kind[1:])
                pending, pending_samples = [], 0
    except av.error.DecoderNotFoundError:
        raise AudioError(f"{name}: unsupported codec {codec!r}") from None
    except av.FFmpegError as error:
        raise AudioError(f"{name}: corrupt or truncated audio ({_pyav_detail(error)})") from None
    if pending:
        yield kind[0], _frames_mono(name, pending, *kind[1:])


def _frames_mono(name: str, frames: list, sample_format: str, planar: bool, channels: int) -> np.ndarray:
    """PyAV frames, all of one sample format and layout, as one float32 mono chunk.

    Reading the planes straight into one array and converting and mixing it at
    once gives exactly the samples of doing it frame by frame (every step is per
    sample), without ``to_ndarray``'s per-frame cost (more than a quarter of an
    AAC file's decoding time).
    """
    from av.audio.frame import format_dtypes

    if sample_format not in format_dtypes:
        raise AudioError(f"{name}: unsupported sample format {sample_format!r}")
    dtype = np.dtype(format_dtypes[sample_format])
    if planar:
        array = np.empty((channels, sum(frame.samples for frame in frames)), dtype)
        for channel, row in enumerate(array):
            np.concatenate(
                [np.frombuffer(frame.planes[channel], dtype, frame.samples) for frame in frames], out=row
            )
    else:  # packed: one plane of interleaved samples
        interleaved = [np.frombuffer(frame.planes[0], dtype, frame.samples * channels) for frame in frames]
        array = np.concatenate(interleaved).reshape(-1, channels).T
    return _mix(_to_float(array, name))


def _pyav_info(name: str, head: bytes, sndfile_error: Exception) -> AudioInfo:
    av = _import_av(name, sndfile_error)

    container, stream = _pyav_open(name, head, sndfile_error)
    with container:
        context = stream.codec_context
        rate = int(context.sample_rate)
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return AudioInfo(
            path=name,
            sample_rate=rate,
            channels=int(context.channels),
            frames=None if duration is None else round(duration * rate),
            duration=duration,
            format=f"{container.format.name.split(',')[0]}/{context.name}".lower(),
        )


def _pyav_detail(error: Exception) -> str:
    return _one_line(getattr(error, "strerror", None) or str(error))


def _unopenable(name: str, head: bytes, sndfile_error: Exception) -> AudioError:
    """Neither decoder could open the file: damaged known format, or not audio at all."""
    riff = head[:4] in (b"RIFF", b"RIFX", b"RF64")
    if riff and len(head) >= 12 and head[8:12] != b"WAVE":
        return AudioError(f"{name}: not an audio file or unsupported format")
    if head.startswith(_SNDFILE_MAGIC):
        return AudioError(f"{name}: corrupt or truncated audio ({_sndfile_detail(sndfile_error)})")
    return AudioError(f"{name}: not an audio file or unsupported format")
