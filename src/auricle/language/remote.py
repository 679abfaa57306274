"""Describe and ask through an OpenAI-compatible server (``--server URL``): vLLM, or ``auricle serve``.

The recording is read, checked and cut into segments here, exactly as a local run does; each segment
goes to ``POST {url}/chat/completions`` as one ``input_audio`` content part (a base64 32-bit float
WAV, so the server decodes the very samples a local run would use) after the question as a text part,
with ``temperature: 0`` (greedy). The summary pass is a text-only chat message.

A server that is busy (503) or rate-limits (429) is asked again after its ``Retry-After`` or an
exponential backoff; a connection that fails is retried the same way. Any other refusal, or retries
used up, is one :class:`RemoteError` line naming the file, and a batch goes on with the next file.
The standard library's ``urllib`` is the client: no extra package.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np

from auricle.errors import AuricleError
from auricle.language import choices
from auricle.language.results import Segment, Summary
from auricle.language_model import LanguageModelBase

#: HTTP statuses that mean "later": asked again with backoff.
RETRY_STATUSES = (429, 503)
#: The longest wait between tries, whatever Retry-After says.
MAX_WAIT_SECONDS = 60.0


class RemoteError(AuricleError):
    """A server's refusal or an unreachable server, as one line."""


def api_url(url: str) -> str:
    """The API base: ``http://host:8000`` becomes ``http://host:8000/v1``; a URL with a path is kept as given."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AuricleError(f"--server {url}: an http:// or https:// URL is required")
    path = parsed.path.rstrip("/")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path or "/v1", "", ""))


def wav_base64(samples: np.ndarray) -> str:
    """16 kHz samples as a base64 32-bit float WAV (lossless: the server decodes the same floats)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, dtype=np.float32), choices.SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteLanguageModel(LanguageModelBase):
    """An audio-language model behind an OpenAI-compatible chat completions endpoint."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 retries: int = 4, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise AuricleError("timeout must be above 0, retries and backoff at least 0")
        self.url = api_url(url)
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.name = model or self._served_model()

    def __repr__(self) -> str:
        return f"RemoteLanguageModel(url={self.url!r}, name={self.name!r})"

    # -- HTTP ------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _call(self, path: str, body: dict | None, name: str) -> dict:
        """The JSON answer of ``GET``/``POST`` ``path``, with retries; one RemoteError line naming ``name``."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        where = f"{self.url}{path}"
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            request = urllib.request.Request(where, data=data, headers=self._headers(),
                                             method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _json(response.read(), name, where)
            except urllib.error.HTTPError as error:
                message = _error_message(error)
                if error.code not in RETRY_STATUSES or attempt == self.retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise RemoteError(f"{name}: {where} answered {error.code}{tries}: {message}") from None
                wait = _retry_after(error.headers.get("Retry-After"), wait)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                if attempt == self.retries:
                    reason = getattr(error, "reason", None) or error
                    raise RemoteError(f"{name}: {where} could not be reached ({reason}) "
                                      f"after {attempt + 1} tries") from None
            self.sleep(min(wait, MAX_WAIT_SECONDS))
        raise AssertionError("unreachable")

    def _served_model(self) -> str:
        """The model the server runs: OpenAI's list (``data[0].id``, as vLLM answers) or auricle's ``model.name``."""
        values = self._call("/models", None, "--server")
        listed = values.get("data") if isinstance(values, dict) else None
        if isinstance(listed, list) and listed and isinstance(listed[0], dict) and listed[0].get("id"):
            return str(listed[0]["id"])
        own = values.get("model") if isinstance(values, dict) else None
        if isinstance(own, dict) and own.get("name"):
            return str(own["name"])
        raise RemoteError(f"{self.url}/models: no model named in the answer; give --server-model")

    def _chat(self, content: list[dict], max_new_tokens: int, name: str) -> tuple[str, int | None, int]:
        """(text, completion tokens, prompt tokens) of one user message."""
        body = {"model": self.name, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_new_tokens, "temperature": 0, "stream": False}
        values = self._call("/chat/completions", body, name)
        try:
            text = values["choices"][0]["message"]["content"] or ""
            usage = values.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RemoteError(f"{name}: {self.url}/chat/completions answered without choices[0].message") from None
        generated = usage.get("completion_tokens")
        return str(text), (int(generated) if isinstance(generated, int) else None), int(usage.get("prompt_tokens") or 0)

    # -- LanguageModelBase ---------------------------------------------------------------
    def _answer(self, piece, name, question, max_new_tokens, timing) -> Iterator[str | Segment]:
        clock = time.perf_counter()
        content = [{"type": "text", "text": question},
                   {"type": "input_audio", "input_audio": {"data": wav_base64(piece), "format": "wav"}}]
        text, generated, prompt_tokens = self._chat(content, max_new_tokens, name)
        timing["generate"] += time.perf_counter() - clock
        if text:
            yield text
        yield Segment(0.0, 0.0, text=text, generated=generated, prompt_tokens=prompt_tokens)

    def _complete(self, question, max_new_tokens, name, on_text) -> Summary:
        text, generated, prompt_tokens = self._chat([{"type": "text", "text": question}], max_new_tokens, name)
        if on_text is not None and text:
            on_text(text)
        return Summary(text, generated=generated, prompt_tokens=prompt_tokens)


def _json(data: bytes, name: str, where: str) -> dict:
    try:
        values = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RemoteError(f"{name}: {where} answered something other than JSON") from None
    if not isinstance(values, dict):
        raise RemoteError(f"{name}: {where} answered JSON that is not an object")
    return values


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's own words: OpenAI's ``error.message``, auricle's ``detail``, else the reason."""
    try:
        values = json.loads(error.read() or b"{}")
    except (ValueError, OSError):
        values = {}
    if isinstance(values, dict):
        inner = values.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner["message"]).split())
        if isinstance(inner, str):
            return inner
        if values.get("detail"):
            return " ".join(str(values["detail"]).split())
    return str(error.reason)


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(0.0, float(header)) if header is not None else default
    except ValueError:
        return default  # an HTTP date: the backoff instead
