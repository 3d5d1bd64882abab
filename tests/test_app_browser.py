"""`cifarkit app` driven in a real browser (Playwright + Debian's chromium): what a user clicks works end to end."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from helpers import slow_fixture

pytestmark = pytest.mark.xdist_group("app-server")  # one pytest worker starts the app server and the browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
START_TIMEOUT_S = 180  # imports, test data and scoring; a loaded 2-core machine takes a minute
STEP_TIMEOUT_MS = 60_000


def _need(what: str, missing: bool, how: str) -> None:
    """Skip where the browser stack cannot be had; in CI (which installs it) its absence is a failure."""
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {how}")
    pytest.skip(f"{what} is not installed here: {how}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@slow_fixture
def browser_api() -> tuple[Any, Any]:
    """Playwright's (sync_playwright, expect), checked before the app is started."""
    _need("chromium", not CHROMIUM.exists(), "apt-get install -y chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _need("playwright", True, 'pip install "cifarkit[dev]"')
    return sync_playwright, expect


@slow_fixture
def app_url(tiny_run: Path, tmp_path: Path) -> Iterator[str]:
    """`python -m cifarkit app RUN` on a free local port, stopped after the test; yields the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "cifarkit", "app", str(tiny_run), "--port", str(_free_port()),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"the app printed no URL within {START_TIMEOUT_S} s:\n{''.join(log)}")
            if line.startswith("cifarkit app: http://127.0.0.1:"):
                break
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{''.join(log)}")
        yield line.split()[2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output = "".join(log)
    assert "Traceback" not in output and "DecompressionBombWarning" not in output, output


# What the page measures in the browser: per gallery, each caption that is cut (its text wider than its box), and the
# empty space between the last tile and the gallery's bottom edge.
MEASURE_GALLERIES = """() => ["examples", "gradcam-gallery", "mis-gallery"].map(id => {
    const gallery = document.getElementById(id);
    const tiles = [...gallery.querySelectorAll(".gallery-item")];
    const cut = [...gallery.querySelectorAll(".caption-label")].filter(c => c.scrollWidth > c.clientWidth + 1)
        .map(c => c.textContent);
    const bottom = Math.max(...tiles.map(t => t.getBoundingClientRect().bottom));
    return {id, tiles: tiles.length, cut, band: Math.round(gallery.getBoundingClientRect().bottom - bottom)};
})"""
MAX_BAND_PX = 40  # the gallery's own padding and border; Gradio's default left ~200 px under one row


def _layout_problems(page: Any) -> list[str]:
    """Cut captions and empty bands in the app's three galleries, as lines (none: the layout is right)."""
    problems = []
    for g in page.evaluate(MEASURE_GALLERIES):
        if not g["tiles"]:
            problems.append(f"#{g['id']}: no tiles to measure")
        problems += [f"#{g['id']}: caption cut: {text!r}" for text in g["cut"]]
        if g["band"] > MAX_BAND_PX:
            problems.append(f"#{g['id']}: {g['band']} px of empty band under its tiles")
    return problems


def test_upload_topk_gradcam_misclassified_and_a_refused_file(browser_api: tuple[Any, Any], app_url: str,
                                                              tmp_path: Path) -> None:
    """In chromium: an uploaded image gets exactly the 3 classes asked for (and 10 when 11 is typed); Grad-CAM at
    layer2, opacity 0.3 draws overlays; 5 misclassified test images appear with true and predicted classes; a text
    file gets a message; no step shows an error; every gallery caption is shown whole and no gallery leaves an empty
    band under its one row of tiles (app.png: the page as it ends)."""
    sync_playwright, expect = browser_api
    photo = tmp_path / "photo.png"  # a user's picture: not 32x32, not RGB
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 4), dtype=np.uint8), "RGBA").save(photo)
    (tmp_path / "notes.txt").write_text("not an image")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(app_url)
            expect(page.locator("#run-header")).to_contain_text("NOT CIFAR-10")
            expect(page.get_by_text("resized to 32x32 pixels")).to_be_visible()
            expect(page.locator("#examples .gallery-item")).to_have_count(10)

            page.set_input_files("#uploads input[type=file]", [str(photo)])
            expect(page.locator("#prediction-0 .confidence-set")).to_have_count(5)  # the default
            top_k = page.locator("#top-k input[data-testid=number-input]")
            classes = page.locator("#prediction-0 .confidence-set dt")
            top_k.fill("11")  # typed past the end: 10 classes, no error
            top_k.press("Enter")
            expect(classes).to_have_count(10)
            top_k.fill("3")
            top_k.press("Enter")
            expect(classes).to_have_count(3)
            assert len(set(classes.all_inner_texts())) == 3

            page.locator("#gradcam-on input[type=checkbox]").check()
            page.locator("#gradcam-layer").get_by_label("layer2").check()
            opacity = page.locator("#gradcam-opacity input[data-testid=number-input]")
            opacity.fill("0.3")
            opacity.press("Enter")
            overlays = page.locator("#gradcam-gallery .gallery-item")
            expect(overlays.first).to_contain_text("upload photo.png: Grad-CAM at layer2, opacity 0.30")
            expect(overlays).to_have_count(4)

            page.locator("#mis-on input[type=checkbox]").check()
            count = page.locator("#mis-count input[data-testid=number-input]")
            count.fill("5")
            count.press("Enter")
            mistakes = page.locator("#mis-gallery .gallery-item")
            expect(mistakes).to_have_count(5)
            for caption in mistakes.all_inner_texts():
                assert "true " in caption and "predicted " in caption, caption

            page.set_input_files("#uploads input[type=file]", [str(tmp_path / "notes.txt")])
            expect(page.locator("#upload-notes")).to_contain_text("notes.txt: not an image that can be read")
            expect(overlays).to_have_count(4)  # redrawn for the new file list, the photo still first
            expect(page.locator(".progress-text")).to_have_count(0)
            expect(page.get_by_text("Error", exact=True)).to_have_count(0)
            assert _layout_problems(page) == []
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
