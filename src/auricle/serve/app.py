"""The FastAPI application: tagging and embedding endpoints, the web page, and the live stream.

:func:`create_app` takes the model and a :class:`ServeConfig`; everything the
app needs lives on it (``app.state``), nothing in module globals. Responses of
``POST /v1/tag`` are exactly one element of ``auricle tag --format json``
(``ClipTags.to_dict()``), computed with the same windows, frontend and
summary, only batched with other requests' windows on the model.

Over 400 lines: :func:`create_app`'s routes share the model, its admission and the config in one
closure (FastAPI's way); the helpers above it serve only those routes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
from collections.abc import Coroutine, Sequence
from contextlib import asynccontextmanager

from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from auricle.audio import SAMPLE_RATE
from auricle.errors import NOT_FINITE, AuricleError
from auricle.inference.events import EventOptions
from auricle.inference.tagging import ClassSpace, TagOptions, summarize
from auricle.inference.windows import window_bounds
from auricle.options import TAG_OPTIONS
from auricle.profiles import PATH_HINT
from auricle.serve.batching import DynamicBatcher
from auricle.serve.config import ServeConfig
from auricle.serve.guard import HostOriginGuard
from auricle.serve.language import NOT_A_TAGGER, Generator, add_language_routes, is_language_model
from auricle.serve.search import add_search_routes
from auricle.serve.uploads import RequestError, SampleBudget, decode_upload, expected_samples, receive_upload

if TYPE_CHECKING:
    from auricle.language_model import AudioLanguageModel
    from auricle.onnx.exported import ExportedModel
    from auricle.model import AudioModel

    ServedModel = AudioModel | ExportedModel | AudioLanguageModel

STATIC = os.path.join(os.path.dirname(__file__), "static")
#: Columns of the spectrogram image returned for the web page (time is max-pooled down to this).
SPECTROGRAM_COLUMNS = 800

_AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                           "required": ["file"]}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class Admission:
    """Counts requests in progress; refuses one more than ``limit`` with 503 and Retry-After."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.pending = 0

    def __enter__(self) -> "Admission":
        if self.pending >= self.limit:
            raise RequestError(503, f"server busy ({self.pending} requests in progress); retry later",
                               {"Retry-After": str(self.retry_after)})
        self.pending += 1
        return self

    def __exit__(self, *exc) -> None:
        self.pending -= 1


def _query(name: str, description: str | None = None):
    """The query parameter of tagging option ``name``: name, default, bounds and choices of the CLI flag."""
    spec = TAG_OPTIONS[name]
    return Query(list(spec.default) if spec.multiple else spec.default, ge=spec.minimum, le=spec.maximum,
                 pattern=f"^({'|'.join(spec.choices)})$" if spec.choices else None,
                 description=description or spec.help)


def tag_options(model: ServedModel, *, top_k=None, threshold=None, classes: Sequence[str] = (), profile=None,
                pool="max", events=False, window=10.0, hop=None, median_filter=1, min_duration=0.0,
                min_gap=0.0) -> TagOptions:
    """The CLI's tagging options from request parameters; 400 on a bad value (never reads a path)."""
    if profile is not None and ("/" in profile or "\\" in profile or profile.lower().endswith(".toml")):
        raise RequestError(400, f"profile {profile!r}: give a bundled profile name, not a path")
    try:
        event_options = EventOptions(median_filter, min_duration, min_gap) if events else False
        return model.tag_options(top_k=top_k, threshold=threshold, classes=classes, profile=profile, pool=pool,
                                 events=event_options, window=window, hop=hop)
    except (AuricleError, ValueError) as error:
        raise RequestError(400, str(error).replace(PATH_HINT, "")) from None  # the service reads no paths


async def until_disconnected(request: Request, work: Coroutine[Any, Any, dict]) -> dict:
    """``work``'s result, or cancel it (and the windows it queued) as soon as the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise RequestError(499, "client disconnected before the result")  # nobody reads it; nothing is logged
    finally:
        task.cancel()
        watcher.cancel()


async def _disconnect(request: Request) -> None:
    # The body is read by now, so the next message the server has for this request is its disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def validation_line(errors: Sequence[dict]) -> str:
    """FastAPI's validation errors as one line: ``top_k: Input should be a valid integer (got 'abc')``."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], (dict, list)) else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


