"""The HTTP API through FastAPI's test client: results, parameters, limits and the stream socket."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

import auricle  # noqa: E402
from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from serve_support import LOCAL, SR, STREAM, burst_checkpoint, burst_signal, noise, tiny_random_checkpoint, write_wav  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return auricle.load_model(checkpoint=tiny_random_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def burst_model(tmp_path_factory):
    return auricle.load_model(checkpoint=burst_checkpoint(tmp_path_factory.mktemp("burst") / "burst.safetensors"))


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "street scene.wav", burst_signal(23.5, 4.0, 6.0))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point the temp folder at an empty one, to check that uploads leave nothing behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def same_as_cli(response_json: dict, expected) -> None:
    expected = expected.to_dict()
    assert response_json.pop("file") == os.path.basename(expected.pop("file"))
    # The service computes on its own worker thread, whose torch thread count may differ from the
    # test's; matrix products then round differently in the last digits, so floats compare closely.
    assert response_json == approx_tree(expected)


def approx_tree(value):
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-5)
    if isinstance(value, dict):
        return {key: approx_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [approx_tree(item) for item in value]
    return value


# -- results -----------------------------------------------------------------------


def test_tag_multipart_equals_the_library_and_cli_schema(client, model, long_wav, private_tmp):
    with open(long_wav, "rb") as handle:
        response = client.post("/v1/tag", files={"file": (long_wav.name, handle, "audio/wav")},
                               params={"events": "true", "hop": 5, "top_k": 3})
    assert response.status_code == 200, response.text
    same_as_cli(response.json(), model.tag(str(long_wav), events=True, hop=5, top_k=3))
    assert list(private_tmp.iterdir()) == []


def test_tag_answer_is_an_element_of_auricle_tag_format_json(client, model, long_wav, tmp_path):
    from click.testing import CliRunner

    from auricle.cli import cli

    checkpoint = tiny_random_checkpoint(tmp_path / "same.safetensors")  # the served weights (same seed)
    result = CliRunner().invoke(cli, ["tag", str(long_wav), "--checkpoint", str(checkpoint), "--format", "json",
                                      "--events", "--hop", "4", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    (expected,) = json.loads(result.stdout)
    response = client.post("/v1/tag?events=true&hop=4&top_k=2", files={"file": (long_wav.name, long_wav.read_bytes())})
    body = response.json()
    assert body.pop("file") == long_wav.name and expected.pop("file") == str(long_wav)
    # The CLI splits batches over its streams, the service's model may run another layout: floats compare closely.
    assert body == approx_tree(expected)


def test_tag_raw_body_with_classes_threshold_pool(client, model, long_wav):
    params = [("classes", "Animal"), ("classes", "Speech;Music"), ("threshold", "0.2"), ("pool", "mean"),
              ("filename", "../../etc/clip.wav"), ("window", "4"), ("hop", "2")]
    response = client.post("/v1/tag", content=long_wav.read_bytes(), params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["file"] == "clip.wav"  # a client name is a display name, never a path
    expected = model.tag(str(long_wav), classes=["Animal", "Speech;Music"], threshold=0.2, pool="mean",
                         window=4, hop=2)
    body["file"] = long_wav.name
    same_as_cli(body, expected)
    assert len(body["windows"]) == 11


def test_tag_with_a_profile_and_the_spectrogram_for_the_page(client, model, long_wav):
    response = client.post("/v1/tag?profile=home&events=true&spectrogram=true", content=long_wav.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    spectrogram = body.pop("spectrogram")
    same_as_cli(body | {"file": long_wav.name}, model.tag(str(long_wav), profile="home", events=True))
    assert spectrogram["mels"] == 64 and 0 < spectrogram["columns"] <= 800
    import base64

    image = np.frombuffer(base64.b64decode(spectrogram["data"]), np.uint8)
    assert image.size == 64 * spectrogram["columns"] and image.max() == 255
    assert spectrogram["columns"] * spectrogram["seconds_per_column"] == pytest.approx(23.5, abs=0.1)


def test_a_threshold_beside_a_profile_is_a_bad_request(client, long_wav):
    response = client.post("/v1/tag?profile=home&threshold=0.2", content=long_wav.read_bytes())
    assert response.status_code == 400
    assert "threshold and profile do not combine" in response.json()["detail"]


def test_embed_equals_the_library(client, model, long_wav):
    response = client.post("/v1/embed", files={"file": ("x.wav", long_wav.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.embed(str(long_wav)).to_dict()
    assert body["file"] == "x.wav" and body["dim"] == 64 and len(body["windows"]) == 3
    np.testing.assert_allclose(body["clip"], expected["clip"], rtol=1e-6, atol=1e-7)


def test_info_endpoints_page_and_openapi(client, model):
    health = client.get("/healthz").json()
    assert health.pop("batching").keys() == {"model_calls", "windows", "largest_batch"}
    assert health == {"status": "ok", "model": "test-tiny", "pending": 0, "queued": 0}
    info = client.get("/v1/models").json()
    assert info["model"] == {"name": "test-tiny", "classes": 527, "embedding_dim": 64, "sample_rate": 16000}
    assert "ced-mini" in [m["name"] for m in info["available"]] and "home" in info["profiles"]
    labels = client.get("/v1/labels").json()
    assert len(labels) == 527 and labels[0] == {"index": 0, "mid": "/m/09x0r", "name": "Speech"}
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    # Everything the page loads is local.
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text
    # The icon is in the page: a browser otherwise asks for /favicon.ico on every load (a 404).
    assert '<link rel="icon" href="data:image/svg+xml,' in page.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/tag", "/v1/embed", "/v1/models", "/v1/labels", "/healthz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/tag"]["post"]["requestBody"]["content"]


# -- bad requests ------------------------------------------------------------------


def test_bad_audio_is_400_with_the_decoders_reason(client, private_tmp):
    response = client.post("/v1/tag", files={"file": ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("broken.wav: ") and "\n" not in detail and str(private_tmp) not in detail
    assert client.post("/v1/tag", content=b"").json()["detail"] == "upload: empty upload (0 bytes)"
    response = client.post("/v1/tag", files={"other": (None, "text only")})
    assert response.status_code == 400 and "no file part" in response.json()["detail"]
    assert list(private_tmp.iterdir()) == []


def test_bad_parameters_are_400_or_422(client, long_wav):
    data = long_wav.read_bytes()
    response = client.post("/v1/tag?classes=Dgo", content=data)
    assert response.status_code == 400 and "Dgo" in response.json()["detail"]
    response = client.post("/v1/tag?profile=/etc/passwd", content=data)
    assert response.status_code == 400 and "bundled profile name" in response.json()["detail"]
    assert client.post("/v1/tag?window=2&hop=3", content=data).status_code == 400
    response = client.post("/v1/tag?window=inf&hop=1", content=data)  # was a 500 (an overflow in the windowing)
    assert response.status_code == 422  # the declared range ends at an hour (tests/test_options.py)
    assert response.json()["detail"] == "window: Input should be less than or equal to 3600 (got 'inf')"
    response = client.post("/v1/tag?profile=nope", content=data)
    assert response.status_code == 400 and "unknown profile 'nope'" in response.json()["detail"]
    assert ".toml" not in response.json()["detail"]  # the service reads no paths: do not offer one
    # Out-of-range and malformed values: 422, with the same one-line detail as every other refusal.
    for query, detail in [("top_k=0", "top_k: Input should be greater than or equal to 1 (got '0')"),
                          ("top_k=abc", "top_k: Input should be a valid integer, unable to parse string as an "
                                        "integer (got 'abc')"),
                          ("pool=median", "pool: String should match pattern '^(max|mean)$' (got 'median')")]:
        response = client.post(f"/v1/tag?{query}", content=data)
        assert response.status_code == 422 and response.json() == {"detail": detail}, response.json()
    # One request must not hold the server: a median filter is bounded (it once took 25 s and 7 GB, or a 500).
    for length in ("15001", "99999999999999999999"):
        response = client.post(f"/v1/tag?events=true&median_filter={length}", content=data)
        assert response.status_code == 422 and "less than or equal to 101" in response.json()["detail"]


def loud_wav(seconds: float = 1.0) -> bytes:
    """Finite samples far beyond full scale: the spectrogram overflows and the model's output is NaN."""
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.full(int(seconds * SR), 1e30, np.float32), SR, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_an_overflowing_signal_is_a_400_not_null_scores_or_a_500(client, long_wav):
    for path in ("/v1/tag", "/v1/tag?spectrogram=true", "/v1/embed"):
        response = client.post(path, files={"file": ("loud.wav", loud_wav())})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["detail"].startswith("loud.wav: the model's output is not finite")


