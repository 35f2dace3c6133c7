"""One real server for the client tests, on 127.0.0.1 with ephemeral ports."""

from collections.abc import Iterator

import pytest
from support import RunningServer

from vae_serve.client import VaeClient


@pytest.fixture
def client(running: RunningServer) -> Iterator[VaeClient]:
    with VaeClient(running.target) as c:
        yield c
