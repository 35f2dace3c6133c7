"""What several test folders share: where things are, and a real server to talk to."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from vae_serve.server.app import VaeServer
from vae_serve.server.metrics import Metrics
from vae_serve.server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = REPOSITORY / "fashion-vae" / "1"


class RunningServer:
    """Starts a VaeServer on its own event loop thread; `stop()` drains it like SIGTERM would."""

    def __init__(self, **overrides: object) -> None:
        settings = Settings(
            host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, model_repository=REPOSITORY,
            **overrides,
        )  # fmt: skip
        self.server = VaeServer(settings, Metrics())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())
        self.target = f"127.0.0.1:{self.server.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def call(self, coro: object, timeout: float = 60) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.loop.is_running():
            self.call(self.server.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