def spectrogram_image(model: ServedModel, waveform: np.ndarray, columns: int = SPECTROGRAM_COLUMNS) -> dict:
    """The log-mel of a whole recording as a small 8-bit image for the web page (row 0 = lowest band)."""
    try:  # an exported file's server imports torch only when a page asks for a spectrogram
        import torch

        from auricle.frontend import FrontendConfig, LogMel
    except ImportError:
        raise RequestError(501, "spectrogram images need PyTorch, which this server's install lacks; "
                                "ask without spectrogram=true") from None

    network = getattr(model, "network", None)
    if network is not None:
        frontend, log_mel = network.frontend, network.spectrogram
    else:  # an exported file: its frontend parameters are in its metadata
        frontend = log_mel = LogMel(FrontendConfig(**json.loads(model.metadata["frontend"])))
    with torch.inference_mode():
        mel = log_mel(torch.from_numpy(waveform)[None])[0].numpy()  # (mels, frames), dB
    frames = mel.shape[1]
    step = max(1, -(-frames // columns))
    pad = (-frames) % step
    if pad:
        mel = np.concatenate([mel, np.repeat(mel[:, -1:], pad, axis=1)], axis=1)
    pooled = mel.reshape(mel.shape[0], -1, step).max(axis=2)
    top = float(pooled.max())
    bottom = max(float(pooled.min()), top - 80.0)  # 80 dB of range is what the eye can use
    scaled = np.clip((pooled - bottom) / max(top - bottom, 1e-6), 0, 1)
    return {
        "mels": int(pooled.shape[0]),
        "columns": int(pooled.shape[1]),
        "seconds_per_column": step * frontend.config.hop_length / SAMPLE_RATE,
        "db_min": round(bottom, 2),
        "db_max": round(top, 2),
        "data": base64.b64encode((scaled * 255).round().astype(np.uint8).tobytes()).decode("ascii"),
    }


def create_app(model: ServedModel, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The service over ``model`` with the limits of ``config``.

    ``model`` is an :class:`~auricle.model.AudioModel` or an
    :class:`~auricle.onnx.exported.ExportedModel` (an exported file: everything but
    ``/v1/embed``, which needs the weights, and without importing torch unless a
    page asks for a spectrogram), or an :class:`~auricle.language_model.AudioLanguageModel`
    (``/v1/describe`` and ``/v1/ask``; the tagging endpoints answer 400).
    """
    language = is_language_model(model)
    generator = Generator() if language else None
    # Unchecked: a batch mixes requests, and one overflowing window must fail only its own request.
    batcher = DynamicBatcher(lambda batch: np.asarray(model.probabilities(batch, finite=False)),
                             max_batch_size=config.max_batch_size, max_wait=config.max_wait)
    admission = Admission(config.max_pending, config.retry_after)
    max_samples = int(config.max_duration * SAMPLE_RATE)
    budget = SampleBudget(int(config.max_decoded_seconds * SAMPLE_RATE))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)
            if generator is not None:
                generator.close()

    app = FastAPI(title="auricle", version="1", lifespan=lifespan,
                  description="Sound tagging, events and embeddings with CED audio transformers.")
    app.state.model = model
    app.state.config = config
    app.state.batcher = batcher
    app.state.admission = admission
    app.state.budget = budget
    app.state.audio_body = _AUDIO_BODY
    app.add_middleware(HostOriginGuard, config=config)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestError)
    async def refuse(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        # A bug's traceback goes to the server's log, never to the client.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer is a list of objects; every refusal here is {"detail": "<one line>"}.
        return JSONResponse({"detail": validation_line(error.errors())}, status_code=422)

    async def admitted(request: Request, filename: str | None, work, receive=None, timeout: float | None = None) -> dict:
        """Run ``work(name, waveform)`` for the request's audio, within admission and time limits.

        ``receive(folder)``, if given, reads the body instead of an upload and returns the
        audio's (name, path) in ``folder``. ``timeout``: seconds once admitted (default
        ``request_timeout``).

        A request slot is taken only once the whole body has arrived (within
        ``body_timeout``): clients that upload slowly, or stall, hold a socket
        and a file, never a slot that good requests need.
        """
        with tempfile.TemporaryDirectory(prefix="auricle-serve-") as folder:  # private: mode 0700
            try:
                name, path = await asyncio.wait_for(
                    receive(folder) if receive is not None else
                    receive_upload(request.headers, request.stream(), filename, folder, config.max_upload_bytes),
                    config.body_timeout)
            except TimeoutError:
                raise RequestError(408, f"upload not finished within {config.body_timeout:g} s",
                                   {"Connection": "close"}) from None
            except ClientDisconnect:
                raise RequestError(400, "client disconnected during the upload") from None
            with admission:
                async def process() -> dict:
                    # A file's header says how long it is: wait for that much of the decoded-audio budget.
                    estimate = await run_in_threadpool(expected_samples, path, max_samples)
                    reservation = await budget.reserve(estimate)
                    try:
                        waveform, truncation = await run_in_threadpool(decode_upload, path, name,
                                                                       config.max_duration, reservation)
                        try:
                            result = await until_disconnected(request, work(name, waveform))
                        except AuricleError as error:  # e.g. an overflowing signal: the library's one line, as a 400
                            raise RequestError(400, str(error)) from None
                        if truncation is not None and "truncated" in result:  # as the file's result says in `tag`
                            result = {**result, "truncated": True,
                                      "declared_duration": round(truncation.declared, 3)}
                        return result
                    finally:
                        reservation.release()

                limit = config.request_timeout if timeout is None else timeout
                try:
                    return await asyncio.wait_for(process(), limit)
                except TimeoutError:
                    raise RequestError(503, f"request not finished within {limit:g} s (a busy "
                                            "server)", {"Retry-After": str(config.retry_after)}) from None

    async def on_model(function):
        batcher.start()
        return await asyncio.wrap_future(batcher.call(function))

    def refuse_a_language_model() -> None:
        if language:
            raise RequestError(400, NOT_A_TAGGER.format(name=model.name))

    if language:
        add_language_routes(app, model, generator, admitted)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/healthz")
    async def health() -> dict:
        """Liveness, with the load: requests in progress, windows waiting, and batching so far."""
        stats = batcher.stats
        return {"status": "ok", "model": model.name, "pending": admission.pending, "queued": batcher.queued,
                "batching": {"model_calls": stats.batches, "windows": stats.windows,
                             "largest_batch": stats.largest_batch}}

    @app.get("/v1/models")
    async def models() -> dict:
        """The model this server runs, the published models, and the bundled event profiles."""
        from auricle.models.registry import available_models
        from auricle.profiles import available_profiles

        if language:
            return {"model": {"name": model.name, "kind": "audio-language", "sample_rate": SAMPLE_RATE,
                              "dtype": str(model.network.dtype).removeprefix("torch.")},
                    "available": [info.to_dict() for info in available_models()], "profiles": []}
        classes = len(model.labels) if model.labels is not None else 0  # None: an encoder without a head
        return {
            "model": {"name": model.name, "classes": classes, "embedding_dim": model.embedding_dim,
                      "sample_rate": SAMPLE_RATE},
            "available": [info.to_dict() for info in available_models()],
            # Profiles name AudioSet classes: a model with its own classes refuses them.
            "profiles": available_profiles() if classes == 527 else [],
        }

    @app.get("/v1/labels")
    async def labels() -> list[dict]:
        """The model's classes: output index, AudioSet MID (empty for custom heads) and name."""
        return model.labels.to_list() if getattr(model, "labels", None) is not None else []

    add_search_routes(app, model, config, admitted, on_model, admission, language)

    @app.post("/v1/tag", openapi_extra=_AUDIO_BODY)
    async def tag(
        request: Request,
        top_k: int | None = _query("top_k"),
        threshold: float | None = _query("threshold"),
        classes: list[str] = _query("classes"),
        profile: str | None = _query("profile", "A bundled event profile, e.g. home (not a file)."),
        pool: str = _query("pool"),
        events: bool = _query("events"),
        window: float = _query("window"),
        hop: float | None = _query("hop"),
        median_filter: int = _query("median_filter"),
        min_duration: float = _query("min_duration"),
        min_gap: float = _query("min_gap"),
        filename: str | None = Query(None, description="Name to report for a raw-body upload."),
        spectrogram: bool = Query(False, description="Add a small log-mel image (for the web page)."),
    ) -> dict:
        """Tag one recording (multipart field ``file``, or the raw body): the ``auricle tag --format json`` object."""
        refuse_a_language_model()
        options = tag_options(model, top_k=top_k, threshold=threshold, classes=classes, profile=profile, pool=pool,
                              events=events, window=window, hop=hop, median_filter=median_filter,
                              min_duration=min_duration, min_gap=min_gap)
        space = ClassSpace.build(model.labels, options.classes, options.profile)

        async def work(name: str, waveform: np.ndarray) -> dict:
            bounds = window_bounds(len(waveform), options.window)
            if len(bounds) > config.max_windows:
                raise RequestError(413, f"{name}: {len(bounds)} windows is over the limit of {config.max_windows}; "
                                        "use a longer hop")
            batcher.start()
            futures = [batcher.submit(waveform[start:end]) for start, end in bounds]
            try:
                rows = await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))
            finally:
                for future in futures:  # a timed-out request leaves no work behind
                    future.cancel()
            probabilities = np.stack(rows)
            if not np.isfinite(probabilities).all():  # as `auricle tag` refuses it, not a 200 with null scores
                raise RequestError(400, f"{name}: {NOT_FINITE}")
            # Events over many windows take a while: off the loop, so other requests are not held up.
            result = (await run_in_threadpool(summarize, name, len(waveform) / SAMPLE_RATE, model.name,
                                              np.array(bounds, dtype=float) / SAMPLE_RATE, probabilities, space,
                                              options)).to_dict()
            if spectrogram:
                result["spectrogram"] = await on_model(lambda: spectrogram_image(model, waveform))
            return result

        return await admitted(request, filename, work)

    @app.post("/v1/embed", openapi_extra=_AUDIO_BODY)
    async def embed(request: Request, filename: str | None = Query(None)) -> dict:
        """Embeddings of one recording: the clip embedding and one per 10.12 s piece, or with a Dasheng
        encoder one per 40 ms frame (``Embeddings.to_dict()``)."""
        refuse_a_language_model()
        if not getattr(model, "can_embed", True):
            raise RequestError(501, f"this server runs an exported ONNX file ({model.name}) without per-piece "
                                    f"embeddings; export it with --piece-embeddings, or serve the weights")

        async def work(name: str, waveform: np.ndarray) -> dict:
            return (await on_model(lambda: model.embed_waveform(waveform, name=name))).to_dict()

        return await admitted(request, filename, work)

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        """Live tagging of PCM sent over the socket; see docs/serve.md for the protocol."""
        from auricle.serve.stream import serve_stream

        if language:  # before accepting: the handshake is refused
            await websocket.close(code=1008, reason=NOT_A_TAGGER.format(name=model.name)[:120])
            return
        await serve_stream(websocket, model, batcher, config, tag_options)

    app.state.streams = 0
    return app


def create_app_from_environment() -> FastAPI:
    """App factory for ``uvicorn --factory`` (several worker processes): settings from ``AURICLE_SERVE``.

    ``AURICLE_SERVE`` is the JSON that ``auricle serve`` writes: model name,
    checkpoint, device, threads, engine, precision and the :class:`ServeConfig` fields.
    """
    from auricle.loading import RunOptions, load

    spec = json.loads(os.environ["AURICLE_SERVE"])
    # `auricle serve` checked engine and precision against an exported file: here they are defaults that yield
    # to it (no torch then). threads also sets torch's process-wide count.
    model = load(spec["model"], spec.get("checkpoint"),
                 RunOptions(spec.get("device", "cpu"), spec.get("engine", "torch"), spec.get("precision", "fp32"),
                            spec.get("threads"), defaulted=frozenset({"engine", "precision"})))
    return create_app(model, ServeConfig(**spec.get("config", {})))
