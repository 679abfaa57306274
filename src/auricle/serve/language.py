"""Endpoints of a server that runs MiDashengLM: ``POST /v1/describe`` and ``POST /v1/ask``.

Generation takes seconds to minutes and the whole model: it runs on one worker thread, one request
at a time, off the event loop (the loop keeps answering health checks and refusing the overflow
with 503). A request whose client went away, or whose time ran out, stops at its next text piece
rather than holding the worker for the rest of its answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from auricle.language import choices
from auricle.language.prompts import DEFAULT_PRESET, PRESETS
from auricle.serve.uploads import RequestError

#: The most tokens one request may ask for per segment (the model's answers are far shorter).
MAX_NEW_TOKENS_LIMIT = 4096
#: Tagging endpoints' answer on this server.
NOT_A_TAGGER = ("this server runs an audio-language model ({name}); use POST /v1/describe, POST /v1/ask or "
                "POST /v1/chat/completions")


def is_language_model(model) -> bool:
    from auricle.language_model import AudioLanguageModel

    return isinstance(model, AudioLanguageModel)


class _Stopped(Exception):
    """Raised inside generation when nobody waits for the answer any more."""


class Generator:
    """One generation at a time on a single worker thread; each call can be abandoned."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auricle-generate")

    async def run(self, work: Callable[[Callable[[str], None]], object],
                  on_text: Callable[[str], None] | None = None):
        """``work(on_text)`` on the worker; cancelling the caller stops it at its next text piece."""
        stopped = threading.Event()

        def pieces(text: str) -> None:
            if stopped.is_set():
                raise _Stopped
            if on_text is not None:
                on_text(text)

        future = self.executor.submit(work, pieces)
        try:
            return await asyncio.wrap_future(future)
        finally:
            stopped.set()
            future.cancel()  # still queued: never starts

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def finish_reason(description, max_new_tokens: int) -> str:
    """"length" when a segment's answer (or a text-only answer) was cut at the token limit, else "stop"."""
    parts = getattr(description, "segments", None)
    parts = [part for part in parts if part.skipped is None] if parts is not None else [description]
    return "length" if any(part.token_count >= max_new_tokens for part in parts) else "stop"


