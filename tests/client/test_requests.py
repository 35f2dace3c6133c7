"""The clients' shared, I/O-free logic: splitting, seeds, backoff, client-side checks."""

import dataclasses
import random
import types

import grpc
import numpy as np
import pytest

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.client._requests import (
    ModelInfo,
    check_float32,
    check_sample_args,
    chunk_seeds,
    decode_requests,
    encode_requests,
    merge_sample,
    rows_per_request,
    sample_requests,
)
from vae_serve.client._transport import (
    Attempts,
    ClientOptions,
    Link,
    VaeServeError,
    backoff_delays,
    connect_failure,
)
from vae_serve.tensor import to_tensor

INFO = ModelInfo("m", "1", 784, (28, 28), 32, "CPUExecutionProvider", {}, 1000, 100, 64 << 20, "host:1")


def test_the_card_is_typed_from_a_struct_and_from_an_older_servers_strings():
    typed = vae_pb2.ModelInfo()
    typed.model_card.update({"epochs": 60.0, "lr": 0.001, "shape": [28.0], "big": 2.0**60, "ok": True})
    typed.model_card["pd"] = {"std": [1.0, 0.5], "source": "test set", "none": None}
    card = ModelInfo.from_proto(typed).card
    assert card == {
        "epochs": 60,
        "lr": 0.001,
        "shape": [28],
        "big": 2.0**60,  # a double beyond 2^53 may not be the integer meant: left a float
        "ok": True,
        "pd": {"std": [1, 0.5], "source": "test set", "none": None},
    }
    assert type(card["epochs"]) is int and type(card["big"]) is float
    # A server of the last release sends the string map alone: numbers and objects as JSON text.
    older = vae_pb2.ModelInfo(card={"epochs": "60", "pd": '{"std": [1.0]}', "dataset": "Fashion-MNIST"})
    expected = {"epochs": 60, "pd": {"std": [1.0]}, "dataset": "Fashion-MNIST"}
    assert ModelInfo.from_proto(older).card == expected


def test_backoff_is_bounded_exponential_with_jitter():
    options = ClientOptions(retries=6, backoff_initial=0.1, backoff_max=1.0)
    delays = list(backoff_delays(options, random.Random(0)))
    assert len(delays) == 6
    for attempt, delay in enumerate(delays):
        assert 0 <= delay <= min(1.0, 0.1 * 2**attempt)
    assert len(set(delays)) == 6


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[0.5]], "expected a numpy array, got list"),
        (np.zeros((2, 784)), "expected dtype float32, got float64; convert with .astype(np.float32)"),
        (np.zeros(784, np.float32), "expected a 2-D array [N, width], got shape [784]"),
        (np.zeros((0, 784), np.float32), "empty batch"),
    ],
)
def test_client_side_checks(value, message):
    with pytest.raises(VaeServeError) as caught:
        check_float32(value, "x")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details


def test_rows_per_request_respects_rows_and_bytes():
    assert rows_per_request(INFO, 1 << 30, 4) == 1000  # the server's row limit
    assert rows_per_request(INFO, 64 << 10, 3136) == (64 * 1024 - 4096) // 3136  # the client's byte limit
    assert rows_per_request(INFO, 1 << 30, 100 << 20) == 1  # never zero


def test_encode_and_decode_split_in_order():
    x = np.arange(2500 * 784, dtype=np.float32).reshape(2500, 784)
    requests = list(encode_requests(x, INFO, 1 << 30))
    assert [r.x.shape[0] for r in requests] == [1000, 1000, 500]
    assert requests[1].x.data == x[1000:2000].tobytes()
    assert len(list(decode_requests(np.zeros((10, 32), np.float32), INFO, 1 << 30))) == 1
    with pytest.raises(VaeServeError, match=r"expected shape \[N, 32\], got \[10, 31\]"):
        decode_requests(np.zeros((10, 31), np.float32), INFO, 1 << 30)


def test_prior_sample_split_over_k_with_derived_seeds():
    requests = list(sample_requests(INFO, 1 << 30, 250, 7, None, None, decode=True))
    assert [r.num_samples for r in requests] == [100, 100, 50]
    assert requests[0].seed == 7
    assert len({r.seed for r in requests}) == 3
    again = list(sample_requests(INFO, 1 << 30, 250, 7, None, None, decode=True))
    assert [r.seed for r in again] == [r.seed for r in requests]
    assert not any(r.HasField("seed") for r in sample_requests(INFO, 1 << 30, 250, None, None, None, False))
    assert requests[-1].seed == again[-1].seed


