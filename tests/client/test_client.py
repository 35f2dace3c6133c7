"""Both clients against a real server on loopback, checked against ONNX Runtime run directly."""

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from support import (
    DEFAULT_MODEL_DIR,
    DEFAULT_VERSION,
    PATIENCE_S,
    RunningServer,
    free_port,
    make_certificates,
    wait_for,
)

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.client import AsyncVaeClient, VaeClient, VaeServeError
from vae_serve.client._transport import Attempts

D, L = 784, 32


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, D), dtype=np.float32)


def test_sync_client_methods(client, direct):
    info = client.model_info()
    assert (info.name, info.version, info.input_dim, info.latent_dim) == (
        "fashion-vae",
        DEFAULT_VERSION,
        D,
        L,
    )
    assert info.image_shape == (28, 28) and info.max_request_rows == 8192
    assert info.server_id.endswith(f":{os.getpid()}")  # the in-process test server
    assert client.health() == "SERVING"
    assert client.health("vae.v1.VAEService") == "SERVING"
    x = pixels(5)
    mean, logvar = client.encode(x)
    want_mean, want_logvar = direct[0].run(None, {"x": x})
    np.testing.assert_allclose(mean, want_mean, atol=1e-6)
    np.testing.assert_allclose(logvar, want_logvar, atol=1e-6)
    np.testing.assert_allclose(client.decode(mean), direct[1].run(None, {"z": want_mean})[0], atol=1e-6)
    z, images = client.sample(6, seed=3, decode=True)
    assert z.shape == (6, L) and images.shape == (6, D)
    z_again, none = client.sample(6, seed=3)
    assert none is None and z_again.tobytes() == z.tobytes()
    post_z, post_x = client.sample(4, seed=1, mean=mean, logvar=logvar, decode=True)
    assert post_z.shape == (5, 4, L) and post_x.shape == (5, 4, D)
    recon = client.reconstruct(x, seed=2)
    assert recon.shape == (5, D)
    np.testing.assert_array_equal(recon, client.reconstruct(x, seed=2))


def test_the_model_card_comes_with_its_values_types(client):
    """`ModelInfo.card` is model.json as written: an int is an int (not the double a Struct carries,
    nor the string of the old map), an object a dict."""
    card = client.model_info().card
    assert card == json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert type(card["epochs"]) is int and type(card["lr"]) is float and card["image_shape"] == [28, 28]
    directions = card["principal_directions"]
    assert isinstance(directions, dict) and len(directions["vectors"]) == 8
    assert all(type(v) is float for v in directions["mean"])


def test_async_client_matches_the_sync_one(running, client):
    x = pixels(3)

    async def run():
        async with AsyncVaeClient(running.target) as aclient:
            info = await aclient.model_info()
            health = await aclient.health()
            mean, logvar = await aclient.encode(x)
            decoded = await aclient.decode(mean)
            z, images = await aclient.sample(5, seed=9, decode=True)
            recon = await aclient.reconstruct(x, seed=4)
            return info, health, mean, logvar, decoded, z, images, recon

    info, health, mean, logvar, decoded, z, _, recon = asyncio.run(run())
    assert info == client.model_info() and health == "SERVING"
    want_mean, want_logvar = client.encode(x)
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(logvar, want_logvar)
    np.testing.assert_array_equal(decoded, client.decode(want_mean))
    np.testing.assert_array_equal(z, client.sample(5, seed=9)[0])
    np.testing.assert_array_equal(recon, client.reconstruct(x, seed=4))


def test_large_batches_are_split_under_the_message_limit_in_order(running, direct):
    x = pixels(1000)  # 3.1 MB of pixels; 128 KiB messages carry 40 rows each
    with VaeClient(running.target, max_message_bytes=128 * 1024) as small:
        mean, _ = small.encode(x)
        decoded = small.decode(mean)
        z, images = small.sample(300, seed=5, decode=True)
    np.testing.assert_allclose(mean, direct[0].run(None, {"x": x})[0], atol=1e-6)
    np.testing.assert_allclose(decoded, direct[1].run(None, {"z": mean})[0], atol=1e-6)
    assert z.shape == (300, L) and images.shape == (300, D)
    assert len({row.tobytes() for row in z}) == 300  # the chunks drew different samples
    with VaeClient(running.target) as whole:  # the server's 8192-row limit splits this one
        mean, logvar = whole.encode(pixels(9000))
        assert mean.shape == logvar.shape == (9000, L)


