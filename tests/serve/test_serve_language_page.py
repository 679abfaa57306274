"""The web page of a server that runs MiDashengLM: the chosen sound is described, and the "ask about
this sound" box asks about it; headless Chromium against `auricle serve` with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from language_support import write_model_folder  # noqa: E402
from serve_support import CHROMIUM, running_server  # noqa: E402

pytestmark = pytest.mark.integration  # starts auricle in another process and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_model_folder(tmp_path_factory.mktemp("lm"))
    with running_server(["--checkpoint", str(folder), "--threads", "1", "--log-level", "warning"],
                        tmp_path_factory.mktemp("server")) as url:
        yield url


def test_the_page_describes_the_sound_and_asks_about_it(server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    wav = tmp_path / "dog.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(24_000) * 0.1).astype(np.float32), 16_000)
    data = wav.read_bytes()
    described = httpx.post(f"{server}/v1/describe", files={"file": ("dog.wav", data)}, timeout=60).json()
    asked = httpx.post(f"{server}/v1/ask", params={"question": "is it a dog"}, files={"file": ("dog.wav", data)},
                       timeout=60).json()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server)
            sync_api.expect(page.locator("#model-info")).to_contain_text("audio-language model")
            sync_api.expect(page.locator("#ask-box")).to_be_visible()
            assert page.locator("#tag-options").is_hidden() and page.locator("#live-button").is_hidden()
            assert page.locator("#ask-button").is_disabled()  # nothing to ask about yet
            page.set_input_files("#file-input", str(wav))
            sync_api.expect(page.locator("#result-title")).to_have_text("dog.wav", timeout=30000)
            sync_api.expect(page.locator("#answer li")).to_have_text([described["text"]])
            sync_api.expect(page.locator("#answer-question")).to_have_text(described["prompt"])
            page.fill("#question", "is it a dog")
            page.click("#ask-button")
            sync_api.expect(page.locator("#answer-question")).to_have_text("is it a dog", timeout=30000)
            sync_api.expect(page.locator("#answer li")).to_have_text([asked["text"]])
            assert page.locator("#error").is_hidden()
        finally:
            browser.close()