def test_posterior_sample_split_over_rows():
    mean = np.zeros((25, 32), np.float32)
    requests = list(sample_requests(INFO, 1 << 30, 100, 1, mean, mean, decode=False))
    assert [r.mean.shape[0] for r in requests] == [10, 10, 5]  # 10 rows x 100 draws = the 1000-row limit
    assert [r.seed for r in requests] == chunk_seeds(1, 3)


@pytest.mark.parametrize(
    ("limits", "k", "expected"),
    [
        ((1000, 100), 101, [(10, 100), (10, 1)] * 2 + [(5, 100), (5, 1)]),  # K over max_samples
        ((50, 4096), 120, [(1, 50), (1, 50), (1, 20)] * 25),  # K alone over max_request_rows
        ((50, 4096), 7, [(7, 7)] * 3 + [(4, 7)]),  # N*K over it: rows only
    ],
)
def test_posterior_sample_split_over_rows_and_k(limits, k, expected):
    info = dataclasses.replace(INFO, max_request_rows=limits[0], max_samples=limits[1])
    mean = np.zeros((25, 32), np.float32)
    requests = list(sample_requests(info, 1 << 30, k, 5, mean, mean, decode=True))
    assert [(r.mean.shape[0], r.num_samples) for r in requests] == expected
    assert all(r.mean.shape[0] * r.num_samples <= info.max_request_rows for r in requests)
    assert [r.seed for r in requests] == chunk_seeds(5, len(requests))  # row-major, first keeps the seed


def test_posterior_split_respects_the_message_limit():
    row_bytes = 4 * (32 + 784)  # one decoded draw
    requests = list(
        sample_requests(
            INFO,
            100 * row_bytes + 4096,
            250,
            None,
            np.zeros((3, 32), np.float32),
            np.zeros((3, 32), np.float32),
            decode=True,
        )
    )
    assert [(r.mean.shape[0], r.num_samples) for r in requests] == [(1, 100), (1, 100), (1, 50)] * 3


def test_merge_sample_reassembles_rows_and_k_in_order():
    z = np.arange(5 * 7 * 2, dtype=np.float32).reshape(5, 7, 2)
    x = -z[..., :1]
    replies = [  # as sample_requests orders them: slices of 2 rows, each in slices of 3 draws
        vae_pb2.SampleResponse(z=to_tensor(z[r : r + 2, k : k + 3]), x=to_tensor(x[r : r + 2, k : k + 3]))
        for r in range(0, 5, 2)
        for k in range(0, 7, 3)
    ]
    merged_z, merged_x = merge_sample(replies, decode=True, num_samples=7)
    np.testing.assert_array_equal(merged_z, z)
    np.testing.assert_array_equal(merged_x, x)
    prior, none = merge_sample(
        [vae_pb2.SampleResponse(z=to_tensor(z[0, :3])), vae_pb2.SampleResponse(z=to_tensor(z[0, 3:]))],
        decode=False,
        num_samples=7,
    )
    np.testing.assert_array_equal(prior, z[0])
    assert none is None


@pytest.mark.parametrize(
    ("num_samples", "seed", "mean", "logvar", "message"),
    [
        (0, None, None, None, "must be between 1 and 1048576"),
        (2**32, None, None, None, "must be between 1 and 1048576"),
        (True, None, None, None, "expected an integer, got bool"),
        (2.0, None, None, None, "expected an integer, got float"),
        (1, -1, None, None, "seed: expected an integer in [0, 2**64)"),
        (1, 2**64, None, None, "seed: expected an integer in [0, 2**64)"),
        (1, None, np.zeros((1, 32), np.float32), None, "mean and logvar go together"),
        (1, None, np.zeros((1, 32)), np.zeros((1, 32)), "mean: expected dtype float32"),
    ],
)
def test_sample_arguments_are_checked_before_sending(num_samples, seed, mean, logvar, message):
    with pytest.raises(VaeServeError) as caught:
        check_sample_args(num_samples, seed, mean, logvar)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details


