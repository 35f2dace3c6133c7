"""The API page at /docs in a real browser (conftest.py's headless Chromium): Swagger UI renders the
served document, lists the operations, and "Try it out" on POST /v1/decode gets a 200, with the
page's self-only Content-Security-Policy and nothing fetched from elsewhere."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from support import wait_for

from vae_serve.server.http.apidocs import CSP


def _paths_listed(browser) -> list[str]:
    return [
        e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    ]


def _hosts_requested(browser) -> set[str]:
    """Where the page's requests went; `data:` and `blob:` URLs (Swagger UI's icons, and the
    replies it shows) go nowhere."""
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme not in ("data", "blob"):
                hosts.add(url.netloc)
    return hosts


def test_swagger_ui_renders_the_document_and_tries_a_decode(browser, http_server, http):
    browser.get(http_server.url + "/docs")
    wait_for(lambda: "/v1/decode" in _paths_listed(browser), "the operations listed")
    listed = set(_paths_listed(browser))
    assert listed == set(http.get("/openapi.json").json()["paths"])
    assert {"/v1/decode", "/v2/models/{model_name}/infer", "/v1/sample"} <= listed
    assert "Unable to render this definition" not in browser.page_source

    decode = browser.find_element(
        By.XPATH, "//div[contains(@class, 'opblock-post')][.//*[@data-path='/v1/decode']]"
    )
    decode.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait_for(lambda: decode.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "Try it out")
    decode.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    wait_for(lambda: decode.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"), "the body")
    body = json.loads(
        decode.find_element(By.CSS_SELECTOR, "textarea.body-param__text").get_attribute("value")
    )
    latent_dim = http.get("/v1/model").json()["latent_dim"]
    assert [len(row) for row in body["z"]] == [latent_dim]  # the example, kept as it is
    decode.find_element(By.CSS_SELECTOR, ".execute").click()

    def status() -> str:
        shown = decode.find_elements(By.CSS_SELECTOR, ".live-responses-table .response .response-col_status")
        return shown[0].text.strip() if shown else ""

    wait_for(status, "the response shown")
    assert status() == "200"
    shown = decode.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response .response-col_description"
    ).text
    assert '"model_version"' in shown

    assert _hosts_requested(browser) == {urlsplit(http_server.url).netloc}  # no CDN, nothing else
    console = browser.get_log("browser")
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == [], console


def test_the_page_and_its_files_come_from_here_under_a_self_only_policy(http):
    page = http.get("/docs")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "script-src 'self';" in CSP and "http" not in CSP
    assert "swagger-ui-bundle.js" in page.text and "<script>" not in page.text  # nothing inline
    for asset, kind in (
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("swagger-ui.css", "text/css; charset=utf-8"),
        ("favicon.png", "image/png"),
        ("start.js", "text/javascript; charset=utf-8"),
    ):
        reply = http.get(f"/docs/assets/{asset}")
        assert reply.status_code == 200 and reply.headers["content-type"] == kind, asset
    # Swagger UI 5: the first to read the OpenAPI 3.1 that FastAPI writes
    bundle = http.get("/docs/assets/swagger-ui-bundle.js").text
    assert 'PACKAGE_VERSION:"5.' in bundle
    assert http.get("/docs/assets/nothing.js").status_code == 404
