"""The playground's latent pad, live: how many decoded updates a second a moving pointer gets.

    python bench/playground_pad.py [--duration 5] [--moves-per-s 120]

Starts `vae-serve` on a free loopback port and Debian's headless Chromium on its page, then moves
the pointer over the pad (synthetic pointer events, faster than the server answers) for
`--duration` seconds. The page coalesces moves (one decode in flight, the latest position next),
so the figure is what a person sees: updates a second, and each update's round trip as the
browser's Resource Timing records it (fetch, server, JSON), on an otherwise idle server.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from _test_support import start_server_ports
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

DRIVE = r"""
const [seconds, perSecond, done] = arguments;
const pad = document.querySelector("[data-testid='latent-pad']");
const box = pad.getBoundingClientRect();
performance.setResourceTimingBufferSize(100000);
performance.clearResourceTimings();
const start = performance.now();
let moves = 0;
const timer = setInterval(() => {
  const t = (performance.now() - start) / 1000;
  const [x, y] = [0.5 + 0.45 * Math.cos(2 * t), 0.5 + 0.45 * Math.sin(3 * t)];
  pad.dispatchEvent(new PointerEvent("pointermove", {
    clientX: box.left + x * box.width, clientY: box.top + y * box.height, bubbles: true,
  }));
  moves += 1;
  if (t >= seconds) {
    clearInterval(timer);
    setTimeout(() => {
      const decode = /\/v1\/(models\/[^/]+\/)?decode$/;  // the default model's route, or a named one's
      const decodes = performance.getEntriesByType("resource").filter((e) => decode.test(e.name));
      done({ moves, round_trips_ms: decodes.map((e) => e.duration), seconds });
    }, 500);
  }
}, 1000 / perSecond);
"""


def drive(browser: webdriver.Chrome, url: str, seconds: float, moves_per_s: float) -> dict:
    browser.set_script_timeout(seconds + 30)
    browser.get(url)
    deadline = time.monotonic() + 30
    while "updates/s" not in browser.find_element(By.ID, "pad-rate").text:  # the first decode is drawn
        assert time.monotonic() < deadline, "the pad never drew"
        time.sleep(0.05)
    return browser.execute_async_script(DRIVE, seconds, moves_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--moves-per-s", type=float, default=120.0)
    args = parser.parse_args()
    cmd = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1"]
    cmd += ["--metrics-port", "0", "--http-host", "127.0.0.1", "--http-port", "0"]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    proc, (port,) = start_server_ports(cmd, r"serving on .*HTTP on 127\.0\.0\.1:(\d+)")
    try:
        browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            result = drive(browser, f"http://127.0.0.1:{port}/", args.duration, args.moves_per_s)
        finally:
            browser.quit()
    finally:
        proc.terminate()
        proc.wait(30)
    trips = sorted(result["round_trips_ms"])
    if not trips:
        raise SystemExit("the page made no decode requests while the pointer moved")
    p99 = trips[min(len(trips) - 1, int(0.99 * len(trips)))]
    print("| pointer moves/s | decodes | updates/s | round trip p50 ms | round trip p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    seconds = result["seconds"]
    print(
        f"| {result['moves'] / seconds:.0f} | {len(trips)} | {len(trips) / seconds:.0f} | "
        f"{statistics.median(trips):.1f} | {p99:.1f} |"
    )


if __name__ == "__main__":
    main()
