"""GET /v1/search of `auricle serve --index FILE`, through FastAPI's test client."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from auricle.serve.app import create_app  # noqa: E402
from auricle.serve.config import ServeConfig  # noqa: E402
from serve_support import LOCAL  # noqa: E402
from test_search_cli import indexed, one_error_line, recordings, run, search_json  # noqa: E402,F401


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
