"""From an HTTP request to a decoded waveform, within the service's limits.

The body is read up to ``max_upload_bytes`` (413 beyond) into a file in a
private temporary folder (mode 0700), never whole into memory: a multipart
form's first file part, or else the raw body, is the audio. It is decoded by
:mod:`auricle.audio` (so every format the CLI reads works, with the same
one-line reasons) within a :class:`SampleBudget` of decoded audio shared by all
requests, and the folder is removed when the request ends. No client-supplied path is ever
opened: the client's file name is only a display name, and its extension a
hint for the decoder.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator

import numpy as np

from auricle.audio import SAMPLE_RATE, Truncation, audio_info, iter_blocks
from auricle.errors import AudioError

DEFAULT_NAME = "upload"
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


class RequestError(Exception):
    """A request the service refuses: HTTP status, one-line reason, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def limited(headers, chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refusing (413) one that declares or turns out to be larger than ``max_bytes``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise RequestError(413, f"upload is over the limit of {max_bytes} bytes")
        yield chunk


def display_name(filename: str | None) -> str:
    """A client file name reduced to a printable base name (never used as a path)."""
    if not filename:
        return DEFAULT_NAME
    base = re.split(r"[\\/]", filename)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:200]
    return base or DEFAULT_NAME


async def receive_upload(headers, chunks: AsyncIterator[bytes], filename: str | None, folder: str,
                         max_bytes: int) -> tuple[str, str]:
    """(display name, path in ``folder``) of the audio: a multipart form's first file, or the raw body.

    Nothing is held whole in memory: a raw body is written to the file as it
    arrives, a form's file part is spooled (to disk past 1 MiB) by the parser and
    then copied there.
    """
    body = limited(headers, chunks, max_bytes)
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        name = display_name(filename)
        path = _audio_path(folder, name)
        with open(path, "wb") as handle:
            async for chunk in body:
                handle.write(chunk)
        return name, path
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    try:
        form = await MultiPartParser(headers, body, max_files=1, max_fields=16).parse()
    except MultiPartException as error:
        raise RequestError(400, f"malformed multipart form: {error.message}") from None
    try:
        upload = next((value for _, value in form.multi_items() if isinstance(value, UploadFile)), None)
        if upload is None:
            raise RequestError(400, "the multipart form has no file part (send the audio as 'file')")
        name = display_name(upload.filename or filename)
        path = _audio_path(folder, name)
        await upload.seek(0)
        with open(path, "wb") as handle:
            while chunk := await upload.read(1024 * 1024):
                handle.write(chunk)
        return name, path
    finally:
        await form.close()


def _audio_path(folder: str, name: str) -> str:
    suffix = os.path.splitext(name)[1]  # a hint for the decoder, if it is a plain extension
    return os.path.join(folder, "audio" + (suffix if _SAFE_SUFFIX.match(suffix) else ""))


class SampleBudget:
    """Decoded samples (16 kHz float32) all requests may hold at once; a request waits for its share.

    A request reserves what its file's header says it will decode (or the most
    a request may decode, when the header does not say) before decoding, so no
    request holds part of the budget while it waits for more; a file longer than
    its header said takes the rest as it decodes, if there is room (else 503).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()  # grow() runs on a decoding thread
        self._waiters: list[asyncio.Future] = []

    async def reserve(self, samples: int) -> "Reservation":
        samples = min(samples, self.capacity)
        while True:
            with self._lock:
                if self.used + samples <= self.capacity:
                    self.used += samples
                    return Reservation(self, samples)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    def grow(self, samples: int) -> bool:
        with self._lock:
            if self.used + samples > self.capacity:
                return False
            self.used += samples
            return True

    def release(self, samples: int) -> None:
        with self._lock:
            self.used -= samples
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class Reservation:
    """One request's share of a :class:`SampleBudget`, given back by :meth:`release`."""

    def __init__(self, budget: SampleBudget, samples: int) -> None:
        self.budget = budget
        self.samples = samples

    def cover(self, samples: int) -> None:
        """Make the share at least ``samples``; 503 if the budget has no room now."""
        if samples > self.samples:
            extra = max(samples - self.samples, SAMPLE_RATE * 10)  # in steps, not per block
            if not self.budget.grow(extra):
                raise RequestError(503, "server busy (decoded audio at its limit); retry later")
            self.samples += extra

    def release(self) -> None:
        self.budget.release(self.samples)
        self.samples = 0


def expected_samples(path: str, max_samples: int) -> int:
    """What decoding ``path`` will hold, from its header; ``max_samples`` when the header does not say."""
    try:
        duration = audio_info(path).duration
    except AudioError:
        duration = None  # decoding says why, in its own words
    if duration is None or not duration >= 0:
        return max_samples
    return min(max_samples, int(duration * SAMPLE_RATE) + SAMPLE_RATE)  # + resampling's rounding


def decode_upload(path: str, name: str, max_duration: float,
                  reservation: Reservation | None = None) -> tuple[np.ndarray, Truncation | None]:
    """16 kHz mono float32 samples of an uploaded file, and whether it was cut short of its header's length
    (decoded as far as it goes, as ``auricle tag`` does); 400 if undecodable, 413 if longer than ``max_duration``."""
    if os.path.getsize(path) == 0:
        raise RequestError(400, f"{name}: empty upload (0 bytes)")
    max_samples = int(max_duration * SAMPLE_RATE)
    try:
        blocks: list[np.ndarray] = []
        total = 0
        stream = iter_blocks(path, SAMPLE_RATE)
        for block in stream:
            total += len(block)
            if total > max_samples:
                raise RequestError(413, f"{name}: audio is longer than the limit of {max_duration:g} s")
            if reservation is not None:
                reservation.cover(total)
            blocks.append(block)
    except AudioError as error:
        raise RequestError(400, str(error).replace(path, name)) from None
    return np.concatenate(blocks), stream.truncation
