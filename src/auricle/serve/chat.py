"""``POST /v1/chat/completions``: the OpenAI chat API over MiDashengLM, for OpenAI clients.

One recording per request, as an ``input_audio`` content part (base64 and a format); the text
parts of the user's messages are the question (none: the caption preset). A request with text and
no audio is answered by the decoder alone (as ``auricle describe --server --summary`` asks for its
summary); ``usage`` counts the prompt's tokens, audio tokens included, and the answer's. The answer is greedy
(``temperature`` and the like are accepted and ignored). Refusals have OpenAI's error shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import uuid
from dataclasses import dataclass

from auricle.language import choices
from auricle.serve.uploads import RequestError, limited

#: Suffixes an ``input_audio`` format may name (the decoder tells the content, the suffix only helps it).
AUDIO_FORMAT = re.compile(r"^[a-z0-9]{1,8}$")


@dataclass(frozen=True)
class ChatRequest:
    """What a chat completion asks: the question (None: describe), the audio (None: text only), the token
    limit, streaming."""

    question: str | None
    audio: bytes | None
    audio_format: str
    max_new_tokens: int
    stream: bool


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def parse_chat(body: bytes, max_new_tokens_limit: int) -> ChatRequest:
    """The request's fields, or a 400 naming the first problem."""
    try:
        values = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("the body is not JSON") from None
    if not isinstance(values, dict):
        raise _bad("the body must be a JSON object")
    messages = values.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list is required")
    texts: list[str] = []
    audio: list[tuple[bytes, str]] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{number}]: an object with a role is required")
        if message["role"] != "user":
            continue  # the model's prompt has its own system turn; earlier answers are not replayed
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise _bad(f"messages[{number}].content: a string or a list of parts is required")
        for index, part in enumerate(parts):
            where = f"messages[{number}].content[{index}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
                audio.append(_audio(part["input_audio"], where))
            else:
                raise _bad(f"{where}: a text or input_audio part is required")
    question = "\n".join(text for text in texts if text.strip()) or None
    if len(audio) > 1 or (not audio and question is None):
        raise _bad(f"one input_audio part, or a question without audio, is required (got {len(audio)} "
                   f"input_audio parts)")
    limit = values.get("max_completion_tokens", values.get("max_tokens"))
    if limit is None:
        limit = choices.DEFAULT_MAX_NEW_TOKENS
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_new_tokens_limit:
        raise _bad(f"max_tokens: an integer from 1 to {max_new_tokens_limit} is required, got {limit!r}")
    stream = values.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"stream: true or false, got {stream!r}")
    data, audio_format = audio[0] if audio else (None, "wav")
    return ChatRequest(question, data, audio_format, limit, stream)


def _audio(part: dict, where: str) -> tuple[bytes, str]:
    audio_format = part.get("format", "wav")
    if not isinstance(audio_format, str) or not AUDIO_FORMAT.match(audio_format.lower()):
        raise _bad(f"{where}.input_audio.format: a format such as wav or mp3 is required, got {audio_format!r}")
    try:
        data = base64.b64decode(part.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _bad(f"{where}.input_audio.data: not base64") from None
    if not data:
        raise _bad(f"{where}.input_audio.data: empty")
    return data, audio_format.lower()


async def read_body(request, max_bytes: int) -> bytes:
    """The whole body, 413 beyond ``max_bytes`` (base64 audio is 4/3 of the file)."""
    return b"".join([chunk async for chunk in limited(request.headers, request.stream(), max_bytes)])


def save_audio(chat: ChatRequest, folder: str) -> tuple[str, str]:
    """The audio as a file in ``folder`` (private), as an upload would be: (name, path)."""
    name = f"input_audio.{chat.audio_format}"
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(chat.audio)
    return name, path


def error_body(error: RequestError) -> dict:
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return {"error": {"message": error.message, "type": kind, "param": None, "code": str(error.status)}}


def completion(model_name: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def chunk(ident: str, created: int, model_name: str, delta: dict, finish_reason: str | None) -> str:
    """One server-sent event of a streamed answer."""
    values = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model_name,
              "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    return f"data: {json.dumps(values)}\n\n"
