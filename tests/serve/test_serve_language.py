"""`auricle serve` with MiDashengLM: /v1/describe, /v1/ask, the tagging endpoints' refusal, the CLI."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import auricle  # noqa: E402
from auricle.language.prompts import PRESETS  # noqa: E402
from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from language_support import folder, model  # noqa: E402,F401  (fixtures)
from serve_support import LOCAL, STREAM, noise  # noqa: E402


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServeConfig(max_duration=5.0)), base_url=LOCAL) as client:
        yield client


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip():
    return noise(1.5, 0.1, 3)


def test_describe_returns_what_the_python_api_returns(client, model, clip):
    data = wav_bytes(clip)
    response = client.post("/v1/describe?prompt=music&max_new_tokens=5", files={"file": ("dog.wav", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.describe(sf.read(io.BytesIO(data), dtype="float32")[0], prompt="music", max_new_tokens=5,
                              name="dog.wav").to_dict()
    assert body["file"] == "dog.wav" and body["prompt"] == PRESETS["music"] and body["model"] == model.name
    assert body["text"] == expected["text"] and body["segments"][0]["tokens"] == expected["segments"][0]["tokens"]
    assert 1 <= len(body["segments"][0]["tokens"]) <= 5
    free = client.post("/v1/describe?prompt=what+is+this&max_new_tokens=3", content=data).json()
    assert free["prompt"] == "what is this"


def test_ask_takes_the_question_literally(client, clip):
    body = client.post("/v1/ask?question=music&max_new_tokens=3", content=wav_bytes(clip)).json()
    assert body["prompt"] == "music"  # a preset's name, asked as it is


@pytest.mark.parametrize("url, status, words", [
    ("/v1/ask?question=%20%20", 400, "the question is empty"),
    ("/v1/ask", 422, "question: Field required"),
    ("/v1/describe?prompt=", 400, "the prompt is empty"),
    ("/v1/describe?max_new_tokens=0", 422, "max_new_tokens"),
])
def test_bad_parameters_are_one_line(client, clip, url, status, words):
    response = client.post(url, content=wav_bytes(clip))
    assert response.status_code == status and words in response.json()["detail"]


def test_bad_and_long_audio_are_refused_and_the_server_goes_on(client, clip):
    bad = client.post("/v1/describe", files={"file": ("x.wav", b"not audio at all")})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("x.wav")
    long = client.post("/v1/describe", files={"file": ("long.wav", wav_bytes(noise(6.0, 0.1, 1)))})
    assert long.status_code == 413 and "longer than the limit of 5 s" in long.json()["detail"]
    assert client.post("/v1/describe?max_new_tokens=2", content=wav_bytes(clip)).status_code == 200


def test_tagging_endpoints_say_what_this_server_runs(client, clip):
    for path in ("/v1/tag", "/v1/embed"):
        response = client.post(path, content=wav_bytes(clip))
        assert response.status_code == 400
        assert response.json()["detail"].startswith("this server runs an audio-language model (midashenglm-tiny")
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect(STREAM) as socket:
            socket.receive_json()
    assert closed.value.code == 1008
    assert client.get("/v1/labels").json() == []
    models = client.get("/v1/models").json()
    assert models["model"]["name"] == client.app.state.model.name and models["model"]["kind"] == "audio-language"
    assert client.get("/healthz").json()["status"] == "ok"


def test_generation_is_one_at_a_time_a_full_queue_is_503_and_a_failure_stays_its_own(model, clip, monkeypatch):
    gate, running, active = threading.Event(), threading.Event(), []
    real = model.describe

    def describe(waveform, prompt, **options):
        active.append(1)
        try:
            assert len(active) == 1, "two generations at once"
            running.set()
            gate.wait(10)
            if prompt == "fail":
                raise RuntimeError("a bug in one request")
            return real(waveform, prompt, **options)
        finally:
            active.pop()

    monkeypatch.setattr(model, "describe", describe)
    data = wav_bytes(clip)
    with TestClient(create_app(model, ServeConfig(max_pending=2, retry_after=4)), base_url=LOCAL,
                    raise_server_exceptions=False) as client:
        results: dict = {}
        first = threading.Thread(target=lambda: results.setdefault(
            "fail", client.post("/v1/describe?prompt=fail", content=data)))
        first.start()
        assert running.wait(10)
        second = threading.Thread(target=lambda: results.setdefault(
            "ok", client.post("/v1/describe?max_new_tokens=2", content=data)))
        second.start()
        deadline = time.monotonic() + 10
        while client.app.state.admission.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/v1/describe", content=data)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "4"
        gate.set()
        first.join(10)
        second.join(10)
    assert results["fail"].status_code == 500 and results["fail"].json() == {"detail": "internal server error"}
    assert results["ok"].status_code == 200 and results["ok"].json()["segments"][0]["tokens"]


@pytest.mark.integration
def test_a_tagger_server_has_no_describe(tmp_path):
    from serve_support import tiny_random_checkpoint

    tagger = auricle.load_model(checkpoint=tiny_random_checkpoint(tmp_path / "tiny.safetensors"))
    with TestClient(create_app(tagger), base_url=LOCAL) as client:
        assert client.post("/v1/describe", content=b"x").status_code == 404


def test_auricle_serve_serves_a_model_folder(folder, monkeypatch):
    """`auricle serve --checkpoint FOLDER` was refused ("works with `auricle describe` and `auricle ask`")."""
    from click.testing import CliRunner

    from auricle.cli import cli
    from serve_support import serve_in_process

    result, served, port = serve_in_process(monkeypatch, "--checkpoint", str(folder), "--threads", "1",
                                            "--generation-timeout", "42")
    assert result.exit_code == 0, result.output
    assert served["app"].state.model.name == folder.name and served["port"] == port
    config = served["app"].state.config
    assert config.generation_timeout == 42 and config.request_timeout == 60
    on_gpu = CliRunner().invoke(cli, ["serve", "--checkpoint", str(folder), "--port", str(port), "--device", "cuda"])
    assert on_gpu.exit_code == 2 and "MiDashengLM runs on the CPU" in on_gpu.output


def test_each_worker_process_loads_the_model_folder(folder, monkeypatch):
    import json

    from auricle.serve.app import create_app_from_environment

    monkeypatch.setenv("AURICLE_SERVE", json.dumps({"model": "ced-mini", "checkpoint": str(folder), "threads": 1,
                                                    "config": {"max_pending": 3}}))
    app = create_app_from_environment()
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/v1/models").json()["model"]["kind"] == "audio-language"


def chat_body(clip, text="what is this", **extra) -> dict:
    import base64

    content = [{"type": "text", "text": text},
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(clip)).decode(),
                                                        "format": "wav"}}]
    return {"model": "midashenglm", "messages": [{"role": "user", "content": content}], **extra}


def test_chat_completions_answers_as_ask_does(client, model, clip):
    response = client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=4))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.ask(sf.read(io.BytesIO(wav_bytes(clip)), dtype="float32")[0], "what is this", max_new_tokens=4)
    assert body["object"] == "chat.completion" and body["model"] == model.name and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("length" if expected.tokens == 4 else "stop")
    assert body["usage"]["completion_tokens"] == expected.tokens
    # The prompt: the ChatML turns and one <|AUDIO|> per projected audio embedding.
    audio_tokens = int(1 + len(clip) / 160) // 4 // 5
    prompt = model.tokenizer.prompt_ids("what is this", audio_tokens)
    assert body["usage"]["prompt_tokens"] == len(prompt) == expected.prompt_tokens > audio_tokens
    assert body["usage"]["total_tokens"] == len(prompt) + expected.tokens
    capped = client.post("/v1/chat/completions", json=chat_body(clip, max_completion_tokens=1)).json()
    assert capped["usage"]["completion_tokens"] == 1 and capped["choices"][0]["finish_reason"] == "length"


def test_a_question_without_audio_is_answered_by_the_decoder_alone(client, model):
    body = {"messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "what is a dog"}],
            "max_tokens": 3}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    expected = model.complete("what is a dog", max_new_tokens=3)
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == expected.text
    assert answer["usage"] == {"prompt_tokens": len(model.tokenizer.text_prompt_ids("what is a dog")),
                               "completion_tokens": len(expected.tokens),
                               "total_tokens": len(model.tokenizer.text_prompt_ids("what is a dog")) + len(expected.tokens)}
    import json

    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in streamed.text.split("\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected.text
    too_long = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "dog " * 300}]})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["message"].startswith("the question: the prompt is ")


def test_language_requests_have_their_own_time_limit(model, clip):
    """A 7B on a CPU takes minutes: tagging's 60 s limit was the language routes' too."""
    data = wav_bytes(clip)
    with TestClient(create_app(model, ServeConfig(request_timeout=1e-6)), base_url=LOCAL) as client:
        assert client.post("/v1/describe?max_new_tokens=2", content=data).status_code == 200
    with TestClient(create_app(model, ServeConfig(generation_timeout=1e-6)), base_url=LOCAL) as client:
        late = client.post("/v1/describe?max_new_tokens=2", content=data)
        assert late.status_code == 503 and "not finished within 1e-06 s" in late.json()["detail"]
        text = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a dog"}]})
        assert text.status_code == 503


def test_a_streamed_chat_completion_is_server_sent_chunks_ending_with_done(client, model, clip):
    import json

    response = client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=4, stream=True))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    expected = client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=4)).json()
    assert text == expected["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    # Bad audio is still an HTTP error, not an event in a 200 stream.
    bad = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv"}}]}]}
    refused = client.post("/v1/chat/completions", json={**bad, "stream": True})
    assert refused.status_code == 400 and "input_audio.wav" in refused.json()["error"]["message"]


@pytest.mark.parametrize("body, words", [
    ({"messages": []}, "messages: a non-empty list is required"),
    ({"messages": [{"role": "user", "content": "  "}]},
     "one input_audio part, or a question without audio, is required (got 0 input_audio parts)"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%"}}]}]},
     "input_audio.data: not base64"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv"}}]}]},
     "input_audio.wav"),
    ({"max_tokens": 0}, "max_tokens: an integer from 1 to 4096"),
])
def test_bad_chat_bodies_are_openai_errors(client, clip, body, words):
    response = client.post("/v1/chat/completions", json={**chat_body(clip), **body})
    assert response.status_code == 400 and words in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/chat/completions", content=b"{").json()["error"]["message"] == "the body is not JSON"


@pytest.mark.integration
def test_the_openai_client_talks_to_a_real_server(folder, clip, tmp_path):
    """The `openai` package, an independent client, against `auricle serve` on a loopback port."""
    from serve_support import running_server

    openai = pytest.importorskip("openai", reason="the openai package is not installed")
    with running_server(["--checkpoint", str(folder), "--threads", "1", "--log-level", "warning"], tmp_path) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        body = chat_body(clip, max_tokens=3)
        answer = client.chat.completions.create(model=body["model"], messages=body["messages"], max_tokens=3)
        assert answer.choices[0].message.role == "assistant" and isinstance(answer.choices[0].message.content, str)
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens <= 3
        streamed = client.chat.completions.create(model="m", messages=body["messages"], max_tokens=3, stream=True)
        pieces = [event.choices[0].delta.content or "" for event in streamed]
        assert "".join(pieces) == answer.choices[0].message.content
        two = [{"role": "user", "content": body["messages"][0]["content"] * 2}]
        with pytest.raises(openai.BadRequestError, match="one input_audio part, or a question without audio"):
            client.chat.completions.create(model="m", messages=two)
