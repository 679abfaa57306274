"""Hostile clients through the test client: foreign Host and Origin, oversized stream messages, decoded-audio budget."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.testclient import WebSocketDenialResponse  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import auricle  # noqa: E402
from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from serve_support import LOCAL, SR, STREAM, noise, tiny_random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return auricle.load_model(checkpoint=tiny_random_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors"))


def wav(seconds: float, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, noise(seconds, 0.1, seed), SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# -- Host and Origin (DNS rebinding, cross-site forms and sockets) ------------------------


def test_a_foreign_host_is_400_and_a_foreign_origin_403_on_posts_and_sockets(model):
    data = wav(1.0)
    with TestClient(create_app(model, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        rebound = client.post("/v1/tag", content=data, headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 400 and "host 'attacker.example:8000' is not served" in rebound.json()["detail"]
        assert client.get("/healthz", headers={"Host": "attacker.example"}).status_code == 400
        # A cross-site multipart form: the browser sends the attacker's page as Origin.
        cross = client.post("/v1/tag", files={"file": ("a.wav", data)}, headers={"Origin": "http://attacker.example"})
        assert cross.status_code == 403 and cross.json() == {
            "detail": "origin 'http://attacker.example' may not use this service (see --allowed-origin)"}
        assert client.post("/v1/tag", content=data, headers={"Origin": "null"}).status_code == 403
        # The page's own origin, clients without one, other loopback names and reads stay allowed.
        assert client.post("/v1/tag", content=data, headers={"Origin": "http://localhost"}).status_code == 200
        assert client.post("/v1/tag", content=data).status_code == 200
        assert client.post("/v1/tag", content=data, headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert client.post("/v1/tag", content=data, headers={"Host": "[::1]:8000"}).status_code == 200
        assert client.get("/v1/labels", headers={"Origin": "http://attacker.example"}).status_code == 200
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(STREAM, headers={"Origin": "http://attacker.example"}):
                pass
        assert denied.value.status_code == 403 and "origin" in denied.value.json()["detail"]
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("ws://attacker.example/v1/stream"):
                pass
        assert denied.value.status_code == 400
        with client.websocket_connect(STREAM, headers={"Origin": "http://localhost"}) as socket:
            socket.send_text(json.dumps({"type": "end"}))
            assert socket.receive_json()["type"] == "end"


def test_allowed_hosts_and_origins_are_configurable_for_a_proxy(model):
    config = ServeConfig(max_wait=0.001, allowed_hosts=["audio.example.org"], allowed_origins=["https://app.example.org/"])
    data = wav(1.0)
    with TestClient(create_app(model, config), base_url="http://audio.example.org") as client:
        assert client.post("/v1/tag", content=data, headers={"Origin": "https://app.example.org"}).status_code == 200
        assert client.post("/v1/tag", content=data, headers={"Origin": "https://evil.example.org"}).status_code == 403
        assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400  # only the names given
    with TestClient(create_app(model, ServeConfig(allowed_hosts=("*",))), base_url="http://any.name") as client:
        assert client.get("/healthz").status_code == 200


def test_serve_command_allows_the_bound_names_or_any_for_a_wildcard_bind():
    from auricle.cli.serve import served_hosts

    assert served_hosts("127.0.0.1", ()) == ("127.0.0.1", "localhost", "::1", "127.0.0.1")
    assert "*" in served_hosts("0.0.0.0", ()) and "*" in served_hosts("::", ())
    assert served_hosts("0.0.0.0", ("proxy.example",))[-1] == "proxy.example"
    assert "192.168.1.5" in served_hosts("192.168.1.5", ())


def test_a_bug_is_a_one_line_500_without_a_traceback(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /home/user/model.py line 12")

    monkeypatch.setattr("auricle.serve.app.summarize", broken)
    with TestClient(create_app(model, ServeConfig(max_wait=0.001)), base_url=LOCAL,
                    raise_server_exceptions=False) as client:
        response = client.post("/v1/tag", content=wav(1.0))
    assert response.status_code == 500 and response.json() == {"detail": "internal server error"}


# -- the stream: memory from one message ------------------------------------------------


def test_a_stream_message_over_the_audio_limit_is_refused_before_it_is_decoded(model, monkeypatch):
    decoded = []
    from auricle.listen import PcmDecoder

    original = PcmDecoder.decode
    monkeypatch.setattr(PcmDecoder, "decode", lambda self, data, last=False: decoded.append(len(data)) or
                        original(self, data, last))
    with TestClient(create_app(model, ServeConfig(max_stream_seconds=90)), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:
            socket.send_text(json.dumps({"sample_rate": 1000, "format": "u8", "window": 10, "hop": 10}))
            assert socket.receive_json()["type"] == "ready"
            # 100 s of 1 kHz 8-bit audio: 100 kB on the wire, 6.4 MB of 16 kHz float once resampled.
            socket.send_bytes(bytes(100_000))
            error = socket.receive_json()
            assert error == {"type": "error", "detail": "stream: a message of 100000 bytes is 100.0 s of audio with "
                                                        "the window held, over the limit of 90 s; send smaller messages"}
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_json()
            assert closed.value.code == 1008
    assert decoded == []
    with TestClient(create_app(model, ServeConfig(max_stream_seconds=90)), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:  # the same audio in messages of 10 s is fine
            socket.send_text(json.dumps({"sample_rate": 1000, "format": "u8", "window": 10, "hop": 10}))
            socket.receive_json()
            for _ in range(3):
                socket.send_bytes(bytes(10_000))
            socket.send_text(json.dumps({"type": "end"}))
            messages = [socket.receive_json() for _ in range(4)]
            assert [m["type"] for m in messages] == ["report", "report", "report", "end"]


def test_a_huge_text_message_is_refused_before_it_is_parsed(model):
    with TestClient(create_app(model), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:
            socket.send_text("[" + "0," * 100_000 + "0]")
            assert socket.receive_json() == {"type": "error", "detail": "text messages must be under 65536 characters "
                                                                         "(settings or end), got 200003"}


@pytest.mark.integration
def test_a_silent_stream_is_closed_after_its_idle_timeout(model):
    with TestClient(create_app(model, ServeConfig(stream_idle_timeout=0.2)), base_url=LOCAL) as client:
        with client.websocket_connect(STREAM) as socket:
            assert socket.receive_json() == {"type": "error", "detail": "stream: no message in 0.2 s"}
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_json()
            assert closed.value.code == 1008
        assert client.app.state.streams == 0


# -- uploads: decoded audio held at once ----------------------------------------------------


@pytest.mark.integration
def test_decoded_audio_across_requests_stays_within_its_budget(model, monkeypatch):
    """Two 6 s uploads with room for 8 s decoded: the second is decoded only after the first is done."""
    gate = threading.Event()
    original = model.probabilities
    monkeypatch.setattr(model, "probabilities", lambda waveforms, **options: gate.wait(10) and False or
                        original(waveforms, **options))
    config = ServeConfig(max_duration=8.0, max_decoded_seconds=8.0, max_wait=0.0)
    data = wav(6.0)
    with TestClient(create_app(model, config), base_url=LOCAL) as client:
        budget = client.app.state.budget
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(client.post("/v1/tag", content=data)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while client.app.state.admission.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # room for a wrongly admitted second decode to show
        held = budget.used
        gate.set()
        for thread in threads:
            thread.join(20)
        assert [r.status_code for r in results] == [200, 200]
        assert held == 7 * SR  # one request's reservation (6 s and a second of slack), not two
        assert budget.used == 0


def test_worker_processes_get_the_allowed_names_from_the_environment(tmp_path, monkeypatch):
    from auricle.serve.app import create_app_from_environment

    checkpoint = tiny_random_checkpoint(tmp_path / "tiny.safetensors")
    config = {"allowed_hosts": ["Proxy.example"], "allowed_origins": ["https://app.example/"], "body_timeout": 5.0}
    monkeypatch.setenv("AURICLE_SERVE", json.dumps({"model": "ced-mini", "checkpoint": str(checkpoint),
                                                    "config": config}))
    app = create_app_from_environment()
    assert app.state.config == ServeConfig(allowed_hosts=("proxy.example",), allowed_origins=("https://app.example",),
                                           body_timeout=5.0)
    with TestClient(app, base_url="http://proxy.example") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400


def test_serve_command_names_the_flags_of_limits_that_do_not_fit_together(tmp_path):
    from click.testing import CliRunner

    from auricle.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "none.pt"), "--max-decoded-seconds", "10"])
    assert result.exit_code == 2
    assert result.stderr == "auricle: error: --max-decoded-seconds (10) must be at least --max-duration (600)\n"
