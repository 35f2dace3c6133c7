"""The playground's model picker in a real browser (conftest.py's `browser`): shown when several
models are served, each model's pictures drawn in its own shape, its requests sent to its own
routes; hidden when one model is served."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from support import start_vae_serve_http, wait_for
from two_models import GREY, RGB, two_models


def _tiles(browser: webdriver.Chrome) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "[data-testid='sample-grid'] canvas")


def _sizes(browser: webdriver.Chrome, testid: str) -> set[tuple[int, int]]:
    """(height, width) of every canvas under `testid`."""
    canvases = browser.find_elements(By.CSS_SELECTOR, f"[data-testid='{testid}'] canvas")
    return {(int(c.get_attribute("height")), int(c.get_attribute("width"))) for c in canvases}


def _paths_requested(browser: webdriver.Chrome) -> set[str]:
    paths = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            paths.add(urlsplit(message["params"]["request"]["url"]).path)
    return paths


@pytest.mark.slow
def test_the_picker_switches_models_and_the_page_follows_its_shape(browser, pointer, tmp_path):
    root = two_models(tmp_path)
    proc, _, port = start_vae_serve_http("--model-repository", str(root), "--default-model", GREY)
    url = f"http://127.0.0.1:{port}/"
    try:
        browser.get(url)
        wait_for(lambda: len(_tiles(browser)) == 16, "the default model's grid")
        picker = Select(browser.find_element(By.CSS_SELECTOR, "[data-testid='model-picker']"))
        assert browser.find_element(By.ID, "model-choice").is_displayed()
        assert [o.get_attribute("value") for o in picker.options] == [GREY, RGB]
        assert picker.first_selected_option.get_attribute("value") == GREY
        assert _sizes(browser, "sample-grid") == {(2, 3)}  # grey [2, 3]
        assert not browser.find_element(By.ID, "ink").is_displayed()  # a grey model draws white
        assert {"/v1/models", "/v1/models/grey", "/v1/models/grey/decode"} <= _paths_requested(browser)

        picker.select_by_value(RGB)  # the page again, for rgb
        wait_for(lambda: urlsplit(browser.current_url).query == "model=rgb", "the page for rgb")
        wait_for(lambda: _sizes(browser, "sample-grid") == {(2, 2)}, "rgb's grid")  # rgb [2, 2, 3]
        assert len(_tiles(browser)) == 16
        picker = Select(browser.find_element(By.CSS_SELECTOR, "[data-testid='model-picker']"))
        assert picker.first_selected_option.get_attribute("value") == RGB
        assert browser.find_element(By.ID, "model-name").text.startswith("rgb v1 (latent 3)")
        assert browser.find_element(By.ID, "ink").is_displayed()  # a colour model takes an ink

        strokes = pointer().move_to_element_with_offset(
            browser.find_element(By.CSS_SELECTOR, "[data-testid='draw-canvas']"), -40, -40
        )
        strokes.click_and_hold()
        for dx, dy in ((0, 30), (30, 0), (0, 30)):
            strokes.move_by_offset(dx, dy)
        strokes.release().perform()
        wait_for(lambda: len(_sizes(browser, "posterior-samples")) == 1, "rgb's posterior draws")
        assert _sizes(browser, "posterior-samples") == {(2, 2)}
        reconstruction = browser.find_element(By.CSS_SELECTOR, "[data-testid='reconstruction']")
        assert (reconstruction.get_attribute("height"), reconstruction.get_attribute("width")) == ("2", "2")
        requested = _paths_requested(browser)
        assert {"/v1/models/rgb/sample", "/v1/models/rgb/decode", "/v1/models/rgb/reconstruct"} <= requested
        assert not any(path.startswith("/v1/models/grey") for path in requested)  # since the switch
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        assert not browser.find_element(By.CSS_SELECTOR, "[data-testid='error']").is_displayed()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_one_model_served_shows_no_picker(browser, tmp_path):
    root = two_models(tmp_path)
    proc, _, port = start_vae_serve_http("--model-repository", str(root), "--model", RGB)
    try:
        browser.get(f"http://127.0.0.1:{port}/?model=grey")  # not served: the only one is used instead
        wait_for(lambda: _sizes(browser, "sample-grid") == {(2, 2)}, "the only model's grid")
        assert not browser.find_element(By.ID, "model-choice").is_displayed()
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        proc.terminate()
        proc.wait(30)
