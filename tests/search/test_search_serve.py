"""GET /v1/search of `auricle serve --index FILE`, through FastAPI's test client."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from serve_support import LOCAL  # noqa: E402
from test_search_cli import indexed, one_error_line, recordings, run, search_json  # noqa: E402,F401


@pytest.mark.integration
def test_search_endpoint_answers_as_the_command(indexed, tiny_model, tmp_path):
    with TestClient(create_app(tiny_model, ServeConfig(search_index=str(indexed))), base_url=LOCAL) as client:
        answer = client.get("/v1/search", params={"q": "Bark", "top": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json()["hits"] == search_json(indexed, "Bark", "--top", "2")
        assert answer.json()["warnings"] == []
        empty = client.get("/v1/search", params={"q": "  "})
        assert empty.status_code == 400 and "empty query" in empty.json()["detail"]
    missing = ServeConfig(search_index=str(tmp_path / "gone.db"))
    with TestClient(create_app(tiny_model, missing), base_url=LOCAL) as client:
        answer = client.get("/v1/search", params={"q": "Bark"})
        assert answer.status_code == 400 and "no such index" in answer.json()["detail"]
    with TestClient(create_app(tiny_model, ServeConfig()), base_url=LOCAL) as client:
        answer = client.get("/v1/search", params={"q": "Bark"})
        assert answer.status_code == 404 and "--index" in answer.json()["detail"]


def test_serve_refuses_an_unusable_index_before_loading_the_model(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    one_error_line(run("serve", "--index", bad, "--port", "0"), "bad.db", "not a readable auricle index")


# --------------------------------------------------------------------------- like, filters, the index, segments


@pytest.mark.integration
def test_like_upload_answers_as_the_command(indexed, recordings, tiny_model, tiny_checkpoint):
    with TestClient(create_app(tiny_model, ServeConfig(search_index=str(indexed))), base_url=LOCAL) as client:
        with open(recordings / "noise.wav", "rb") as handle:
            answer = client.post("/v1/search", params={"top": 2}, files={"file": ("clip.wav", handle)})
        assert answer.status_code == 200, answer.text
        hits = answer.json()["hits"]
        expected = search_json(indexed, "--like", recordings / "noise.wav", "--checkpoint", tiny_checkpoint, "--top", "2")
        assert [h["file"] for h in hits] == [h["file"] for h in expected]
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected], abs=1e-5)
        assert answer.json()["like"] == "clip.wav"
        # A recording longer than a window: embedded as --like embeds it (one embedding per tagging window).
        with open(recordings / "long.wav", "rb") as handle:
            long = client.post("/v1/search", files={"file": ("long.wav", handle)}).json()["hits"]
        expected = search_json(indexed, "--like", recordings / "long.wav", "--checkpoint", tiny_checkpoint)
        spans = [[(s["start"], s["end"], s["score"]) for s in h["segments"]] for h in expected]
        assert [h["file"] for h in long] == [h["file"] for h in expected]
        assert [[(s["start"], s["end"], s["score"]) for s in h["segments"]] for h in long] == spans
        assert [h["score"] for h in long] == pytest.approx([h["score"] for h in expected], abs=1e-5)
        raw = client.post("/v1/search", params={"filename": "raw.wav", "path": "t*"},
                          content=(recordings / "noise.wav").read_bytes())
        assert [h["file"] for h in raw.json()["hits"]] == [str(recordings / "tone.wav")]
        bad = client.post("/v1/search", params={"filename": "x.wav"}, content=b"not audio at all")
        assert bad.status_code == 400 and bad.json()["detail"].startswith("x.wav: ")
        info = client.get("/v1/search/index").json()
        assert (info["files"], info["captioned"], info["like"]) == (3, 0, True)


@pytest.mark.integration
def test_like_limits_and_another_model(indexed, recordings, tiny_model, mini_model):
    small = ServeConfig(search_index=str(indexed), max_upload_bytes=1000)
    with TestClient(create_app(tiny_model, small), base_url=LOCAL) as client:
        answer = client.post("/v1/search", params={"filename": "big.wav"}, content=(recordings / "long.wav").read_bytes())
        assert answer.status_code == 413
    with TestClient(create_app(mini_model, ServeConfig(search_index=str(indexed))), base_url=LOCAL) as client:
        answer = client.post("/v1/search", params={"filename": "n.wav"}, content=(recordings / "noise.wav").read_bytes())
        assert answer.status_code == 400 and "made with ced_tiny" in answer.json()["detail"]
        assert client.get("/v1/search/index").json()["like"] is False
    with TestClient(create_app(tiny_model, ServeConfig()), base_url=LOCAL) as client:
        assert client.post("/v1/search", content=b"x").status_code == 404
        assert client.get("/v1/search/index").status_code == 404
        assert client.get("/v1/search/audio", params={"file": "/etc/passwd"}).status_code == 404


@pytest.mark.integration
def test_filters_match_the_command(indexed, recordings, tiny_model):
    with TestClient(create_app(tiny_model, ServeConfig(search_index=str(indexed))), base_url=LOCAL) as client:
        def files(**params):
            answer = client.get("/v1/search", params={"q": "Music", **params})
            assert answer.status_code == 200, answer.text
            return [h["file"] for h in answer.json()["hits"]]

        assert files(since="2999-01-01") == [] and len(files(until="2999-01-01")) == 3
        assert files(since="2999-01-01") == [h["file"] for h in search_json(indexed, "Music", "--since", "2999-01-01")]
        assert files(min_duration=2, max_duration=5) == [str(recordings / "noise.wav")]
        bad = client.get("/v1/search", params={"q": "Music", "since": "last tuesday"})
        assert bad.status_code == 400 and "not a date" in bad.json()["detail"]


@pytest.mark.integration
def test_segment_audio_plays_indexed_files_only(indexed, recordings, tiny_model, tmp_path):
    import io

    import soundfile as sf

    (recordings / "secret.wav").write_bytes((recordings / "tone.wav").read_bytes())  # on disk, never indexed
    os.symlink("/etc/passwd", recordings / "link.wav")
    with TestClient(create_app(tiny_model, ServeConfig(search_index=str(indexed))), base_url=LOCAL) as client:
        answer = client.get("/v1/search/audio", params={"file": str(recordings / "long.wav"), "start": 10, "end": 12.5})
        assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
        samples, rate = sf.read(io.BytesIO(answer.content))
        assert rate == 16000 and len(samples) == 40000
        whole = client.get("/v1/search/audio", params={"file": str(recordings / "long.wav")})
        assert len(sf.read(io.BytesIO(whole.content))[0]) == 23 * 16000  # to the end (under the 60 s cap)
        hostile = [
            "/etc/passwd", "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", str(recordings / "secret.wav"),
            str(recordings / "link.wav"), str(recordings / ".." / "sounds" / "tone.wav"),
            str(recordings) + "//tone.wav", str(recordings / "tone.wav") + "\x00.png", str(indexed),
            str(recordings), "tone.wav", "file://" + str(recordings / "tone.wav"), "",
        ]
        for path in hostile:
            refused = client.get("/v1/search/audio", params={"file": path})
            assert refused.status_code == 404, path
            assert refused.json() == {"detail": "not a file of the search index"}
        assert client.get("/v1/search/audio", params={"file": "a" * 5000}).status_code == 422
        assert client.get("/v1/search/audio?file=%2Fetc%2Fpasswd&file=x").status_code == 404
        backwards = client.get("/v1/search/audio", params={"file": str(recordings / "long.wav"), "start": 5, "end": 2})
        assert backwards.status_code == 400 and "must come after start" in backwards.json()["detail"]
        negative = client.get("/v1/search/audio", params={"file": str(recordings / "long.wav"), "start": -1})
        assert negative.status_code == 422
        os.remove(recordings / "tone.wav")
        gone = client.get("/v1/search/audio", params={"file": str(recordings / "tone.wav")})
        assert gone.status_code == 404 and "no longer on the disk" in gone.json()["detail"]
