"""The clients' shared, I/O-free logic: splitting, seeds, backoff, client-side checks."""

import random

import grpc
import numpy as np
import pytest

from vae_serve.client._common import (
    ClientOptions,
    ModelInfo,
    VaeServeError,
    backoff_delays,
    check_float32,
    chunk_seeds,
    decode_requests,
    encode_requests,
    rows_per_request,
    sample_requests,
)

INFO = ModelInfo("m", "1", 784, (28, 28), 32, "CPUExecutionProvider", {}, 1000, 100, 64 << 20)


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
    requests = encode_requests(x, INFO, 1 << 30)
    assert [r.x.shape[0] for r in requests] == [1000, 1000, 500]
    assert requests[1].x.data == x[1000:2000].tobytes()
    assert len(decode_requests(np.zeros((10, 32), np.float32), INFO, 1 << 30)) == 1
    with pytest.raises(VaeServeError, match=r"expected shape \[N, 32\], got \[10, 31\]"):
        decode_requests(np.zeros((10, 31), np.float32), INFO, 1 << 30)


def test_prior_sample_split_over_k_with_derived_seeds():
    requests = sample_requests(INFO, 1 << 30, 250, 7, None, None, decode=True)
    assert [r.num_samples for r in requests] == [100, 100, 50]
    assert requests[0].seed == 7
    assert len({r.seed for r in requests}) == 3
    again = sample_requests(INFO, 1 << 30, 250, 7, None, None, decode=True)
    assert [r.seed for r in again] == [r.seed for r in requests]
    assert not any(r.HasField("seed") for r in sample_requests(INFO, 1 << 30, 250, None, None, None, False))


def test_posterior_sample_split_over_rows():
    mean = np.zeros((25, 32), np.float32)
    requests = sample_requests(INFO, 1 << 30, 100, 1, mean, mean, decode=False)
    assert [r.mean.shape[0] for r in requests] == [10, 10, 5]  # 10 rows x 100 draws = the 1000-row limit
    with pytest.raises(VaeServeError, match="above the server's limit of 100"):
        sample_requests(INFO, 1 << 30, 101, 1, mean, mean, decode=False)
    with pytest.raises(VaeServeError, match="mean and logvar go together"):
        sample_requests(INFO, 1 << 30, 1, 1, mean, None, decode=False)


def test_chunk_seeds():
    assert chunk_seeds(None, 3) == [None, None, None]
    seeds = chunk_seeds(5, 3)
    assert seeds[0] == 5
    assert len(set(seeds)) == 3
    assert chunk_seeds(6, 3)[1] != seeds[1]


def test_options_refuse_infinite_or_negative():
    with pytest.raises(ValueError, match="timeout must be positive"):
        ClientOptions(timeout=0)
    with pytest.raises(ValueError, match="retries"):
        ClientOptions(retries=-1)