def test_wrong_dtype_is_refused_before_anything_is_sent():
    # No server listens here: a request would end in UNAVAILABLE, not INVALID_ARGUMENT.
    with VaeClient(f"127.0.0.1:{free_port()}", retries=0, timeout=2) as nowhere:
        for call in (nowhere.encode, nowhere.decode):
            with pytest.raises(VaeServeError) as caught:
                call(np.zeros((2, 784)))
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "expected dtype float32, got float64" in caught.value.details


def test_server_errors_carry_status_and_message(client):
    with pytest.raises(VaeServeError) as caught:
        client.encode(np.full((1, D), 2.0, dtype=np.float32))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "outside [0, 1]" in caught.value.details
    assert str(caught.value).startswith("INVALID_ARGUMENT: x: row 0")


@pytest.mark.parametrize(
    ("target", "reason"),
    [("127.0.0.1:{free}", "connection refused"), ("nonexistent.invalid:50051", "name not resolved")],
)
@pytest.mark.timeout(60)  # before the fix: the whole 600 s deadline
def test_a_target_that_never_answered_fails_fast(target, reason):
    """Not the deadline (600 s here: waiting for it would trip the test's timeout), but what is wrong."""
    target = target.format(free=free_port())

    def check(caught: pytest.ExceptionInfo[VaeServeError]) -> None:
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert caught.value.details == f"nothing answers at {target} ({reason})"

    with VaeClient(target, timeout=600) as nowhere, pytest.raises(VaeServeError) as caught:
        nowhere.model_info()
    check(caught)

    async def run() -> None:
        async with AsyncVaeClient(target, timeout=600) as nowhere:
            with pytest.raises(VaeServeError) as caught:
                await nowhere.health()
            check(caught)

    asyncio.run(run())


@dataclass(frozen=True)
class Failure:
    """An attempt that failed: its code, the pause the client took before the next one (None: the
    error was final) and the time its deadline had left when it failed."""

    code: grpc.StatusCode
    pause: float | None
    left: float


@pytest.fixture
def failures(monkeypatch) -> list[Failure]:
    """Every failed attempt of any client in the test, as the client's retry schedule sees it."""
    seen: list[Failure] = []
    decide = Attempts.retry_after

    def retry_after(self: Attempts, err: grpc.RpcError) -> float:
        left = self.deadline - time.monotonic()
        try:
            pause = decide(self, err)
        except VaeServeError:
            seen.append(Failure(err.code(), None, left))
            raise
        seen.append(Failure(err.code(), pause, left))
        return pause

    monkeypatch.setattr(Attempts, "retry_after", retry_after)
    return seen


def start_after_a_failure(
    failures: list[Failure], port: int, started: list[RunningServer]
) -> threading.Thread:
    """A thread that starts a server on `port` once a client's attempt has failed for want of one."""

    def start() -> None:
        wait_for(lambda: failures, "a failed attempt")
        started.append(RunningServer(port=port))

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_retries_until_a_late_server_comes_up(failures):
    port = free_port()
    late: list[RunningServer] = []
    starter = start_after_a_failure(failures, port, late)
    try:
        # A client that has never reached its server gives up after `connect_timeout`; this one
        # is told to wait, as long as a test waits for anything, for a server known to be on its way.
        options = {"retries": 10_000, "backoff_initial": 0.05, "backoff_max": 0.5}
        options |= {"connect_timeout": PATIENCE_S, "timeout": PATIENCE_S}
        with VaeClient(f"127.0.0.1:{port}", **options) as patient:
            assert patient.model_info().name == "fashion-vae"
        assert failures[0].code is grpc.StatusCode.UNAVAILABLE  # it asked before the server was up
    finally:
        starter.join()
        for server in late:
            server.stop()


