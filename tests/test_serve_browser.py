"""The page of ``fastalex serve`` in a real browser: Playwright driving the system's Chromium
(Debian's ``apt-get install chromium``; Playwright's own browser download is not needed).

Uploads a photo and finds the top-5 bars and the heat map on the page, with every request
that leaves 127.0.0.1 blocked and recorded: the page must work offline. Skips, saying why,
without the ``playwright`` package or a Chromium binary ($FASTALEX_CHROMIUM or
/usr/bin/chromium).
"""

import os
import shutil
from pathlib import Path

import pytest

from serve_support import ServerProcess, server_env

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'fastalex[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'fastalex[serve]'")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs Playwright: pip install 'fastalex[browser]'")

SAMPLES = Path(__file__).resolve().parents[1] / "fastalex" / "serve" / "static" / "samples"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--disable-extensions", "--mute-audio"]


def chromium_path():
    for candidate in (os.environ.get("FASTALEX_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium to drive (apt-get install chromium, or set FASTALEX_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True, timeout=120_000)
        except Exception as exc:  # an unusable binary: say so rather than fail the suite
            pytest.skip(f"cannot start {path}: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(["--random-weights"], server_env(tmp_path_factory.mktemp("browser-home")))
    yield s
    s.kill()


def open_page(browser, server, width=1100, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    outside = []

    def guard(route):
        url = route.request.url
        if url.startswith(server.url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", guard)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url)
    return page, outside, errors


def test_upload_a_photo_shows_top5_and_heat_map(browser, server):
    page, outside, errors = open_page(browser, server)
    page.wait_for_selector("#layer option", state="attached", timeout=60_000)  # /v1/model answered
    assert page.locator("#random-warning").is_visible()
    page.set_input_files("#file", str(SAMPLES / "cat.jpg"))
    page.wait_for_selector("#top5 li.bar >> nth=4", timeout=120_000)
    bars = page.locator("#top5 li.bar")
    assert bars.count() == 5
    widths = [float(w.rstrip("%")) for w in
              bars.locator(".bar-fill").evaluate_all("els => els.map(e => e.style.width)")]
    assert widths == sorted(widths, reverse=True) and all(w > 0 for w in widths)
    assert all("%" in t for t in bars.locator(".bar-label span:last-child").all_inner_texts())
    page.wait_for_function("() => { const h = document.getElementById('heat');"
                           " return !h.hidden && h.complete && h.naturalWidth > 0; }", timeout=120_000)
    assert page.evaluate("document.getElementById('heat').naturalWidth") == 224
    page.wait_for_function("() => document.getElementById('activations').naturalWidth > 0", timeout=120_000)
    page.wait_for_function("() => document.getElementById('filters').naturalWidth > 0", timeout=60_000)
    assert not errors, errors
    assert not outside, f"the page tried to reach other hosts: {outside}"
    page.close()


def test_sample_button_and_numba_timings_on_a_phone_screen(browser, server):
    page, outside, errors = open_page(browser, server, width=375, height=740)
    page.wait_for_selector("#layer option", state="attached", timeout=60_000)
    page.click(".sample >> nth=1")
    page.wait_for_selector("#top5 li.bar >> nth=4", timeout=120_000)
    # nothing wider than the screen: no sideways scrolling of the page
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.click("#time-numba")
    page.wait_for_selector("#timing-chart .row .numba", timeout=120_000)
    assert page.locator("#timing-chart .row").count() >= 8
    assert not errors, errors
    assert not outside, outside
    page.close()