def add_language_routes(app: FastAPI, model, generator: Generator, admitted) -> None:
    """``/v1/describe`` and ``/v1/ask`` over ``model``, with ``admitted``'s upload handling and limits."""

    def max_tokens_query():
        return Query(choices.DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS_LIMIT,
                     description="Longest answer, in tokens, per 30 s segment.")

    timeout = app.state.config.generation_timeout

    async def answer(request: Request, filename: str | None, method, text: str, max_new_tokens: int) -> dict:
        async def work(name: str, waveform) -> dict:
            description = await generator.run(
                lambda on_text: method(waveform, text, max_new_tokens=max_new_tokens, name=name, on_text=on_text))
            return description.to_dict()

        return await admitted(request, filename, work, timeout=timeout)

    async def text_only(question: str, max_new_tokens: int, on_text) -> dict:
        """A question without audio, answered by the decoder alone, within admission and the time limit."""
        from auricle.errors import AuricleError
        from auricle.serve import chat

        with app.state.admission:
            try:
                summary = await asyncio.wait_for(generator.run(
                    lambda pieces: model.complete(question, max_new_tokens, name="the question", on_text=pieces),
                    on_text), timeout)
            except TimeoutError:
                raise RequestError(503, f"request not finished within {timeout:g} s (a busy server)",
                                   {"Retry-After": str(app.state.config.retry_after)}) from None
            except AuricleError as error:  # e.g. a question longer than the context
                raise RequestError(400, str(error)) from None
        return chat.completion(model.name, summary.text, finish_reason(summary, max_new_tokens),
                               summary.prompt_tokens, summary.token_count)

    @app.post("/v1/describe", openapi_extra=app.state.audio_body)
    async def describe(
        request: Request,
        prompt: str = Query(DEFAULT_PRESET, description=f"A preset ({', '.join(PRESETS)}) or any question."),
        max_new_tokens: int = max_tokens_query(),
        filename: str | None = Query(None, description="Name to report for a raw-body upload."),
    ) -> dict:
        """What the model says about one recording (multipart field ``file``, or the raw body): the
        ``auricle describe --format json`` object."""
        if not prompt.strip():
            raise RequestError(400, "the prompt is empty; give a preset or a question")
        return await answer(request, filename, model.describe, prompt, max_new_tokens)

    @app.post("/v1/ask", openapi_extra=app.state.audio_body)
    async def ask(
        request: Request,
        question: str = Query(..., description="A question, taken as it is (never as a preset name)."),
        max_new_tokens: int = max_tokens_query(),
        filename: str | None = Query(None, description="Name to report for a raw-body upload."),
    ) -> dict:
        """The answer to ``question`` about one recording: the ``auricle ask --format json`` object."""
        if not question.strip():
            raise RequestError(400, "the question is empty")
        return await answer(request, filename, model.ask, question, max_new_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """The OpenAI chat API: one ``input_audio`` part and the question as text parts, or text alone
        (see docs/serve.md)."""
        from fastapi.responses import JSONResponse

        from auricle.serve import chat

        config = app.state.config
        try:
            parsed = chat.parse_chat(await chat.read_body(request, config.max_upload_bytes), MAX_NEW_TOKENS_LIMIT)
            pieces: asyncio.Queue[str] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            on_text = (lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)) if parsed.stream else None

            async def receive(folder: str) -> tuple[str, str]:
                return chat.save_audio(parsed, folder)

            async def work(name: str, waveform) -> dict:
                if parsed.question is None:
                    method = lambda on_text: model.describe(waveform, max_new_tokens=parsed.max_new_tokens,  # noqa: E731
                                                            name=name, on_text=on_text)
                else:
                    method = lambda on_text: model.ask(waveform, parsed.question,  # noqa: E731
                                                       max_new_tokens=parsed.max_new_tokens, name=name,
                                                       on_text=on_text)
                description = await generator.run(method, on_text)
                return chat.completion(model.name, description.text, finish_reason(description, parsed.max_new_tokens),
                                       description.prompt_tokens, description.tokens)

            def run():
                if parsed.audio is None:
                    return text_only(parsed.question, parsed.max_new_tokens, on_text)
                return admitted(request, None, work, receive=receive, timeout=timeout)

            if not parsed.stream:
                return await run()
            answer = asyncio.ensure_future(run())
            # The status is settled by the first piece of text: until then a refusal (bad audio, busy) is
            # still an HTTP error, not an event in a 200 stream.
            first = asyncio.ensure_future(pieces.get())
            await asyncio.wait({answer, first}, return_when=asyncio.FIRST_COMPLETED)
            if answer.done() and answer.exception() is not None:
                first.cancel()
                raise answer.exception()
            return StreamingResponse(_events(answer, first, pieces, model.name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        except RequestError as error:
            return JSONResponse(chat.error_body(error), status_code=error.status, headers=error.headers)


async def _events(answer: asyncio.Future, first: asyncio.Future, pieces: asyncio.Queue, model_name: str):
    """The answer as ``chat.completion.chunk`` events: the role, each text piece, the finish reason, [DONE]."""
    from auricle.serve import chat

    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    yield chat.chunk(ident, created, model_name, {"role": "assistant", "content": ""}, None)
    waiting = first
    try:
        while True:
            await asyncio.wait({answer, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield chat.chunk(ident, created, model_name, {"content": waiting.result()}, None)
                waiting = asyncio.ensure_future(pieces.get())
                continue
            while not pieces.empty():  # text that came with the end
                yield chat.chunk(ident, created, model_name, {"content": pieces.get_nowait()}, None)
            error = answer.exception()
            if error is not None:  # after the first piece the status is sent: the failure is the last event
                message = error if isinstance(error, RequestError) else RequestError(500, "internal server error")
                yield f"data: {json.dumps(chat.error_body(message))}\n\n"
            else:
                reason = answer.result()["choices"][0]["finish_reason"]
                yield chat.chunk(ident, created, model_name, {}, reason)
            yield "data: [DONE]\n\n"
            return
    finally:
        waiting.cancel()
        answer.cancel()  # a client that went away stops the generation
