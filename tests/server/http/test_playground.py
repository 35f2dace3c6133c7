"""The web playground in a real browser (Debian's headless Chromium, driven by Selenium: conftest.py's
`browser`), against a real server; and its files' headers, and --no-playground, over plain HTTP."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from support import start_vae_serve_http, wait_for

from vae_serve.server.http.page import FOLDER

PAGE_PIXELS = """
const canvas = arguments[0];
const context = canvas.getContext('2d');
return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data.filter((_, i) => i % 4 === 0));
"""


def _pixels(browser: webdriver.Chrome, element: object) -> np.ndarray:
    return np.array(browser.execute_script(PAGE_PIXELS, element), dtype=np.uint8)


def _canvases(browser: webdriver.Chrome, testid: str) -> list:
    return browser.find_elements(By.CSS_SELECTOR, f"[data-testid='{testid}'] canvas")


def _hosts_requested(browser: webdriver.Chrome) -> set[str]:
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            hosts.add(urlsplit(message["params"]["request"]["url"]).netloc)
    return hosts


@pytest.mark.slow
def test_playground_in_a_browser(browser, pointer, tmp_path):
    proc, _, port = start_vae_serve_http()
    url = f"http://127.0.0.1:{port}"
    try:
        browser.get(url + "/")

        def test_id(name: str) -> object:
            return browser.find_element(By.CSS_SELECTOR, f"[data-testid='{name}']")

        # Sample: the asked number of images, none blank, the grid `vae-client sample --seed` gets.
        wait_for(lambda: len(_canvases(browser, "sample-grid")) == 16, "first grid")
        count = browser.find_element(By.ID, "sample-n")
        count.clear()
        count.send_keys("24")
        seed = browser.find_element(By.ID, "sample-seed")
        seed.clear()
        seed.send_keys("7")
        test_id("sample-button").click()
        wait_for(lambda: len(_canvases(browser, "sample-grid")) == 24, "grid of 24")
        shown = np.stack([_pixels(browser, c) for c in _canvases(browser, "sample-grid")])
        assert all(tile.std() > 10 for tile in shown), "a blank sample"
        drawn = httpx.get(f"{url}/v1/sample", params={"n": 24, "seed": 7}).json()["x"]
        expected = np.round(np.clip(np.array(drawn), 0, 1) * 255)
        assert np.abs(shown - expected).max() <= 1

        # Reconstruct: strokes on the canvas give a reconstruction that is not blank.
        reconstruction = test_id("reconstruction")
        assert _pixels(browser, reconstruction).max() == 0
        assert not browser.find_element(By.ID, "ink").is_displayed()  # a grey model draws white
        strokes = pointer().move_to_element_with_offset(test_id("draw-canvas"), -40, -60)
        strokes.click_and_hold()
        for dx, dy in ((0, 30), (0, 30), (0, 30), (0, 30), (40, 0), (40, 0), (0, -60), (0, -60)):
            strokes.move_by_offset(dx, dy)
        strokes.release().perform()
        wait_for(lambda: _pixels(browser, reconstruction).std() > 10, "a reconstruction")
        wait_for(lambda: len(_canvases(browser, "posterior-samples")) == 6, "posterior draws")

        # Explore: dragging across the pad changes the decoded image.
        image = test_id("latent-image")
        wait_for(lambda: _pixels(browser, image).max() > 0, "the pad's first image")
        axes = [option.text for option in browser.find_elements(By.CSS_SELECTOR, "#axis-x option")]
        assert axes[:9] == [f"PC{i}" for i in range(1, 9)] + ["z1"]  # the card's principal directions
        before = _pixels(browser, image)
        drag = pointer().move_to_element_with_offset(test_id("latent-pad"), -80, -80)
        drag.click_and_hold()
        for _ in range(8):
            drag.move_by_offset(20, 20)
        drag.release().perform()
        wait_for(lambda: np.abs(_pixels(browser, image).astype(int) - before).max() > 30, "a new image")
        assert "updates/s" in test_id("pad-rate").text

        # Interpolate: two picked samples give a row of steps.
        picks = browser.find_elements(By.CSS_SELECTOR, "[data-testid='sample-grid'] button")
        picks[0].click()
        picks[1].click()
        wait_for(lambda: len(_canvases(browser, "interpolation")) == 8, "interpolation steps")

        assert _hosts_requested(browser) == {f"127.0.0.1:{port}"}  # no CDN, fonts or anything else
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        whole_page = "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
        browser.set_window_size(1200, browser.execute_script(whole_page))
        screenshot = tmp_path / "playground.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        # A refused request is shown, with the server's reason.
        bogus = tmp_path / "not-a-picture.png"
        bogus.write_text("hello")
        browser.find_element(By.ID, "upload").send_keys(str(bogus))
        wait_for(lambda: "Request refused (400)" in test_id("error").text, "the refusal on the page")
        assert "not a readable image" in test_id("error").text
    finally:
        proc.terminate()
        proc.wait(30)

    # The server is gone: the page says so (the stats refresh notices, and so does a click).
    test_id("sample-button").click()
    wait_for(lambda: "Cannot reach the server" in test_id("error").text, "the outage on the page")
    assert test_id("error").is_displayed()


def test_page_headers_and_types():
    proc, _, port = start_vae_serve_http()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            page = http.get("/")
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "http" not in csp
            assert page.headers["cache-control"] == "no-cache"
            scripts = [
                f"/playground/{src}" for src in ("main.js", "api.js", "sample.js", "explore.js", "images.js")
            ]
            for path in scripts:
                script = http.get(path)
                assert script.headers["content-type"] == "text/javascript; charset=utf-8", path
                again = http.get(path, headers={"if-none-match": script.headers["etag"]})
                assert again.status_code == 304
            assert http.get("/playground/style.css").headers["content-type"] == "text/css; charset=utf-8"
            missing = http.get("/playground/nothing.js")
            assert missing.status_code == 404
            assert http.get("/playground/../settings.py").status_code == 404
    finally:
        proc.terminate()
        proc.wait(30)


def test_no_playground_serves_the_apis_alone():
    proc, _, port = start_vae_serve_http("--no-playground")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/playground/main.js").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/v1/model").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_package_holds_every_file_the_page_names():
    folder = FOLDER
    html = (folder / "index.html").read_text()
    for name in ("main.js", "style.css", "favicon.svg"):
        assert f"/playground/{name}" in html
    for script in folder.glob("*.js"):
        for line in script.read_text().splitlines():
            if line.startswith("import "):
                assert (folder / line.split('"')[1]).is_file(), line
