"""``/v1/stream``: live tagging over a WebSocket, the service's form of ``auricle listen``.

Protocol (all server messages are JSON text):

1. The client may first send a JSON text message of settings: ``sample_rate``
   (default 16000), ``format`` (``f32le`` default, ``s16le``, ``s32le``, ``u8``),
   ``channels`` (1), and the tagging options ``window`` (10), ``hop`` (1),
   ``top_k``, ``threshold``, ``classes``, ``profile``. The server answers
   ``{"type": "ready", ...}`` with the settings in force.
2. The client sends binary messages of interleaved PCM. After every hop of
   audio the server sends ``{"type": "report", "start", "end", "tags",
   "started", "ended"}`` (:class:`~auricle.inference.live.LiveReport`).
3. The client sends ``{"type": "end"}``: the server reports the tail, ends the
   events still open (``{"type": "end", "ended": [...]}``) and closes.

Bad settings or audio get ``{"type": "error", "detail": ...}`` and close code
1008; over ``max_streams`` sockets, close code 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from auricle.audio import SAMPLE_RATE
from auricle.errors import AuricleError
from auricle.inference.live import LiveTagger, LiveWindow, RollingWindow
from auricle.inference.tagging import ClassSpace
from auricle.listen import PcmDecoder
from auricle.options import LIVE_TAG_OPTIONS
from auricle.serve.batching import DynamicBatcher
from auricle.serve.config import ServeConfig
from auricle.serve.uploads import RequestError

_LIVE = LIVE_TAG_OPTIONS  # the settings' names and defaults are those of `auricle listen`


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
        await _session(websocket, model, batcher, tag_options)
    except WebSocketDisconnect:
        pass
    except _Refused as error:
        await websocket.send_json({"type": "error", "detail": str(error)})
        await websocket.close(code=1008)
    finally:
        app_state.streams -= 1


async def _session(websocket: WebSocket, model, batcher: DynamicBatcher, tag_options: Callable) -> None:
    settings: dict = {}
    message = await websocket.receive()
    if message.get("text") is not None:
        try:
            settings = json.loads(message["text"])
            if not isinstance(settings, dict):
                raise ValueError("settings must be a JSON object")
        except ValueError as error:
            raise _Refused(f"bad settings: {error}") from None
        message = None
    try:
        options = tag_options(model, events=True, window=float(settings.get("window", _LIVE["window"].default)),
                              hop=float(settings.get("hop", _LIVE["hop"].default)),
                              **{key: settings[key] for key in _LIVE if key not in ("window", "hop")
                                 and settings.get(key) is not None})
        decoder = PcmDecoder(int(settings.get("sample_rate", 16000)), str(settings.get("format", "f32le")),
                             int(settings.get("channels", 1)), name="stream")
    except RequestError as error:
        raise _Refused(error.message) from None
    except (AuricleError, ValueError, TypeError) as error:
        raise _Refused(str(error)) from None
    rolling = RollingWindow(options.window)
    tagger = LiveTagger(ClassSpace.build(model.labels, options.classes, options.profile), options)
    await websocket.send_json({"type": "ready", "model": model.name, "window": options.window.window_seconds,
                               "hop": options.window.hop_samples / SAMPLE_RATE, "sample_rate": SAMPLE_RATE})

    async def report(window: LiveWindow) -> None:
        batcher.start()
        probabilities = await asyncio.wrap_future(batcher.submit(window.samples))
        await websocket.send_json({"type": "report", **tagger.report(window, probabilities).to_dict()})

    while True:
        if message is None:
            message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        message = None
        if data is not None:
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
            ended = tagger.close(rolling.total / SAMPLE_RATE)
            await websocket.send_json({"type": "end", "duration": round(rolling.total / SAMPLE_RATE, 3),
                                       "ended": [event.to_dict() for event in ended]})
            await websocket.close()
            return


def _message_type(text: str) -> str | None:
    try:
        message = json.loads(text)
    except ValueError:
        raise _Refused("text messages must be JSON, e.g. {\"type\": \"end\"}") from None
    return message.get("type") if isinstance(message, dict) else None
