"""The web page's search box (`auricle serve --index`) in headless Chromium: a query, a file to sound like,
a refused query, and a result's player fetching its segment from /v1/search/audio."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from serve_support import burst_checkpoint, burst_signal, noise, running_server, write_wav  # noqa: E402
from serve_support import CHROMIUM  # noqa: E402

pytestmark = pytest.mark.integration  # starts auricle in another process


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """`auricle serve --index` over two recordings indexed by the burst detector; yields (URL, folder)."""
    import auricle

    folder = tmp_path_factory.mktemp("search-page")
    checkpoint = burst_checkpoint(folder / "burst.safetensors")
    sounds = folder / "sounds"
    sounds.mkdir()
    write_wav(sounds / "doorbell.wav", burst_signal(24.0, 8.0, 12.0))
    write_wav(sounds / "hum.wav", noise(6.0, 0.001, 3))
    index = folder / "sounds.db"
    with auricle.Index.open(index, create=True) as opened:
        assert opened.add([sounds], auricle.load_model(checkpoint=checkpoint), window=2.0).added == 2
    with running_server(["--checkpoint", str(checkpoint), "--threads", "1", "--log-level", "warning",
                         "--index", str(index)], folder) as url:
        yield url, sounds


def test_search_box_lists_results_that_play_their_segment(searched, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    server, sounds = searched
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            external = []
            page.on("request", lambda request: None if request.url.startswith(server) else external.append(request.url))
            page.goto(server)
            sync_api.expect(page.locator("#search-panel")).to_be_visible()
            sync_api.expect(page.locator("#search-info")).to_contain_text("2 file(s) · burst-detector")
            page.fill("#search-query", "Burst")
            page.click("#search-button")
            results = page.locator("#search-results li")
            sync_api.expect(results).to_have_count(2, timeout=30000)
            first = results.first
            sync_api.expect(first.locator(".file")).to_have_text("doorbell.wav")
            sync_api.expect(first.locator(".why")).to_contain_text("classes: Burst")
            sync_api.expect(first.locator(".span")).to_contain_text("of 24.0 s")
            source = first.locator("audio").get_attribute("src")
            assert source.startswith("/v1/search/audio?file=") and "doorbell.wav" in source
            # The player fetches and plays the segment (16 kHz WAV of its span).
            played = first.locator("audio").evaluate("""audio => new Promise((resolve, reject) => {
                audio.addEventListener('playing', () => resolve(audio.duration));
                audio.addEventListener('error', () => reject(new Error('media error ' + audio.error.code)));
                audio.muted = true;
                audio.play().catch(reject);
            })""")
            segment = page.evaluate("""async (src) => {
                const r = await fetch(src);
                return [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength];
            }""", source)
            assert segment[0] == 200 and segment[1] == "audio/wav"
            assert played == pytest.approx((segment[2] - 44) / 2 / 16000, abs=0.01) and played > 1
            page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

            # Words the burst detector's own classes cannot take: one line where the results were.
            page.fill("#search-query", "a dog barking")
            page.click("#search-button")
            sync_api.expect(page.locator("#search-error")).to_contain_text("400: ", timeout=30000)
            sync_api.expect(page.locator("#search-error")).to_contain_text("not one of the index's 2 classes")
            sync_api.expect(results).to_have_count(0)

            # A file to sound like: the recording itself comes first.
            page.set_input_files("#search-like", str(sounds / "hum.wav"))
            sync_api.expect(results).to_have_count(2, timeout=30000)
            sync_api.expect(results.first.locator(".file")).to_have_text("hum.wav")
            sync_api.expect(page.locator("#search-status")).to_contain_text("sounds like hum.wav")
            assert page.locator("#search-error").is_hidden()
        finally:
            browser.close()
    assert external == []
