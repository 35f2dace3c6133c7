"""Fixtures for the server tests: one real server per module, on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from support import RunningServer

from vae_serve._proto.vae.v1 import vae_pb2_grpc


@pytest.fixture(scope="module")
def channel(running: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(running.target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> vae_pb2_grpc.VAEServiceStub:
    return vae_pb2_grpc.VAEServiceStub(channel)
