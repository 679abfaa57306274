"""The HTTP API over a Dasheng encoder: /v1/embed gives its frame embeddings; tagging needs its AudioSet head."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

import auricle  # noqa: E402
from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from dasheng_support import tagger, zenodo  # noqa: E402, F401  (fixtures)
from serve_support import LOCAL, STREAM, burst_signal, write_wav  # noqa: E402


@pytest.fixture(scope="module")
def encoder(zenodo):
    return auricle.load_model(checkpoint=zenodo)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "street.wav", burst_signal(12.5, 4.0, 6.0))


def test_embed_gives_the_libraries_frame_embeddings(encoder, wav):
    with TestClient(create_app(encoder, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        response = client.post("/v1/embed", files={"file": ("x.wav", wav.read_bytes())})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = encoder.embed(str(wav)).to_dict()
        assert body["file"] == "x.wav" and body["dim"] == 192 and len(body["windows"]) == 312  # 12.5 s / 40 ms
        np.testing.assert_allclose(body["clip"], expected["clip"], rtol=1e-5, atol=1e-5)
        assert [row["start"] for row in body["windows"]] == [row["start"] for row in expected["windows"]]
        np.testing.assert_allclose([row["embedding"] for row in body["windows"]],
                                   [row["embedding"] for row in expected["windows"]], rtol=1e-5, atol=1e-5)

        info = client.get("/v1/models").json()
        assert info["model"] == {"name": "dasheng_small_perturbed", "classes": 0, "embedding_dim": 192,
                                 "sample_rate": 16000}
        assert info["profiles"] == [] and client.get("/v1/labels").json() == []
        response = client.post("/v1/tag", content=wav.read_bytes())
        assert response.status_code == 400
        assert "has no classification head" in response.json()["detail"]
        with client.websocket_connect(STREAM) as socket:  # live tagging needs the head too
            socket.send_text('{"sample_rate": 16000, "format": "s16le", "window": 1, "hop": 0.5}')
            refusal = socket.receive_json()
            assert refusal["type"] == "error" and "has no classification head" in refusal["detail"]


@pytest.mark.integration
def test_the_audioset_head_tags_as_the_library_does(tagger, wav):
    tagger = auricle.load_model(checkpoint=tagger)
    with TestClient(create_app(tagger, ServeConfig(max_wait=0.001)), base_url=LOCAL) as client:
        response = client.post("/v1/tag?top_k=3", files={"file": ("x.wav", wav.read_bytes())})
        assert response.status_code == 200, response.text
        expected = tagger.tag(str(wav), top_k=3).to_dict()
        got = response.json()
        assert [tag["label"] for tag in got["tags"]] == [tag["label"] for tag in expected["tags"]]
        np.testing.assert_allclose([tag["score"] for tag in got["tags"]],
                                   [tag["score"] for tag in expected["tags"]], atol=1e-5)
        assert client.get("/v1/models").json()["model"]["classes"] == 527
