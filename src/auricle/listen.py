"""Live tagging: audio sources that deliver blocks as they arrive, and the loop that tags them.

Sources yield :class:`Block` s of 16 kHz mono float32 with the monotonic time
each block arrived, so the loop can measure how long a report takes after
the audio that completed its window came in:

- :func:`microphone_blocks`: PortAudio through ``sounddevice`` (optional);
- :func:`pcm_blocks`: raw PCM from a byte stream such as stdin;
- :func:`file_blocks`: any decodable file, paced in real time or as fast as possible.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soxr

from auricle.audio import RESAMPLE_QUALITY, SAMPLE_RATE, iter_blocks
from auricle.errors import AudioError, AuricleError
from auricle.inference.live import LiveReport, LiveTagger, LiveWindow, RollingWindow
from auricle.inference.results import Event
from auricle.inference.tagging import ClassSpace, TagOptions

#: Raw PCM sample formats: numpy dtype and the full scale integer samples are divided by.
PCM_FORMATS: dict[str, tuple[str, float, float]] = {
    "s16le": ("<i2", 32768.0, 0.0),
    "s32le": ("<i4", 2.0**31, 0.0),
    "f32le": ("<f4", 1.0, 0.0),
    "u8": ("u1", 128.0, 128.0),
}
BLOCK_SECONDS = 0.05


@dataclass(frozen=True)
class Block:
    """Samples (16 kHz mono float32) and the ``time.monotonic()`` at which they arrived."""

    samples: np.ndarray
    arrived: float


#: Raw PCM sample rates taken (Hz): telephone-band recorders to studio interfaces.
PCM_RATES = (1000, 768000)
MAX_CHANNELS = 64


class PcmDecoder:
    """Raw interleaved PCM bytes in pieces of any size -> 16 kHz mono float32, resampled as one stream."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, sample_format: str = "s16le", channels: int = 1,
                 name: str = "<stdin>") -> None:
        if sample_format not in PCM_FORMATS:
            raise AudioError(f"{name}: unknown PCM format {sample_format!r} (use {', '.join(PCM_FORMATS)})")
        if not PCM_RATES[0] <= sample_rate <= PCM_RATES[1]:
            # A rate of 1 Hz would make each byte a sixteen-thousandth of a minute of audio to score.
            raise AudioError(f"{name}: sample rate must be {PCM_RATES[0]} to {PCM_RATES[1]} Hz, got {sample_rate}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"{name}: channels must be 1 to {MAX_CHANNELS}, got {channels}")
        dtype, self._scale, self._centre = PCM_FORMATS[sample_format]
        self._dtype = np.dtype(dtype)
        self._frame_bytes = self._dtype.itemsize * channels
        self._channels = channels
        self._rate = sample_rate
        self._pending = b""
        self._name = name
        self._resampler = (
            None if sample_rate == SAMPLE_RATE
            else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        )

    @property
    def partial_frame(self) -> str | None:
        """After the last bytes: why some were ignored (not a whole frame), or None; often a wrong format."""
        if not self._pending:
            return None
        return (f"{self._name}: the last {len(self._pending)} bytes are not a whole frame ({self._frame_bytes} bytes: "
                f"{self._dtype.itemsize} per sample x {self._channels} channels) and were ignored; "
                "are the sample format and channels right?")

    def output_samples(self, nbytes: int) -> int:
        """At most how many 16 kHz samples :meth:`decode` makes of ``nbytes`` more bytes: known before
        decoding, so a caller can refuse a message that would take too much memory."""
        frames = (len(self._pending) + nbytes) // self._frame_bytes
        if self._resampler is None:
            return frames
        return -(-frames * SAMPLE_RATE // self._rate) + 64  # + what the resampler holds back from earlier calls

    def decode(self, data: bytes, last: bool = False) -> np.ndarray:
        data = self._pending + data
        usable = len(data) // self._frame_bytes * self._frame_bytes
        self._pending = data[usable:]
        frames = np.frombuffer(data[:usable], dtype=self._dtype).reshape(-1, self._channels)
        # Bytes of another format read as f32le can be NaN or Inf; the check below says so in one
        # line, so numpy's warnings about arithmetic on them would only add noise before it.
        with np.errstate(invalid="ignore", over="ignore"):
            mono = ((frames.astype(np.float32) - self._centre) / self._scale).mean(axis=1).astype(np.float32)
        if not np.isfinite(mono).all():
            raise AudioError(f"{self._name}: contains NaN or Inf samples")
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono, last=last)


def pcm_blocks(stream: BinaryIO, decoder: PcmDecoder, read_bytes: int = 4096) -> Iterator[Block]:
    """Blocks of a raw PCM byte stream, as soon as bytes are available (``read1``), until EOF."""
    read = getattr(stream, "read1", stream.read)
    while True:
        data = read(read_bytes)
        arrived = time.monotonic()
        samples = decoder.decode(data or b"", last=not data)
        if len(samples):
            yield Block(samples, arrived)
        if not data:
            return


def file_blocks(path: str, realtime: bool = True, block_seconds: float = BLOCK_SECONDS,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
                ) -> Iterator[Block]:
    """A decodable file as blocks; with ``realtime`` each block is delivered when it would have been heard."""
    block_samples = max(1, int(round(block_seconds * SAMPLE_RATE)))
    started = clock()
    position = 0
    for samples in iter_blocks(path, block_samples):
        position += len(samples)
        if realtime:
            delay = started + position / SAMPLE_RATE - clock()
            if delay > 0:
                sleep(delay)
        yield Block(samples, clock())


def microphone_blocks(device: str | int | None = None, block_seconds: float = BLOCK_SECONDS) -> Iterator[Block]:
    """Blocks from a PortAudio input (``sounddevice``), at the device's rate resampled to 16 kHz."""
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the PortAudio library itself is missing
        raise AuricleError(
            f"microphone input needs sounddevice and PortAudio (pip install 'auricle[listen]'): {error}"
        ) from None
    try:
        info = sounddevice.query_devices(device, "input")
    except (ValueError, sounddevice.PortAudioError) as error:
        raise AuricleError(f"microphone {device if device is not None else '(default)'}: {error}") from None
    rate = int(info["default_samplerate"])
    arrivals: queue.Queue[tuple[np.ndarray, float]] = queue.Queue()

    def callback(indata, frames, time_info, status) -> None:  # PortAudio thread
        arrivals.put((indata[:, 0].copy(), time.monotonic()))

    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(
        rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
    )
    with sounddevice.InputStream(device=device, channels=1, samplerate=rate, dtype="float32",
                                 blocksize=max(1, int(rate * block_seconds)), callback=callback):
        while True:
            samples, arrived = arrivals.get()
            if resampler is not None:
                samples = resampler.resample_chunk(samples)
            if len(samples):
                yield Block(samples, arrived)


@dataclass(frozen=True)
class StreamEnd:
    """The last item :func:`listen` yields: seconds of audio received and, if no window was reported, why."""

    duration: float
    nothing_reported: str | None = None


@dataclass(frozen=True)
class TimedReport:
    """A report with its cost: model time, and time from the arrival of the audio that completed the window."""

    report: LiveReport
    compute_seconds: float
    delay_seconds: float


def listen(
    score: Callable[[np.ndarray], np.ndarray],
    blocks: Iterable[Block],
    space: ClassSpace,
    options: TagOptions,
) -> Iterator[TimedReport | Event | StreamEnd]:
    """Tag a live signal: one :class:`TimedReport` per window, an :class:`Event` per event open at the end,
    then a :class:`StreamEnd`.

    ``score`` maps one window's samples to its class probabilities (e.g. a
    model's :meth:`~auricle.model.AudioModel.probabilities` on one row).
    """
    rolling = RollingWindow(options.window)
    tagger = LiveTagger(space, options)

    def scored(window: LiveWindow, arrived: float) -> TimedReport:
        began = time.monotonic()
        probabilities = score(window.samples)
        done = time.monotonic()
        return TimedReport(tagger.report(window, probabilities), done - began, done - arrived)

    arrived = time.monotonic()
    for block in blocks:
        arrived = block.arrived
        for window in rolling.push(block.samples):
            yield scored(window, arrived)
    for window in rolling.finish():
        yield scored(window, arrived)
    yield from tagger.close(rolling.total / SAMPLE_RATE)
    yield StreamEnd(rolling.total / SAMPLE_RATE, rolling.nothing_reported())
