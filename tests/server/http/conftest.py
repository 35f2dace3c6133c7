"""One real `vae-serve` process with HTTP for the module's tests, an httpx client for it, and a real
browser (Debian's headless Chromium, driven by Selenium) for the pages."""

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from support import start_vae_serve_http


@dataclass(frozen=True)
class HttpServer:
    url: str  # http://127.0.0.1:PORT
    address: str  # 127.0.0.1:PORT, as tritonclient takes it
    grpc_target: str


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServer]:
    proc, grpc_port, http_port = start_vae_serve_http()
    try:
        yield HttpServer(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def http(http_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.url, timeout=30) as client:
        yield client


def _chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            "chromium / chromedriver not found: `make test` installs Debian's chromium and chromium-driver"
        )
    return browser, driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,960"):
        options.add_argument(flag)
    # every request the page makes, and its console (a CSP violation or a script error lands there)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def pointer(browser: webdriver.Chrome) -> Callable[[], ActionChains]:
    """Pointer gestures whose each move takes 10 ms, not Selenium's default 250: the page reacts to
    where the pointer goes, and a drag of many steps would otherwise idle for seconds."""
    return lambda: ActionChains(browser, duration=10)
