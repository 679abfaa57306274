"""`auricle serve` as a real uvicorn process on a loopback port, and its web page in headless Chromium."""

from __future__ import annotations

import socket
import threading

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from serve_support import CHROMIUM, burst_checkpoint, burst_signal, running_server, write_wav  # noqa: E402

pytestmark = pytest.mark.integration  # starts auricle (or a benchmark) in other processes



def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`auricle serve` with the burst detector; yields its base URL."""
    folder = tmp_path_factory.mktemp("server")
    checkpoint = burst_checkpoint(folder / "burst.safetensors")
    with running_server(["--checkpoint", str(checkpoint), "--threads", "1", "--log-level", "warning",
                         "--max-wait-ms", "20"], folder) as url:
        yield url


@pytest.fixture(scope="module")
def burst_wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "doorbell.wav", burst_signal(24.0, 8.0, 12.0))


def test_real_server_on_loopback_tags_concurrent_requests(server, burst_wav):
    data = burst_wav.read_bytes()
    results: list = []

    def post():
        with open(burst_wav, "rb") as handle:
            results.append(httpx.post(f"{server}/v1/tag", params={"events": "true", "window": 2, "hop": 1},
                                      files={"file": ("doorbell.wav", handle)}, timeout=60))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in results] == [200] * 4
    body = results[0].json()
    assert body["file"] == "doorbell.wav" and body["model"] == "burst-detector"
    bursts = [e for e in body["events"] if e["label"] == "Burst"]
    # Offline events over 2 s windows every 1 s: the windows that touch 8-12 s.
    assert [(e["onset"], e["offset"]) for e in bursts] == [(7.0, 13.0)]
    bad = httpx.post(f"{server}/v1/tag", content=b"not audio at all", params={"filename": "x.wav"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["detail"].startswith("x.wav: ")
    assert len(data) > 0 and httpx.get(f"{server}/healthz").json()["pending"] == 0


def test_web_page_in_headless_chromium(server, burst_wav, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    screenshot = tmp_path / "page.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            external = []
            page.on("request", lambda request: None if request.url.startswith(server) else external.append(request.url))
            page.goto(server)
            # Nothing the page offers needs the network: no Swagger /docs (a CDN page, blank offline).
            assert page.locator("footer a").evaluate_all("links => links.map(a => a.getAttribute('href'))") == [
                "/openapi.json", "/v1/labels"]
            sync_api.expect(page.locator("#model-info")).to_contain_text("burst-detector")
            assert page.locator("#ask-box").is_hidden()  # a tagger: no "ask about this sound"
            page.click("summary")
            page.fill("#window", "2")
            page.fill("#hop", "1")
            page.set_input_files("#file-input", str(burst_wav))
            sync_api.expect(page.locator("#result-title")).to_have_text("doorbell.wav", timeout=30000)
            sync_api.expect(page.locator("#tags li").first).to_contain_text("Burst")
            sync_api.expect(page.locator("#timeline-block")).to_be_visible()
            sync_api.expect(page.locator("#event-list")).to_contain_text("7.00–13.00 s  Burst")
            # The spectrogram was drawn: the canvas is not a single colour.
            colours = page.evaluate("""() => {
                const c = document.getElementById('timeline');
                const d = c.getContext('2d').getImageData(0, 0, c.width, 160).data;
                const seen = new Set();
                for (let i = 0; i < d.length; i += 397 * 4) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
                return seen.size;
            }""")
            assert colours > 5
            page.screenshot(path=str(screenshot), full_page=True)

            # A failed upload clears the result (it read as the new file's) and says why where it was
            # (the error was ~1,900 px below the old result).
            result_top = page.locator("#result-panel").bounding_box()["y"]
            broken = tmp_path / "broken.wav"
            broken.write_bytes(b"not audio at all")
            page.set_input_files("#file-input", str(broken))
            sync_api.expect(page.locator("#error")).to_contain_text("400: ", timeout=30000)
            sync_api.expect(page.locator("#error")).to_contain_text("broken.wav")
            assert page.locator("#result-panel").is_hidden()
            assert abs(page.locator("#error").bounding_box()["y"] - result_top) < 50
            page.set_input_files("#file-input", str(burst_wav))  # and the next good upload brings a result back
            sync_api.expect(page.locator("#result-title")).to_have_text("doorbell.wav", timeout=30000)
            assert page.locator("#error").is_hidden()

            # Record from the (fake) microphone: MediaRecorder's WebM is uploaded and decoded.
            page.click("#record-button")
            page.wait_for_timeout(1200)
            page.click("#record-button")
            sync_api.expect(page.locator("#result-title")).to_have_text("recording.webm", timeout=30000)
            assert page.locator("#error").is_hidden()

            # Live: the (fake) microphone streamed over /v1/stream.
            page.fill("#window", "1")
            page.fill("#hop", "0.5")
            page.click("#live-button")
            sync_api.expect(page.locator("#live-window")).to_contain_text("window", timeout=20000)
            sync_api.expect(page.locator("#live-tags li").first).to_be_visible()
            page.click("#live-button")
            page.screenshot(path=str(tmp_path / "page-after-live.png"), full_page=True)
        finally:
            browser.close()
    assert external == []  # the page needs nothing from outside
    assert screenshot.stat().st_size > 10_000