def test_no_retry_gives_unavailable_at_once(failures):
    nowhere = VaeClient(f"127.0.0.1:{free_port()}", retries=0, timeout=PATIENCE_S)
    with nowhere, pytest.raises(VaeServeError) as caught:
        nowhere.model_info()
    # One attempt, refused, and final: neither a retry nor a wait for the deadline (which would
    # have ended in DEADLINE_EXCEEDED).
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert [(f.code, f.pause) for f in failures] == [(grpc.StatusCode.UNAVAILABLE, None)]


def test_deadline_expires(running):
    with VaeClient(running.target, timeout=0.05) as hasty:
        assert hasty.model_info().latent_dim == L  # a quick call fits the deadline ...
        with pytest.raises(VaeServeError) as caught:
            hasty.sample(8192, decode=True)  # ... 8192 decoded draws (100+ ms of compute) do not
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_survives_a_server_restart_with_default_options(failures):
    port = free_port()
    first = RunningServer(port=port)
    x = pixels(64)
    with VaeClient(f"127.0.0.1:{port}") as client:
        want, _ = client.encode(x)
        first.stop()
        second: list[RunningServer] = []
        restart = start_after_a_failure(failures, port, second)
        try:
            got, _ = client.encode(x)  # refused while it is down: retried until it is back
        finally:
            restart.join()
            for server in second:
                server.stop()
    assert failures and failures[0].code is grpc.StatusCode.UNAVAILABLE
    np.testing.assert_array_equal(got, want)


def test_async_client_errors_retries_and_deadlines(running, failures):
    async def run():
        async with AsyncVaeClient(running.target, timeout=0.05) as hasty:
            await hasty.model_info()
            with pytest.raises(VaeServeError) as late:
                await hasty.sample(8192, decode=True)
            with pytest.raises(VaeServeError) as bad:
                await hasty.encode(np.full((1, D), 2.0, dtype=np.float32))
            with pytest.raises(VaeServeError) as dtype:
                await hasty.decode(np.zeros((1, L)))
        failures.clear()  # the deadline's and the refusals' above
        async with AsyncVaeClient(f"127.0.0.1:{free_port()}", retries=2, timeout=1) as nowhere:
            with pytest.raises(VaeServeError) as down:
                await nowhere.health()
        closed = AsyncVaeClient(running.target)
        await closed.close()
        with pytest.raises(VaeServeError) as after_close:
            await closed.health()
        return late.value, bad.value, dtype.value, down.value, after_close.value

    late, bad, dtype, down, after_close = asyncio.run(run())
    assert late.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert bad.code is grpc.StatusCode.INVALID_ARGUMENT and "outside [0, 1]" in bad.details
    assert dtype.code is grpc.StatusCode.INVALID_ARGUMENT and "float32" in dtype.details
    assert down.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # Each pause it took before a retry fitted in what its one-second deadline had left.
    pauses = [(f.pause, f.left) for f in failures if f.pause is not None]
    assert all(pause < left for pause, left in pauses), failures
    assert after_close.code is grpc.StatusCode.FAILED_PRECONDITION


def test_async_client_splits_large_batches(running, direct):
    x = pixels(300)

    async def run():
        async with AsyncVaeClient(running.target, max_message_bytes=128 * 1024) as small:
            return await small.encode(x)

    mean, _ = asyncio.run(run())
    np.testing.assert_allclose(mean, direct[0].run(None, {"x": x})[0], atol=1e-6)


def test_closed_sync_client_says_so(running):
    client = VaeClient(running.target)
    client.close()
    with pytest.raises(VaeServeError) as caught:
        client.health()
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_tls_and_mutual_tls(certificates):
    c = certificates
    tls = RunningServer(tls_cert=c["server.pem"], tls_key=c["server.key"])
    try:
        with VaeClient(tls.target, root_certificates=c["ca.pem"]) as trusted:
            assert trusted.health() == "SERVING"
        with VaeClient(tls.target, retries=0, timeout=2) as plain, pytest.raises(VaeServeError) as caught:
            plain.health()
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        tls.stop()
    mutual = RunningServer(tls_cert=c["server.pem"], tls_key=c["server.key"], tls_client_ca=c["ca.pem"])
    try:
        identity = {"certificate_chain": c["client.pem"], "private_key": c["client.key"]}
        with VaeClient(mutual.target, root_certificates=c["ca.pem"], **identity) as known:
            assert known.model_info().name == "fashion-vae"
        anonymous = VaeClient(mutual.target, root_certificates=c["ca.pem"], retries=0, timeout=2)
        with anonymous, pytest.raises(VaeServeError) as caught:
            anonymous.health()
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        mutual.stop()


