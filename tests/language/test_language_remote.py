"""``describe``/``ask --server URL``: the work sent to an OpenAI-compatible endpoint.

A scripted loopback server checks the client (retries, backoff, the API key, one-line failures); the
end-to-end test runs ``auricle serve`` with the tiny MiDashengLM and compares the CLI's output with
``--server`` to a local run's (greedy: the same text).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from auricle.cli import cli
from auricle.language.remote import RemoteError, RemoteLanguageModel, api_url

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "served",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "a dog barks"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 70, "completion_tokens": 3, "total_tokens": 73}}


class Scripted:
    """A loopback HTTP server answering each POST with the next (status, body, headers) of a script."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer(200, {"object": "list", "data": [{"id": "served", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body,
                                       "authorization": self.headers.get("Authorization")})
                self._answer(*(owner.script.pop(0) if owner.script else (200, ANSWER)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clip():
    return (np.random.default_rng(0).standard_normal(24_000) * 0.1).astype(np.float32)


def test_the_url_gets_v1_unless_it_has_a_path():
    assert api_url("http://host:8000") == "http://host:8000/v1"
    assert api_url("http://host:8000/v1/") == "http://host:8000/v1"
    assert api_url("https://gateway/openai/v1") == "https://gateway/openai/v1"
    with pytest.raises(Exception, match="an http:// or https:// URL is required"):
        api_url("host:8000")


@pytest.mark.integration
def test_busy_and_rate_limited_answers_are_retried_with_backoff(clip):
    waits: list[float] = []
    script = [(503, {"detail": "busy"}, {"Retry-After": "3"}), (429, {"error": {"message": "slow down"}}), (200, ANSWER)]
    with Scripted(script) as server:
        model = RemoteLanguageModel(server.url, api_key="sk-test", sleep=waits.append)
        result = model.ask(clip, "what is it", max_new_tokens=7, name="dog.wav")
    assert model.name == "served" and waits == [3.0, 2.0]  # Retry-After, then the backoff's second step
    assert result.text == "a dog barks" and result.tokens == 3 and result.prompt_tokens == 70
    assert result.segments[0].tokens == () and result.segments[0].end == 1.5
    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "served" and body["max_tokens"] == 7 and body["temperature"] == 0
    text, audio = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "what is it"} and audio["input_audio"]["format"] == "wav"
    sent, rate = sf.read(io.BytesIO(base64.b64decode(audio["input_audio"]["data"])), dtype="float32")
    assert rate == 16_000 and np.array_equal(sent, clip)  # float WAV: the very samples


@pytest.mark.integration
def test_a_refusal_or_retries_used_up_is_one_line_naming_the_file(clip, tmp_path):
    with Scripted([(400, {"error": {"message": "bad\naudio"}})]) as server:
        model = RemoteLanguageModel(server.url, model="m", sleep=lambda _: None)
        with pytest.raises(RemoteError, match=rf"^dog\.wav: {server.url}/v1/chat/completions answered 400: bad audio$"):
            model.describe(clip, name="dog.wav")
    with Scripted([(503, {"detail": "busy"})] * 3) as server:
        model = RemoteLanguageModel(server.url, model="m", retries=2, sleep=lambda _: None)
        with pytest.raises(RemoteError, match=r"answered 503 after 3 tries: busy$"):
            model.describe(clip, name="dog.wav")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    gone = RemoteLanguageModel(f"http://127.0.0.1:{closed}", model="m", retries=1, sleep=lambda _: None)
    with pytest.raises(RemoteError, match=r"^dog\.wav: .* could not be reached \(.*\) after 2 tries$"):
        gone.describe(clip, name="dog.wav")


@pytest.mark.integration
def test_the_cli_goes_on_past_a_file_the_server_refuses(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / name, rng.standard_normal(16_000).astype(np.float32) * 0.1, 16_000)
    script = [(200, ANSWER), (413, {"detail": "input_audio.wav: too long"}), (200, ANSWER)]
    monkeypatch.setenv("MY_KEY", "sk-cli")
    with Scripted(script) as server:
        result = CliRunner().invoke(cli, ["describe", str(tmp_path), "--server", server.url, "-f", "jsonl",
                                          "--api-key-env", "MY_KEY", "--retries", "0"])
    assert result.exit_code == 1
    assert f"auricle: error: {tmp_path / 'b.wav'}: {server.url}/v1/chat/completions answered 413: " \
           "input_audio.wav: too long" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("text") for line in lines] == ["a dog barks", None, "a dog barks"]
    assert lines[0]["model"] == "served" and lines[0]["tokens"] == 3
    assert {request["authorization"] for request in server.requests} == {"Bearer sk-cli"}
    both = CliRunner().invoke(cli, ["describe", str(tmp_path), "--server", server.url, "--checkpoint", str(tmp_path)])
    assert both.exit_code == 2 and "--server and --checkpoint do not combine" in both.stderr