def post_together(model, config: ServeConfig, bodies: list[bytes]):
    """POST /v1/tag with each body at once, from threads: the responses in order, and the batcher's stats."""
    with TestClient(create_app(model, config), base_url=LOCAL) as client:
        responses: dict[int, object] = {}
        def post(i: int, body: bytes) -> None:
            responses[i] = client.post("/v1/tag", content=body)

        threads = [threading.Thread(target=post, args=(i, body)) for i, body in enumerate(bodies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return [responses[i] for i in range(len(bodies))], client.app.state.batcher.stats


def test_an_overflowing_request_fails_alone_in_a_shared_batch(model):
    """Windows of concurrent requests share model calls: one request's NaN must not fail the others."""
    config = ServeConfig(max_wait=1.0, max_batch_size=4)  # four 10 s windows fill a batch
    bodies = [loud_wav(10.0), write_wav_bytes(noise(10.0, 0.1, 1)), loud_wav(10.0), write_wav_bytes(noise(10.0, 0.1, 2))]
    responses, stats = post_together(model, config, bodies)
    assert [response.status_code for response in responses] == [400, 200, 400, 200]
    assert stats.windows == 4 and stats.largest_batch > 2  # they did share calls


# -- limits ------------------------------------------------------------------------


def test_upload_size_limit_is_413_declared_or_streamed(model):
    config = ServeConfig(max_upload_bytes=10_000)
    with TestClient(create_app(model, config), base_url=LOCAL) as client:
        response = client.post("/v1/tag", content=b"\0" * 10_001)
        assert response.status_code == 413 and "10001 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: counted while reading
            for _ in range(20):
                yield b"\0" * 1000

        response = client.post("/v1/tag", content=chunks())
        assert response.status_code == 413 and "over the limit of 10000 bytes" in response.json()["detail"]


def test_duration_and_window_limits_are_413(model, tmp_path, private_tmp):
    path = write_wav(tmp_path / "long.wav", noise(3.0, 0.1, 0))
    with TestClient(create_app(model, ServeConfig(max_duration=2.5, max_windows=5)), base_url=LOCAL) as client:
        response = client.post("/v1/tag", content=path.read_bytes(), params={"filename": "long.wav"})
        assert response.status_code == 413
        assert response.json()["detail"] == "long.wav: audio is longer than the limit of 2.5 s"
        short = write_wav(tmp_path / "short.wav", noise(2.0, 0.1, 0)).read_bytes()
        response = client.post("/v1/tag?window=1&hop=0.1", content=short)
        assert response.status_code == 413 and "11 windows" in response.json()["detail"]
        assert client.post("/v1/tag?window=1&hop=0.5", content=short).status_code == 200
        assert client.post("/v1/embed", content=path.read_bytes()).status_code == 413
    assert list(private_tmp.iterdir()) == []


class Gate:
    """Makes the model wait until released, to hold requests in progress."""

    def __init__(self, model, monkeypatch):
        self.open = threading.Event()
        original = model.probabilities

        def probabilities(waveforms, **options):
            self.open.wait(10)
            return original(waveforms, **options)

        monkeypatch.setattr(model, "probabilities", probabilities)


def test_full_queue_is_503_with_retry_after(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    config = ServeConfig(max_pending=1, retry_after=7)
    data = write_wav_bytes(noise(1.0, 0.1, 1))
    with TestClient(create_app(model, config), base_url=LOCAL) as client:
        app = client.app
        first: dict = {}
        thread = threading.Thread(target=lambda: first.setdefault("r", client.post("/v1/tag", content=data)))
        thread.start()
        deadline = time.monotonic() + 10
        while app.state.admission.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/v1/tag", content=data)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7" and "busy" in refused.json()["detail"]
        assert client.get("/healthz").json()["pending"] == 1
        gate.open.set()
        thread.join(10)
        assert first["r"].status_code == 200
        assert client.post("/v1/tag", content=data).status_code == 200  # admitted again once free


@pytest.mark.integration
def test_request_timeout_is_503_and_leaves_no_work_behind(model, monkeypatch):
    gate = Gate(model, monkeypatch)
    config = ServeConfig(request_timeout=1.0, retry_after=2, max_wait=0.0, max_batch_size=1)
    data = write_wav_bytes(noise(25.0, 0.1, 2))  # three windows
    with TestClient(create_app(model, config), base_url=LOCAL) as client:
        batcher = client.app.state.batcher
        began = time.monotonic()
        response = client.post("/v1/tag", content=data)
        assert time.monotonic() - began < 5
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.json()["detail"] == "request not finished within 1 s (a busy server)"
        gate.open.set()
        deadline = time.monotonic() + 10
        while batcher.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        # The window already on the model finished; the two still queued were dropped.
        assert batcher.stats.windows == 1


@pytest.mark.integration
def test_concurrent_requests_share_model_batches(model, long_wav):
    config = ServeConfig(max_wait=1.0, max_batch_size=8)  # 4 requests x 2 full windows fill a batch
    data = long_wav.read_bytes()  # 3 windows each: 10, 10 and 3.5 s
    results, stats = post_together(model, config, [data] * 4)
    assert [r.status_code for r in results] == [200] * 4
    assert len({json.dumps(r.json()) for r in results}) == 1  # batching does not change results
    assert stats.windows == 12 and stats.largest_batch > 2  # windows of different requests shared calls


def write_wav_bytes(signal: np.ndarray) -> bytes:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, signal, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# -- the stream socket -------------------------------------------------------------


def test_stream_socket_reports_a_burst_with_its_times(burst_model):
    signal = burst_signal(4.0, 1.6, 2.9)
    with TestClient(create_app(burst_model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps({"sample_rate": 16000, "format": "s16le", "window": 1, "hop": 0.25,
                                     "classes": ["Burst"]}))
        ready = socket.receive_json()
        assert ready["type"] == "ready" and ready["window"] == 1 and ready["hop"] == 0.25
        pcm = (signal * 32767).astype("<i2").tobytes()
        for first in range(0, len(pcm), 3000):  # odd-sized messages
            socket.send_bytes(pcm[first : first + 3000])
        reports = [socket.receive_json() for _ in range(16)]
        socket.send_text(json.dumps({"type": "end"}))
        final = socket.receive_json()
    assert [r["type"] for r in reports] == ["report"] * 16
    assert [r["end"] for r in reports] == [0.25 * k for k in range(1, 17)]
    started = [(e["onset"], r["end"]) for r in reports for e in r["started"]]
    ended = [(e["onset"], e["offset"]) for r in reports for e in r["ended"]]
    assert started == [(1.5, 1.75)]
    assert ended == [(1.5, 3.0)]
    assert final == {"type": "end", "duration": 4.0, "ended": []}


@pytest.mark.parametrize("settings, detail", [
    ({"format": "mp3"}, "format: expected one of s16le, s32le, f32le, u8, got 'mp3'"),
    # Each of these once crashed the handler mid-stream (the socket dropped with no message) or let
    # one client multiply its audio: a rate of 1 Hz turns 40 KB into 160 M samples to score.
    ({"top_k": 1.5}, "top_k: expected a whole number, got 1.5"),
    ({"profile": ["home"]}, "profile: expected a string, got ['home']"),
    ({"sample_rate": 1}, "sample_rate: expected at least 1000, got 1"),
    ({"sample_rate": True}, "sample_rate: expected a number, got True"),
    ({"sample_rate": "abc"}, "sample_rate: expected a number, got 'abc'"),
    ({"sample_rate": 16000.7}, "sample_rate: expected a whole number, got 16000.7"),
    ({"window": 1e9}, "window: expected at most 60, got 1000000000.0"),
    ({"window": "abc"}, "window: expected a number, got 'abc'"),
    ({"channels": 0}, "channels: expected at least 1, got 0"),
])
def test_stream_socket_refuses_bad_settings_in_one_message(burst_model, settings, detail):
    from starlette.websockets import WebSocketDisconnect

    with TestClient(create_app(burst_model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps(settings))
        assert socket.receive_json() == {"type": "error", "detail": f"bad settings: {detail}"}
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
        assert closed.value.code == 1008


def test_stream_end_warns_of_bytes_that_are_not_a_whole_frame(burst_model):
    with TestClient(create_app(burst_model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps({"format": "s16le", "channels": 3, "window": 1, "hop": 1}))
        assert socket.receive_json()["type"] == "ready"
        socket.send_bytes(np.zeros(3 * SR, "<i2").tobytes() + b"0123456789")  # 10 bytes: not a 6-byte frame
        socket.send_text(json.dumps({"type": "end"}))
        while (message := socket.receive_json())["type"] == "report":
            pass
    assert message["type"] == "end"
    assert message["warning"].startswith("stream: the last 4 bytes are not a whole frame (6 bytes")


def test_stream_socket_refuses_an_overflowing_signal_instead_of_sending_nan(model):
    from starlette.websockets import WebSocketDisconnect

    with TestClient(create_app(model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps({"window": 1, "hop": 0.5}))
        assert socket.receive_json()["type"] == "ready"
        socket.send_bytes(np.full(SR, 1e30, np.float32).tobytes())
        message = socket.receive_json()  # NaN in a report would not even parse as JSON here
        assert message["type"] == "error" and "the model's output is not finite" in message["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
        assert closed.value.code == 1008


def test_stream_socket_refuses_too_many_streams(burst_model):
    from starlette.websockets import WebSocketDisconnect

    with TestClient(create_app(burst_model, ServeConfig(max_streams=1)), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as first:
            first.send_text("{}")
            assert first.receive_json()["type"] == "ready"
            with client.websocket_connect(STREAM) as second:
                assert "too many streams" in second.receive_json()["detail"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
                assert closed.value.code == 1013


# -- the command -------------------------------------------------------------------


def test_serve_command_refuses_a_taken_port_before_loading_and_nan_limits(tmp_path):
    import socket

    from click.testing import CliRunner

    from auricle.cli import cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # The checkpoint does not exist: the port is checked first, not after a model has loaded.
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--checkpoint", str(tmp_path / "none.pt")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"auricle: error: 127.0.0.1:{port}: cannot listen there (")
    assert result.stderr.count("\n") == 1 and "choose another --port" in result.stderr
    with pytest.raises(ValueError, match="max_wait and retry_after must be numbers >= 0"):
        ServeConfig(max_wait=float("nan"))


def test_serve_command_refuses_a_bad_checkpoint_in_one_line(tmp_path):
    from click.testing import CliRunner

    from auricle.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2
    assert result.stderr.startswith("auricle: error: ") and result.stderr.count("\n") == 1


def test_worker_processes_build_the_app_from_the_environment(tmp_path, monkeypatch):
    from auricle.serve.app import create_app_from_environment

    import torch

    checkpoint = tiny_random_checkpoint(tmp_path / "tiny.safetensors")
    monkeypatch.setenv("AURICLE_SERVE", json.dumps({"model": "ced-mini", "checkpoint": str(checkpoint), "threads": 1,
                                                    "config": {"max_pending": 3, "max_duration": 5.0}}))
    threads = torch.get_num_threads()
    try:
        app = create_app_from_environment()
        assert torch.get_num_threads() == 1  # --threads reaches each worker process
    finally:
        torch.set_num_threads(threads)
    assert app.state.config == ServeConfig(max_pending=3, max_duration=5.0)
    assert app.state.model.name == "test-tiny"


# -- stream settings, short streams and event rules ----------------------------------


def _closed_code(socket) -> int:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as closed:
        socket.receive_json()
    return closed.value.code


def test_stream_takes_classes_as_a_string_and_ready_says_the_clients_format(burst_model):
    signal = burst_signal(3.0, 1.0, 2.0)
    import soxr

    at_8k = soxr.resample(signal, SR, 8000)
    with TestClient(create_app(burst_model), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:
            # A string used to be iterated per character: "unknown class 'B'".
            socket.send_text(json.dumps({"classes": "Burst", "top_k": 1, "sample_rate": 8000, "format": "s16le",
                                         "window": 1, "hop": 0.5, "threshold": None}))
            ready = socket.receive_json()
            assert ready == {"type": "ready", "model": "burst-detector", "model_sample_rate": 16000,
                             "sample_rate": 8000, "format": "s16le", "channels": 1, "window": 1.0, "hop": 0.5,
                             "top_k": 1, "threshold": None, "classes": ["Burst"], "profile": None}
            socket.send_bytes((at_8k * 32767).astype("<i2").tobytes())
            socket.send_text(json.dumps({"type": "end"}))  # the resampler holds the last samples until then
            reports = [socket.receive_json() for _ in range(6)]
            assert socket.receive_json() == {"type": "end", "duration": 3.0, "ended": []}
        assert [r["end"] for r in reports] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        assert {tag["label"] for r in reports for tag in r["tags"]} == {"Burst"}
        assert [(e["onset"], e["offset"]) for r in reports for e in r["ended"]] == [(1.0, 2.0)]  # burst 1.0-2.0 s
        with client.websocket_connect(STREAM) as socket:
            socket.send_text(json.dumps({"classes": "Burst; Quiet"}))  # ';' separates, as ?classes= and -c
            assert socket.receive_json()["classes"] == ["Burst", "Quiet"]
        with client.websocket_connect(STREAM) as socket:
            socket.send_text(json.dumps({"classes": ["Burst", "Quiet"]}))
            assert socket.receive_json()["classes"] == ["Burst", "Quiet"]
        with client.websocket_connect(STREAM) as socket:
            socket.send_text(json.dumps({"classes": {"Burst": 1}}))
            detail = 'bad settings: classes must be a string or a list of strings, got {"Burst": 1}'
            assert socket.receive_json() == {"type": "error", "detail": detail}
            assert _closed_code(socket) == 1008


def test_stream_end_first_ends_and_unknown_settings_are_refused(burst_model):
    with TestClient(create_app(burst_model, ServeConfig(max_streams=1)), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:
            socket.send_text(json.dumps({"type": "end"}))  # used to be taken for settings: ready, then a hang
            assert socket.receive_json() == {"type": "end", "duration": 0.0, "ended": [],
                                             "note": "no audio received"}
            assert _closed_code(socket) == 1000
        with client.websocket_connect(STREAM) as socket:
            socket.send_text("{}")
            assert socket.receive_json()["type"] == "ready"
            socket.send_bytes(np.zeros(1, "<f4").tobytes())  # one sample: used to be scored, padded, as a window
            socket.send_text(json.dumps({"type": "end"}))
            assert socket.receive_json() == {
                "type": "end", "duration": 0.0, "ended": [],
                "note": "only 1 sample (0.0001 s) of audio received, less than the 0.15 s a report needs"}
            assert _closed_code(socket) == 1000
        for settings, detail in [
            ({"treshold": 0.5}, "bad settings: unknown setting 'treshold' (did you mean 'threshold'?)"),
            ({"window": 2, "colour": "red"}, "bad settings: unknown setting 'colour' (known: sample_rate, format, "
                                             "channels, window, hop, top_k, threshold, classes, profile)"),
            ({"type": "start"}, "bad settings: unknown message type 'start' (send settings, audio or "
                                "{\"type\": \"end\"})"),
        ]:
            with client.websocket_connect(STREAM) as socket:
                socket.send_text(json.dumps(settings))
                assert socket.receive_json() == {"type": "error", "detail": detail}
                assert _closed_code(socket) == 1008


@pytest.mark.integration
def test_stream_reports_the_same_events_as_listen(tiny_model, tiny_checkpoint, tmp_path, restore_torch_threads):
    # The walkthrough's street recording, where a 2 s window ends many events within a window of their start.
    import soundfile as sf
    import soxr
    from click.testing import CliRunner

    from auricle.cli import cli
    from conftest import DATA, require

    path = require(DATA / "long" / "long_01.flac")
    rate = sf.info(path).samplerate
    samples, _ = sf.read(path, frames=8 * rate, dtype="float32", always_2d=True)
    pcm = (np.clip(soxr.resample(samples.mean(axis=1), rate, SR), -1, 1) * 32767).astype("<i2")
    wav = write_wav(tmp_path / "street.wav", pcm.astype(np.float32) / 32768)
    settings = {"window": 2, "hop": 0.5, "classes": "Speech;Vehicle"}
    result = CliRunner().invoke(cli, ["listen", str(wav), "--checkpoint", str(tiny_checkpoint), "--as-fast-as-possible",
                                      "-f", "jsonl", "--window", "2", "--hop", "0.5", "-c", "Speech;Vehicle",
                                      "--threads", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listened = [(line["type"], line["label"], line["onset"], line.get("offset"))
                for line in map(json.loads, result.stdout.splitlines())]
    with TestClient(create_app(tiny_model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps({**settings, "format": "s16le"}))
        assert socket.receive_json()["type"] == "ready"
        socket.send_bytes(pcm.tobytes())
        socket.send_text(json.dumps({"type": "end"}))
        streamed = []
        while (message := socket.receive_json())["type"] == "report":
            streamed += [("end", e["label"], e["onset"], e["offset"]) for e in message["ended"]]
            streamed += [("start", e["label"], e["onset"], None) for e in message["started"]]
        streamed += [("end", e["label"], e["onset"], e["offset"]) for e in message["ended"]]
    assert streamed == listened
    assert all(offset > onset for kind, _, onset, offset in streamed if kind == "end")


def test_a_model_with_its_own_classes_lists_no_profiles(burst_model):
    with TestClient(create_app(burst_model, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        info = client.get("/v1/models").json()
    assert info["model"]["classes"] == 2 and info["profiles"] == []


def test_a_client_that_goes_away_cancels_its_work():
    """A request whose client disconnected stops; its windows are not scored for nobody."""
    import asyncio

    from auricle.serve.app import until_disconnected
    from auricle.serve.uploads import RequestError

    class Leaving:
        async def receive(self):
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

    class Staying:
        async def receive(self):
            await asyncio.sleep(60)

    cancelled = []

    async def slow_work():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def quick_work():
        return {"done": True}

    with pytest.raises(RequestError) as gone:
        asyncio.run(until_disconnected(Leaving(), slow_work()))
    assert gone.value.status == 499 and cancelled == [True]
    assert asyncio.run(until_disconnected(Staying(), quick_work())) == {"done": True}


def test_a_file_cut_short_is_tagged_and_flagged_as_tag_does(client, model, tmp_path):
    """A WAV whose header promises 5 s and holds half: 200 with ``truncated`` and the declared length, as in
    ``auricle tag``'s JSON (the upload was answered as if complete)."""
    whole = write_wav(tmp_path / "whole.wav", noise(5.0, 0.1, 3))
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    for endpoint in ("/v1/tag", "/v1/embed"):
        response = client.post(endpoint, files={"file": ("cut.wav", cut.read_bytes())})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["truncated"] is True and body["declared_duration"] == 5.0, endpoint
        assert body["duration"] < 2.6
        intact = client.post(endpoint, files={"file": ("whole.wav", data)}).json()
        assert intact["truncated"] is False and "declared_duration" not in intact
    expected = model.tag(str(cut)).to_dict()
    assert expected["truncated"] is True and expected["declared_duration"] == 5.0