@pytest.fixture(scope="module")
def small_rows() -> Iterator[RunningServer]:
    """A server that takes at most 50 rows (N, or N*K draws) per request."""
    server = RunningServer(max_request_rows=50)
    yield server
    server.stop()


@pytest.mark.parametrize("k", [7, 120])  # N*K over the row limit; K alone over it
def test_posterior_sampling_is_split_to_the_server_limits_and_reassembled(small_rows, client, k):
    mean = np.repeat(np.arange(9, dtype=np.float32)[:, None], L, axis=1)  # row i: all i
    tight = np.full_like(mean, -30.0)  # exp(-15) spread: each draw sits on its row's mean
    with VaeClient(small_rows.target) as split:
        z, x = split.sample(k, seed=11, mean=mean, logvar=tight, decode=True)
        assert z.shape == (9, k, L) and x.shape == (9, k, D)
        np.testing.assert_allclose(z, np.broadcast_to(mean[:, None], z.shape), atol=1e-3)  # rows in order
        wide = np.zeros_like(mean)
        z, x = split.sample(k, seed=11, mean=mean, logvar=wide, decode=True)
        z_again, x_again = split.sample(k, seed=11, mean=mean, logvar=wide, decode=True)
    np.testing.assert_array_equal(z, z_again)
    np.testing.assert_array_equal(x, x_again)

    async def from_async() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncVaeClient(small_rows.target) as c:
            return await c.sample(k, seed=11, mean=mean, logvar=wide, decode=True)

    z_async, x_async = asyncio.run(from_async())
    np.testing.assert_array_equal(z_async, z)
    np.testing.assert_array_equal(x_async, x)
    assert len({row.tobytes() for row in z.reshape(-1, L)}) == 9 * k  # no slice repeats another's noise
    # The first request keeps the seed: it matches one unsplit call for the same rows and draws.
    first_rows, first_k = (1, 50) if k > 50 else (50 // k, k)
    z_one, x_one = client.sample(
        first_k, seed=11, mean=mean[:first_rows], logvar=wide[:first_rows], decode=True
    )
    np.testing.assert_array_equal(z[:first_rows, :first_k], z_one)
    np.testing.assert_allclose(x[:first_rows, :first_k], x_one, atol=1e-6)


def test_the_twins_have_the_same_methods_and_signatures():
    import inspect

    public = {n for n in dir(VaeClient) if not n.startswith("_")} - {"close"}
    assert public == {n for n in dir(AsyncVaeClient) if not n.startswith("_")} - {"close"}
    for name in public:
        assert inspect.signature(getattr(VaeClient, name)) == inspect.signature(
            getattr(AsyncVaeClient, name)
        ), name


def test_sample_takes_its_options_by_keyword_only(running):
    with VaeClient(running.target) as client, pytest.raises(TypeError):
        client.sample(4, 7)  # was seed=7 by position: too easy to mix up with mean or decode


def test_a_value_error_inside_a_call_is_not_called_a_closed_client(running, monkeypatch):
    with VaeClient(running.target) as client:
        monkeypatch.setattr(client, "_stub", type("Stub", (), {"GetModelInfo": _raise_value_error})())
        with pytest.raises(ValueError, match="not about closing"):
            client.model_info()


def _raise_value_error(*_args: object, **_kwargs: object) -> None:
    raise ValueError("not about closing")


def test_many_requests_on_one_stream_answer_as_the_unary_calls_do(running, direct):
    """Each item its own request on one stream (a large one split under the message limit), every
    answer in its item's place, as `encode` and `decode` give them."""
    zs = [np.random.default_rng(i).standard_normal((i % 3 + 1, L), dtype=np.float32) for i in range(40)]
    zs.append(np.random.default_rng(99).standard_normal((100, L), dtype=np.float32))  # 313 KB out
    xs = [pixels(n) for n in (1, 5, 60)]
    with VaeClient(running.target, max_message_bytes=128 * 1024) as small:
        decoded = small.decode_many(zs)
        encoded = small.encode_many(iter(xs))  # any iterable
        assert small.decode_many([]) == []

        async def aio() -> list[np.ndarray]:
            async with AsyncVaeClient(running.target, max_message_bytes=128 * 1024) as client:
                return await client.decode_many(zs)

        decoded_aio = asyncio.run(aio())
    for z, x, x_aio in zip(zs, decoded, decoded_aio, strict=True):
        np.testing.assert_allclose(x, direct[1].run(None, {"z": z})[0], atol=1e-6)
        np.testing.assert_array_equal(x, x_aio)
    for x, (mean, logvar) in zip(xs, encoded, strict=True):
        want_mean, want_logvar = direct[0].run(None, {"x": x})
        np.testing.assert_allclose(mean, want_mean, atol=1e-6)
        np.testing.assert_allclose(logvar, want_logvar, atol=1e-6)


def test_a_refusal_on_the_stream_is_the_calls_error(running):
    with VaeClient(running.target) as client:
        with pytest.raises(VaeServeError) as bad:
            client.encode_many([pixels(2), np.full((1, D), 2.0, dtype=np.float32)])
        with pytest.raises(VaeServeError) as wrong:
            client.decode_many([np.zeros((1, L), np.float32), np.zeros(L, np.float32)])
    with VaeClient(running.target, model_version="99") as pinned, pytest.raises(VaeServeError) as missing:
        pinned.decode_many([np.zeros((1, L), np.float32)])
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT and "outside [0, 1]" in bad.value.details
    assert wrong.value.code is grpc.StatusCode.INVALID_ARGUMENT and "zs[1]" in wrong.value.details
    assert missing.value.code is grpc.StatusCode.NOT_FOUND and "99" in missing.value.details


def test_a_stream_survives_a_server_restart(failures):
    port = free_port()
    first = RunningServer(port=port)
    zs = [np.full((1, L), i / 10, np.float32) for i in range(20)]
    with VaeClient(f"127.0.0.1:{port}") as client:
        want = client.decode_many(zs)
        first.stop()
        second: list[RunningServer] = []
        restart = start_after_a_failure(failures, port, second)
        try:
            got = client.decode_many(zs)  # refused while it is down: sent again once it is back
        finally:
            restart.join()
            for server in second:
                server.stop()
    assert failures and failures[0].code is grpc.StatusCode.UNAVAILABLE
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_requests_refused_unavailable_are_sent_again():
    """A draining server refuses a request UNAVAILABLE: that one goes again, the answered do not;
    any other refusal is final."""
    from vae_serve.client._stream import StreamCalls

    calls = StreamCalls([[vae_pb2.StreamRequest(decode=vae_pb2.DecodeRequest())] for _ in range(3)])
    assert [r.id for r in calls.unanswered()] == ["0.0", "1.0", "2.0"]
    calls.take(vae_pb2.StreamResponse(id="0.0", decode=vae_pb2.DecodeResponse(model_version="2")))
    draining = vae_pb2.StreamError(code=grpc.StatusCode.UNAVAILABLE.value[0], message="draining")
    calls.take(vae_pb2.StreamResponse(id="2.0", error=draining))
    assert calls.refused is not None and calls.refused.details() == "draining" and not calls.done
    assert [r.id for r in calls.unanswered()] == ["1.0", "2.0"] and calls.refused is None
    with pytest.raises(VaeServeError) as final:
        calls.take(vae_pb2.StreamResponse(id="1.0", error=vae_pb2.StreamError(code=8, message="full")))
    assert final.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and final.value.details == "full"
    with pytest.raises(VaeServeError, match="an answer to no request sent"):
        calls.take(vae_pb2.StreamResponse(id="7.0"))
    unreadable = vae_pb2.StreamError(code=3, message="request is not a valid vae.v1.StreamRequest")
    with pytest.raises(VaeServeError) as said:  # the server's reason, though it comes with no id
        calls.take(vae_pb2.StreamResponse(id="", error=unreadable))
    assert said.value.code is grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in said.value.details
