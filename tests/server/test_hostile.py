"""What a hostile or unlucky client can try, against a real `vae-serve` process: the event loop
never stalls on one request, one client never locks the others out, and every status is a real one.

The loop is watched by `LoopProbe` (a health check every 10 ms from another process) while each
hostile request is processed; no gap may exceed LOOP_STALL_BOUND_S.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loop_probe import LOOP_STALL_BOUND_S, LoopProbe
from support import RunningServer, start_vae_serve, wait_for

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor

DECODE = "/vae.v1.VAEService/Decode"
ENCODE = "/vae.v1.VAEService/Encode"
INFER = "/inference.GRPCInferenceService/ModelInfer"
CHECK = "/grpc.health.v1.Health/Check"
BIG = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # else channels to one target share one


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", "--receive-timeout-s", "1")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def call(target: str, path: str, request: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target, options=BIG) as channel:
        try:
            channel.unary_unary(path)(request, timeout=timeout)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


# The huge messages are written on the wire directly, as an attacker would: built through the
# protobuf library each takes a second or two, inside the turn that has the machine to itself.
# The bytes are the library's (fields in number order, repeated scalars packed).
def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a message, bytes, or a packed repeated scalar."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


INPUT = oip.ModelInferRequest.InferInputTensor
OUTPUT = oip.ModelInferRequest.InferRequestedOutputTensor


def _infer_head(model: str) -> bytes:
    return oip.ModelInferRequest(model_name=model).SerializeToString()


def shape_message(entries: int, oip_request: bool) -> bytes:
    ones = b"\x01" * entries  # a shape of `entries` dimensions of 1
    if oip_request:
        tensor = INPUT(name="z", datatype="FP32").SerializeToString() + _field(3, ones)  # .shape
        return _infer_head("vae_decoder") + _field(5, tensor)  # .inputs
    return _field(1, _field(1, ones))  # DecodeRequest.z, Tensor.shape


def typed_infer(rows: int) -> bytes:
    values = _field(6, np.full(rows * 784, 0.5, "<f4").tobytes())  # InferTensorContents.fp32_contents
    tensor = INPUT(name="x", datatype="FP32", shape=[rows, 784]).SerializeToString() + _field(5, values)
    return _infer_head("vae_encoder") + _field(5, tensor)


def many_outputs(count: int) -> bytes:
    request = oip.ModelInferRequest(model_name="vae_decoder")
    request.inputs.add(name="z", datatype="FP32", shape=[1, 32])
    output = _field(6, OUTPUT(name="x").SerializeToString())  # .outputs
    return request.SerializeToString() + output * count + _field(7, np.zeros(32, np.float32).tobytes())


def encode(rows: int) -> bytes:
    x = np.full((rows, 784), 0.5, np.float32)
    return vae_pb2.EncodeRequest(x=to_tensor(x)).SerializeToString()


# (path, message, the status it must get, text its details must hold). Each message is built
# before the probe starts, so that building it cannot stall the probe.
HOSTILE = {
    "native shape of 30M entries": (
        DECODE,
        lambda: shape_message(30_000_000, False),
        "INVALID_ARGUMENT",
        "varints",
    ),
    "OIP shape of 30M entries": (
        INFER,
        lambda: shape_message(30_000_000, True),
        "INVALID_ARGUMENT",
        "varints",
    ),
    "a message over --max-message-bytes": (
        DECODE,
        lambda: shape_message(40_000_000, False),
        "RESOURCE_EXHAUSTED",
        "larger than max",
    ),
    "OIP shape of 60k entries": (
        INFER,
        lambda: shape_message(60_000, True),
        "INVALID_ARGUMENT",
        "rank 60000",
    ),
    "OIP typed contents over the row limit": (
        INFER,
        lambda: typed_infer(9000),
        "INVALID_ARGUMENT",
        "send fewer rows",
    ),
    "OIP 1M repeated outputs": (
        INFER,
        lambda: many_outputs(1_000_000),
        "INVALID_ARGUMENT",
        "repeated entries",
    ),
    "OIP typed contents at the row limit": (INFER, lambda: typed_infer(8192), "OK", ""),
    "native Encode at the row limit": (ENCODE, lambda: encode(8192), "OK", ""),
}


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("case", list(HOSTILE))
def test_one_hostile_request_never_stalls_the_event_loop(server, case):
    path, build, code, text = HOSTILE[case]
    message = build()
    with LoopProbe(server) as probe:
        got, details = call(server, path, message)
    assert (got.name, text in details) == (code, True), details
    assert len(details) < 300  # an unbounded field is never echoed back
    print(f"{case}: {len(message) / 1e6:.1f} MB, {got.name}, longest loop gap {probe.max_gap_s * 1e3:.0f} ms")
    assert probe.calls > 0
    assert probe.max_gap_s < LOOP_STALL_BOUND_S


async def _health_and_decode(target: str) -> None:
    """What every other client must still get while one holds streams open."""
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        z = to_tensor(np.zeros((1, 32), np.float32))
        decoded = await vae_pb2_grpc.VAEServiceStub(channel).Decode(vae_pb2.DecodeRequest(z=z), timeout=5)
        assert list(decoded.x.shape) == [1, 784]


@pytest.fixture
def patient_server() -> Iterator[str]:
    """A receive timeout long enough that a loaded machine opens all the silent streams (and the
    checks behind them) well within it."""
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", "--receive-timeout-s", "5")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_streams_that_never_send_their_message_hold_nothing_and_time_out(patient_server):
    server = patient_server

    async def attack() -> Counter:
        channels = [grpc.aio.insecure_channel(server, options=OWN_CONNECTION) for _ in range(20)]  # 128 each
        silent = [ch.stream_unary(path)() for ch in channels for path in (DECODE, CHECK) * 64]
        # A connection's frames arrive in order: once a check on it has ended, its silent
        # streams are open on the server. How it ends does not matter here (under load a check
        # behind 128 silent streams has ended CANCELLED); the fresh client below is the test.
        checks = [
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            for ch in channels
        ]
        await asyncio.gather(*checks, return_exceptions=True)
        await _health_and_decode(server)  # 2560 silent streams lock nobody out
        codes = Counter()
        for stream in silent:  # the server frees each after --receive-timeout-s (5 s here)
            try:
                await asyncio.wait_for(stream, 10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1
        for ch in channels:
            await ch.close()
        return codes

    codes = asyncio.run(attack())
    # Every silent stream ends: answered DEADLINE_EXCEEDED, or, when that answer races the
    # stream the client never closed, reset (CANCELLED) by the client's own transport.
    assert set(codes) <= {"DEADLINE_EXCEEDED", "CANCELLED"}, codes
    assert codes["DEADLINE_EXCEEDED"] > 0.9 * 2560, codes


WATCHER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

async def main(target, count):
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(10)]
    watches = [health_pb2_grpc.HealthStub(channels[i % 10]).Watch(health_pb2.HealthCheckRequest())
               for i in range(count)]
    for watch in watches:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.slow
def test_open_health_watches_lock_nobody_out():
    # Three times as many watches as data-plane slots: none of them takes one.
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", "--max-concurrent-rpcs", "256")
    target = f"127.0.0.1:{port}"
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, target, "768"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout.readline().strip() == "open"  # 768 watches open on the server
        asyncio.run(_health_and_decode(target))
    finally:
        watcher.communicate("\n", timeout=30)
        proc.terminate()
        assert proc.wait(30) == 0


def test_watches_say_not_serving_then_end_when_the_server_stops():
    running = RunningServer()
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            first, second = (stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2))
            assert next(first).status == next(second).status == health_pb2.HealthCheckResponse.SERVING
            first.cancel()  # one watch ending must not leave its sibling deaf
            running.stop(grace=5)
            assert next(second).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                next(second)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


@pytest.mark.timing  # what it checks must happen within the second the four Decodes wait
def test_data_plane_admission_spares_control_calls():
    # Four Decodes wait up to a second for company in the batcher: every data-plane slot is taken.
    running = RunningServer(
        max_concurrent_rpcs=4, queue_delay_policy="fixed", max_queue_delay_us=1_000_000, max_batch_size=64
    )
    z = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, 32), np.float32)))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            held = [stub.Decode.future(z, timeout=10) for _ in range(4)]
            activity = running.server.dataplane.activity
            wait_for(lambda: activity.working == 4, "four calls at work")
            with pytest.raises(grpc.RpcError) as caught:
                stub.Decode(z, timeout=5)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-rpcs" in caught.value.details()
            assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5).name == "fashion-vae"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert all(list(f.result().x.shape) == [1, 784] for f in held)
            assert activity.working == 0
    finally:
        running.stop()


def test_a_thousand_idle_metrics_connections_delay_no_scrape():
    """Idle sockets give way to a scrape (the metrics port has the HTTP port's bounds), and the
    metrics port takes no thread from the data plane, however many connect."""
    running = RunningServer()
    idle: list[socket.socket] = []
    try:
        threads_before = threading.active_count()
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", running.server.metrics_port), timeout=10))
        assert threading.active_count() == threads_before
        for _ in range(20):  # each within Prometheus's own scrape timeout, with every socket still open
            with urllib.request.urlopen(running.metrics_url, timeout=2) as scrape:
                assert b"vae_serve_requests_total" in scrape.read()
        with grpc.insecure_channel(running.target, options=BIG) as channel:
            reply = vae_pb2_grpc.VAEServiceStub(channel).Encode(vae_pb2.EncodeRequest.FromString(encode(512)))
            assert list(reply.mean.shape) == [512, 32]
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(running.metrics_url.replace("/metrics", "/"), timeout=2)
        assert caught.value.code == 404
    finally:
        for conn in idle:
            conn.close()
        running.stop()


@pytest.mark.parametrize(
    "path",
    [
        CHECK,
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
def test_garbage_to_health_and_reflection_is_invalid_argument(running, path):
    with grpc.insecure_channel(running.target) as channel:
        if path.endswith("ServerReflectionInfo"):
            call_ = channel.stream_stream(path)(iter([b"\xff\xff\xff"]), timeout=5)
            with pytest.raises(grpc.RpcError) as caught:
                list(call_)
        elif path.endswith("Watch"):
            with pytest.raises(grpc.RpcError) as caught:
                list(channel.unary_stream(path)(b"\xff\xff\xff", timeout=5))
        else:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(path)(b"\xff\xff\xff", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request is not a valid grpc.")
    assert not any(name in caught.value.details() for name in ("DecodeError", "Exception", "Unexpected"))


def test_an_idle_connection_is_closed_by_the_server():
    running = RunningServer(max_connection_idle_s=0.3)
    states: list[grpc.ChannelConnectivity] = []
    closed = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state is grpc.ChannelConnectivity.IDLE:
            closed.set()  # READY, then the server's GOAWAY: the channel goes back to IDLE

    try:
        with grpc.insecure_channel(running.target) as channel:
            vae_pb2_grpc.VAEServiceStub(channel).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
            channel.subscribe(watch)
            assert closed.wait(10), states
            channel.unsubscribe(watch)
    finally:
        running.stop()