@pytest.mark.integration
def test_describe_with_server_equals_a_local_run(tmp_path):
    """`auricle serve` with the tiny model; the CLI with --server writes what a local run writes."""
    pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    httpx = pytest.importorskip("httpx")
    from language_support import write_model_folder
    from serve_support import burst_checkpoint, burst_signal, running_server

    folder = write_model_folder(tmp_path / "lm")
    tagger = burst_checkpoint(tmp_path / "burst.safetensors", labels=("Burst", "Silence"))
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(2)
    sf.write(audio / "a.wav", rng.standard_normal(24_000).astype(np.float32) * 0.1, 16_000)
    sf.write(audio / "long.wav", rng.standard_normal(70_000).astype(np.float32) * 0.1, 16_000)  # 3 segments
    sf.write(audio / "burst.wav", burst_signal(40.0, 15.0, 22.0), 16_000, subtype="FLOAT")
    sf.write(audio / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    (tmp_path / "server").mkdir()
    with running_server(["--checkpoint", str(folder), "--threads", "1", "--log-level", "warning"],
                        tmp_path / "server") as url:

        def run(*where, extra=()):
            out = tmp_path / f"{len(list(tmp_path.glob('*.jsonl')))}.jsonl"
            result = CliRunner().invoke(cli, ["describe", str(audio), "--max-new-tokens", "4", "--segment", "1.5",
                                              "-o", str(out), *where, *extra])
            assert result.exit_code == 1, result.stderr  # silent.wav
            assert f"{audio / 'silent.wav'}: silent" in result.stderr
            return {json.loads(line)["file"]: json.loads(line) for line in out.read_text().splitlines()}

        for extra in ((), ("--segments", "events", "--tagger-checkpoint", str(tagger), "--summary")):
            local = run("--checkpoint", str(folder), extra=extra)
            remote = run("--server", url, extra=extra)
            assert local.keys() == remote.keys()
            for file, mine in local.items():
                theirs = remote[file]
                assert theirs.get("error") == mine.get("error")
                assert theirs.get("model") == mine.get("model") and theirs.get("text") == mine.get("text")
                assert [(s["start"], s["end"], s["text"]) for s in theirs.get("segments", [])] == \
                       [(s["start"], s["end"], s["text"]) for s in mine.get("segments", [])]
                assert theirs.get("tokens") == mine.get("tokens")
                assert (theirs.get("summary") or {}).get("text") == (mine.get("summary") or {}).get("text")
            assert len(local[str(audio / "long.wav")]["segments"]) == 3
        assert local[str(audio / "burst.wav")]["summary"]["text"] == remote[str(audio / "burst.wav")]["summary"]["text"]
        asked = CliRunner().invoke(cli, ["ask", str(audio / "a.wav"), "music", "--server", url, "-f", "json",
                                         "--max-new-tokens", "3"])
        mine = CliRunner().invoke(cli, ["ask", str(audio / "a.wav"), "music", "--checkpoint", str(folder), "-f",
                                        "json", "--max-new-tokens", "3"])
        assert json.loads(asked.stdout)[0]["text"] == json.loads(mine.stdout)[0]["text"]
