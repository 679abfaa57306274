"""``/v1/stream``: live tagging over a WebSocket, the service's form of ``auricle listen``.

Protocol (all server messages are JSON text):

1. The client may first send a JSON text message of settings: ``sample_rate``
   (default 16000), ``format`` (``f32le`` default, ``s16le``, ``s32le``, ``u8``),
   ``channels`` (1), and the tagging options ``window`` (10), ``hop`` (1),
   ``top_k``, ``threshold``, ``classes`` (a list, or one string with ``;``
   between specs), ``profile``; ``null`` means the default, any other key is
   refused. The server answers ``{"type": "ready", ...}`` with the settings in
   force (the client's audio format, and the model's ``model_sample_rate``).
2. The client sends binary messages of interleaved PCM. After every hop of
   audio the server sends ``{"type": "report", "start", "end", "tags",
   "started", "ended"}`` (:class:`~auricle.inference.live.LiveReport`).
3. The client sends ``{"type": "end"}``: the server reports the tail, ends the
   events still open (``{"type": "end", "duration", "ended": [...]}``, plus
   ``"note"`` saying why when no window was reported: no audio, or under
   0.15 s) and closes. An end as the first message gets that reply at once
   (with no ``ready``).

Bad settings or audio get ``{"type": "error", "detail": ...}`` and close code
1008, and so do a message whose audio, resampled to 16 kHz and added to the
window held, would be over ``max_stream_seconds`` (refused before it is
decoded), a text message over ``MAX_TEXT_MESSAGE`` characters, and a socket
silent for ``stream_idle_timeout``; over ``max_streams`` sockets, close code 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace

from starlette.websockets import WebSocket, WebSocketDisconnect

from auricle.audio import SAMPLE_RATE
from auricle.errors import AuricleError
from auricle.inference.live import LiveTagger, LiveWindow, RollingWindow
from auricle.inference.results import Event
from auricle.inference.tagging import ClassSpace
from auricle.inference.windows import WindowConfig
from auricle.labels import split_specs
from auricle.listen import MAX_CHANNELS, PCM_FORMATS, PCM_RATES, PcmDecoder
from auricle.options import LIVE_TAG_OPTIONS, OptionSpec
from auricle.serve.batching import DynamicBatcher
from auricle.serve.config import MAX_STREAM_WINDOW, ServeConfig
from auricle.serve.uploads import RequestError

#: The settings' names and defaults are those of `auricle listen`, the window bounded for a shared service.
_LIVE = {**LIVE_TAG_OPTIONS, "window": replace(LIVE_TAG_OPTIONS["window"], maximum=MAX_STREAM_WINDOW)}
#: The audio format settings, their bounds and defaults (those of the web page's microphone: float32 mono).
_FORMAT_SPECS = {
    "sample_rate": OptionSpec("sample_rate", int, SAMPLE_RATE, minimum=PCM_RATES[0], maximum=PCM_RATES[1]),
    "format": OptionSpec("format", str, "f32le", choices=tuple(PCM_FORMATS)),
    "channels": OptionSpec("channels", int, 1, minimum=1, maximum=MAX_CHANNELS),
}
_FORMAT = {name: spec.default for name, spec in _FORMAT_SPECS.items()}
#: Longest text message (settings, end) a stream takes.
MAX_TEXT_MESSAGE = 65536


class _Refused(Exception):
    pass


async def serve_stream(websocket: WebSocket, model, batcher: DynamicBatcher, config: ServeConfig,
                       tag_options: Callable) -> None:
    app_state = websocket.app.state
    await websocket.accept()
    if app_state.streams >= config.max_streams:
        await websocket.send_json({"type": "error", "detail": f"too many streams (limit {config.max_streams})"})
        await websocket.close(code=1013)
        return
    app_state.streams += 1
    try:
        await _session(websocket, model, batcher, config, tag_options)
    except WebSocketDisconnect:
        pass
    except _Refused as error:
        await websocket.send_json({"type": "error", "detail": str(error)})
        await websocket.close(code=1008)
    finally:
        app_state.streams -= 1


async def receive(websocket: WebSocket, config: ServeConfig) -> dict:
    """The next message; a socket silent for ``stream_idle_timeout`` is refused (it would hold a stream slot)."""
    try:
        return await asyncio.wait_for(websocket.receive(), config.stream_idle_timeout)
    except TimeoutError:
        raise _Refused(f"stream: no message in {config.stream_idle_timeout:g} s") from None


async def _session(websocket: WebSocket, model, batcher: DynamicBatcher, config: ServeConfig,
                   tag_options: Callable) -> None:
    settings: dict = {}
    message = await receive(websocket, config)
    if message.get("text") is not None:
        settings = _settings(message["text"])
        if settings.pop("type", "settings") == "end":
            # A client that stopped before it started; taking this for settings left both sides waiting.
            await _send_end(websocket, RollingWindow(WindowConfig()), ())  # an empty stream's end
            return
        message = None
    settings = {key: value for key, value in settings.items() if value is not None}  # null: the default
    try:
        options = tag_options(model, events=True, window=float(settings.get("window", _LIVE["window"].default)),
                              hop=float(settings.get("hop", _LIVE["hop"].default)),
                              **{key: _spec_list(value) if key == "classes" else value
                                 for key, value in settings.items() if key in _LIVE and key not in ("window", "hop")})
        audio = {key: settings.get(key, default) for key, default in _FORMAT.items()}
        decoder = PcmDecoder(int(audio["sample_rate"]), str(audio["format"]), int(audio["channels"]), name="stream")
    except RequestError as error:
        raise _Refused(error.message) from None
    except (AuricleError, ValueError, TypeError) as error:
        raise _Refused(str(error)) from None
    rolling = RollingWindow(options.window)
    tagger = LiveTagger(ClassSpace.build(model.labels, options.classes, options.profile), options)
    await websocket.send_json({
        "type": "ready", "model": model.name, "model_sample_rate": SAMPLE_RATE,
        "sample_rate": int(audio["sample_rate"]), "format": str(audio["format"]), "channels": int(audio["channels"]),
        "window": options.window.window_seconds, "hop": options.window.hop_samples / SAMPLE_RATE,
        "top_k": options.top_k, "threshold": options.threshold, "classes": split_specs(options.classes),
        "profile": options.profile.name if options.profile is not None else None,
    })

    async def report(window: LiveWindow) -> None:
        batcher.start()
        probabilities = await asyncio.wrap_future(batcher.submit(window.samples))
        try:
            reported = tagger.report(window, probabilities)
        except AuricleError as error:  # an overflowing signal: NaN scores, which are not even JSON
            raise _Refused(f"stream: {error}") from None
        await websocket.send_json({"type": "report", **reported.to_dict()})

    limit = int(config.max_stream_seconds * SAMPLE_RATE)
    while True:
        if message is None:
            message = await receive(websocket, config)
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        message = None
        if data is not None:
            # Counted in 16 kHz float samples before decoding: 16 MiB of 1 kHz 8-bit audio is 1 GiB once resampled.
            held = rolling.buffered + decoder.output_samples(len(data))
            if held > limit:
                raise _Refused(f"stream: a message of {len(data)} bytes is {held / SAMPLE_RATE:.1f} s of audio with "
                               f"the window held, over the limit of {config.max_stream_seconds:g} s; send smaller "
                               "messages")
            try:
                samples = decoder.decode(data)
            except AuricleError as error:
                raise _Refused(str(error)) from None
            for window in rolling.push(samples):
                await report(window)
        elif text is not None and _message_type(text) == "end":
            for window in rolling.push(decoder.decode(b"", last=True)):
                await report(window)
            for window in rolling.finish():
                await report(window)
            await _send_end(websocket, rolling, tagger.close(rolling.total / SAMPLE_RATE), decoder.partial_frame)
            return


async def _send_end(websocket: WebSocket, rolling: RollingWindow, ended: Sequence[Event],
                    warning: str | None = None) -> None:
    """The end message (with a ``note`` when no window was reported, a ``warning`` when bytes were ignored),
    then close."""
    reply = {"type": "end", "duration": round(rolling.total / SAMPLE_RATE, 3),
             "ended": [event.to_dict() for event in ended]}
    if (note := rolling.nothing_reported()) is not None:
        reply["note"] = note
    if warning is not None:
        reply["warning"] = warning
    await websocket.send_json(reply)
    await websocket.close()


def _settings(text: str) -> dict:
    """The settings message as a dict; refuses what is not a JSON object of known keys."""
    _short(text)
    try:
        settings = json.loads(text)
    except ValueError as error:
        raise _Refused(f"bad settings: {error}") from None
    if not isinstance(settings, dict):
        raise _Refused("bad settings: settings must be a JSON object")
    kind = settings.get("type", "settings")
    if kind not in ("settings", "end"):
        raise _Refused(f"bad settings: unknown message type {kind!r} (send settings, audio or {{\"type\": \"end\"}})")
    # A misspelt key (``treshold``) would otherwise leave its default silently in force.
    known = [*_FORMAT, *_LIVE]
    for key in settings:
        if key != "type" and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise _Refused(f"bad settings: unknown setting {key!r} ({hint})")
    for key, value in settings.items():
        spec = _FORMAT_SPECS.get(key) or _LIVE.get(key)
        if spec is not None and value is not None and key != "classes":  # classes: _spec_list
            try:
                settings[key] = spec.check(value)
            except ValueError as error:
                raise _Refused(f"bad settings: {error}") from None
    return settings


def _spec_list(classes: object) -> list[str]:
    """``classes`` as a list of specs: a string is one spec list with ``;`` between specs, as the REST
    ``classes`` parameter and ``listen -c`` take it. Other JSON values are refused here: ``tuple()`` in
    ``tag_options`` would take a string per character (before it accepted strings) and an object as its keys."""
    if isinstance(classes, str):
        return [classes]
    if isinstance(classes, list) and all(isinstance(spec, str) for spec in classes):
        return classes
    raise _Refused(f"bad settings: classes must be a string or a list of strings, got {json.dumps(classes)}")


def _short(text: str) -> None:
    # Settings and end messages are a few hundred bytes; parsing megabytes of JSON costs many times that.
    if len(text) > MAX_TEXT_MESSAGE:
        raise _Refused(f"text messages must be under {MAX_TEXT_MESSAGE} characters (settings or end), got {len(text)}")


def _message_type(text: str) -> str | None:
    _short(text)
    try:
        message = json.loads(text)
    except ValueError:
        raise _Refused("text messages must be JSON, e.g. {\"type\": \"end\"}") from None
    return message.get("type") if isinstance(message, dict) else None
