"""From an HTTP request to a decoded waveform, within the service's limits.

The body is read into memory up to ``max_upload_bytes`` (413 beyond). A
multipart form's first file part, or else the raw body, is the audio. It is
decoded by :mod:`auricle.audio` (so every format the CLI reads works, with the
same one-line reasons) from a file in a private temporary folder (mode 0700)
that is removed as soon as decoding ends. No client-supplied path is ever
opened: the client's file name is only a display name, and its extension a
hint for the decoder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator

import numpy as np

from auricle.audio import SAMPLE_RATE, iter_blocks
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


async def read_body(headers, chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body, refusing (413) one that declares or turns out to be larger than ``max_bytes``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, f"upload is over the limit of {max_bytes} bytes")
    return bytes(body)


def display_name(filename: str | None) -> str:
    """A client file name reduced to a printable base name (never used as a path)."""
    if not filename:
        return DEFAULT_NAME
    base = re.split(r"[\\/]", filename)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:200]
    return base or DEFAULT_NAME


async def audio_part(headers, body: bytes, filename: str | None) -> tuple[str, bytes]:
    """(display name, audio bytes) of a multipart form's first file, or of the raw body."""
    content_type = headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        from starlette.formparsers import MultiPartException, MultiPartParser
        from starlette.datastructures import UploadFile

        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(headers, once(), max_files=1, max_fields=16).parse()
        except MultiPartException as error:
            raise RequestError(400, f"malformed multipart form: {error.message}") from None
        try:
            upload = next((value for _, value in form.multi_items() if isinstance(value, UploadFile)), None)
            if upload is None:
                raise RequestError(400, "the multipart form has no file part (send the audio as 'file')")
            data = await upload.read()
            return display_name(upload.filename or filename), data
        finally:
            await form.close()
    return display_name(filename), body


def decode_upload(data: bytes, name: str, max_duration: float) -> np.ndarray:
    """16 kHz mono float32 samples of uploaded bytes; 400 if undecodable, 413 if longer than ``max_duration``."""
    if not data:
        raise RequestError(400, f"{name}: empty upload (0 bytes)")
    suffix = os.path.splitext(name)[1]
    folder = tempfile.mkdtemp(prefix="auricle-serve-")  # private: mode 0700
    path = os.path.join(folder, "audio" + (suffix if _SAFE_SUFFIX.match(suffix) else ""))
    max_samples = int(max_duration * SAMPLE_RATE)
    try:
        with open(path, "wb") as handle:
            handle.write(data)
        blocks: list[np.ndarray] = []
        total = 0
        for block in iter_blocks(path, SAMPLE_RATE):
            total += len(block)
            if total > max_samples:
                raise RequestError(413, f"{name}: audio is longer than the limit of {max_duration:g} s")
            blocks.append(block)
    except AudioError as error:
        raise RequestError(400, str(error).replace(path, name)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return np.concatenate(blocks)