def test_chunk_seeds():
    assert chunk_seeds(None, 3) == [None, None, None]
    seeds = chunk_seeds(5, 3)
    assert seeds[0] == 5
    assert len(set(seeds)) == 3
    assert chunk_seeds(6, 3)[1] != seeds[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": float("inf")}, "timeout must be a finite number"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"backoff_initial": -0.1}, "backoff_initial must be a finite number >= 0"),
        ({"max_message_bytes": 100}, "max_message_bytes must be at least 65536"),
        ({"root_certificates": "/nonexistent/ca.pem"}, "root certificates /nonexistent/ca.pem not found"),
    ],
)
def test_options_refuse_what_cannot_work(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ClientOptions(**options)


class Unavailable(grpc.RpcError):
    def __init__(self, code=grpc.StatusCode.UNAVAILABLE, details="down"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


# UNAVAILABLE details as grpc 1.85 words them when no connection could be made.
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:42771: "
    "Failed to connect to remote host: Connection refused"
)
CONNECT_FAILURES = [
    (REFUSED, "connection refused"),
    (
        "errors resolving nonexistent.invalid:50051: [field:hostname lookup error:address lookup failed "
        "for nonexistent.invalid:50051: Domain name not found]",
        "name not resolved",
    ),
    ("DNS resolution failed for nowhere:1: C-ares status is not ARES_SUCCESS", "name not resolved"),
    (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:55363: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
        "WRONG_VERSION_NUMBER: Invalid certificate verification context: OK",
        "TLS handshake failed: WRONG_VERSION_NUMBER",
    ),
    (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.255.255.1:50051: "
        "Failed to connect to remote host: getsockopt(SO_ERROR): Network is unreachable",
        "Failed to connect to remote host: getsockopt(SO_ERROR): Network is unreachable",
    ),
]


@pytest.mark.parametrize(("details", "reason"), CONNECT_FAILURES)
def test_connect_failures_are_named(details, reason):
    assert connect_failure(Unavailable(details=details)) == reason


@pytest.mark.parametrize(
    "err",
    [
        Unavailable(),  # a server that answered, then went (draining, restarting)
        Unavailable(details="Socket closed"),
        Unavailable(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        Unavailable(grpc.StatusCode.INVALID_ARGUMENT, REFUSED),  # only UNAVAILABLE says so
    ],
)
def test_other_errors_are_not_connect_failures(err):
    assert connect_failure(err) is None


class Clock:
    """The retry schedule's clock, moved only by the test: its pauses take no time, and a loaded
    machine cannot change what the schedule decides."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("vae_serve.client._transport.time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_never_answered_retries_fail_fast_then_say_nothing_answers(clock):
    options = ClientOptions(
        target="h:1", timeout=600, retries=1000, backoff_initial=0.01, backoff_max=0.01, connect_timeout=0.05
    )
    attempts = Attempts(options, Link("h:1"))
    began = clock.now
    tries: list[float] = []

    def retry_until_final() -> None:
        while True:  # each retry fails fast (no wait_for_ready) until connect_timeout is spent
            tries.append(attempts.retry_after(Unavailable(details=REFUSED)))
            assert not attempts.retrying
            clock.sleep(tries[-1])

    with pytest.raises(VaeServeError) as caught:
        retry_until_final()
    # It did retry, for the window: only the pause that would have ended past it was not taken.
    assert len(tries) >= 2 and clock.now - began + 0.01 >= 0.05
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.details == "nothing answers at h:1 (connection refused)"


def test_once_answered_a_refused_connection_is_a_restart_ridden_out():
    link = Link("h:1")
    Attempts(ClientOptions(), link).succeeded()
    attempts = Attempts(ClientOptions(retries=3, connect_timeout=0), link)
    attempts.retry_after(Unavailable(details=REFUSED))
    assert attempts.retrying  # the next attempt waits for the channel to be ready


def test_no_retries_says_nothing_answers_at_once():
    with pytest.raises(VaeServeError, match=r"^UNAVAILABLE: nothing answers at h:1 \(connection refused\)$"):
        Attempts(ClientOptions(target="h:1", retries=0)).retry_after(Unavailable(details=REFUSED))


def test_attempts_retry_unavailable_within_one_deadline():
    attempts = Attempts(ClientOptions(timeout=5, retries=3, backoff_initial=0.01))
    assert not attempts.retrying
    delays = [attempts.retry_after(Unavailable()) for _ in range(3)]
    assert attempts.retrying and all(0 <= d <= 0.04 for d in delays)
    with pytest.raises(VaeServeError, match="UNAVAILABLE: down"):
        attempts.retry_after(Unavailable())  # retries used up
    assert 0 < attempts.timeout() <= 5


def test_attempts_do_not_retry_other_codes_or_past_the_deadline(clock):
    with pytest.raises(VaeServeError, match="INVALID_ARGUMENT"):
        Attempts(ClientOptions()).retry_after(Unavailable(grpc.StatusCode.INVALID_ARGUMENT))
    late = Attempts(ClientOptions(timeout=0.001))
    clock.sleep(0.002)
    with pytest.raises(VaeServeError, match="UNAVAILABLE"):
        late.retry_after(Unavailable())  # no pause ends past the deadline
    with pytest.raises(VaeServeError, match="DEADLINE_EXCEEDED"):
        late.timeout()
