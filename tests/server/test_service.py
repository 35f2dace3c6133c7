"""The native API over real gRPC on loopback, against ONNX Runtime run directly on the same graphs."""

from __future__ import annotations

import gc
import json
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support import DEFAULT_MODEL_DIR, DEFAULT_VERSION, REPOSITORY, RunningServer, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.protocol.prior import read_prior
from vae_serve.tensor import from_tensor, to_tensor

V1_DIR = REPOSITORY / "fashion-vae" / "1"  # version 1: its card names no prior, so N(0, I)
D, L = 784, 32


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, D), dtype=np.float32)


@pytest.mark.parametrize("n", [1, 7, 256, 300])
def test_encode_and_decode_equal_onnx_runtime(stub, direct, n):
    x = pixels(n)
    reply = stub.Encode(vae_pb2.EncodeRequest(x=to_tensor(x)))
    mean, logvar = from_tensor(reply.mean, "mean"), from_tensor(reply.logvar, "logvar")
    want_mean, want_logvar = direct[0].run(["mean", "logvar"], {"x": x})
    np.testing.assert_allclose(mean, want_mean, atol=1e-6, rtol=0)
    np.testing.assert_allclose(logvar, want_logvar, atol=1e-6, rtol=0)
    decoded = from_tensor(stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(mean))).x, "x")
    np.testing.assert_allclose(decoded, direct[1].run(["x"], {"z": want_mean})[0], atol=1e-6, rtol=0)
    assert decoded.shape == (n, D)
    assert decoded.min() >= 0 and decoded.max() <= 1


def sample(stub, **fields) -> tuple[np.ndarray, np.ndarray | None]:
    reply = stub.Sample(vae_pb2.SampleRequest(**fields))
    return from_tensor(reply.z, "z"), from_tensor(reply.x, "x") if reply.x.shape else None


def test_seeded_samples_are_bit_identical_and_unseeded_differ(stub):
    a_z, a_x = sample(stub, num_samples=16, seed=7, decode=True)
    b_z, b_x = sample(stub, num_samples=16, seed=7, decode=True)
    assert a_z.tobytes() == b_z.tobytes() and a_x.tobytes() == b_x.tobytes()
    assert sample(stub, num_samples=16, seed=8)[0].tobytes() != a_z.tobytes()
    assert sample(stub, num_samples=16)[0].tobytes() != sample(stub, num_samples=16)[0].tobytes()


@pytest.fixture(scope="module")
def v1_stub() -> Iterator[vae_pb2_grpc.VAEServiceStub]:
    """A server pinned to version 1 (--model-version 1), whose card names no prior."""
    server = RunningServer(model_version="1")
    try:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(server.target, options=options) as channel:
            yield vae_pb2_grpc.VAEServiceStub(channel)
    finally:
        server.stop()


def test_prior_draws_are_standard_normal(v1_stub):
    """A card without a prior: Sample draws from N(0, I)."""
    assert "prior" not in json.loads((V1_DIR / "model.json").read_text())
    assert v1_stub.GetModelInfo(vae_pb2.GetModelInfoRequest()).version == "1"
    k = 4096
    z, x = sample(v1_stub, num_samples=k, seed=1, decode=True)
    assert z.shape == (k, L) and x.shape == (k, D)
    # Per dimension: the sample mean has sd 1/sqrt(K) = 0.016 and the sample variance sd
    # sqrt(2/K) = 0.022; 5 sd keeps a false alarm below 1e-5 over all 32 dimensions.
    assert np.abs(z.mean(0)).max() < 5 / np.sqrt(k)
    assert np.abs(z.var(0) - 1).max() < 5 * np.sqrt(2 / k)
    decoder = ort.InferenceSession(str(V1_DIR / "decoder.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(x[:5], decoder.run(["x"], {"z": z[:5]})[0], atol=1e-6)


def test_prior_draws_follow_the_cards_mixture(stub, direct):
    """The default version's card names a mixture of Gaussians: a seeded Sample draws exactly what
    that prior draws from a generator with the same seed, and the draws have the mixture's mean and
    variance (worked out here from the card alone)."""
    card = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert card["prior"]["type"] == "mixture_of_gaussians" and card["prior"]["components"] == 24
    k, seed = 4096, 1
    z, x = sample(stub, num_samples=k, seed=seed, decode=True)
    assert z.shape == (k, L) and x.shape == (k, D)
    assert z.tobytes() == read_prior(card, L).draw(k, np.random.default_rng(seed)).tobytes()
    # The mixture's moments per dimension, from the card's weights, means and logvars.
    w = np.asarray(card["prior"]["weights"], np.float64)
    w = w[:, None] / w.sum()
    means, variances = np.asarray(card["prior"]["means"]), np.exp(np.asarray(card["prior"]["logvars"]))
    mean = (w * means).sum(0)
    d = means - mean
    var = (w * (variances + d**2)).sum(0)
    fourth = (w * (d**4 + 6 * d**2 * variances + 3 * variances**2)).sum(0)  # central 4th moment
    # 5 sd of the sample mean (var / K) and of the sample variance ((m4 - var^2) / K), per dimension.
    assert (np.abs(z.mean(0) - mean) < 5 * np.sqrt(var / k)).all()
    assert (np.abs(z.var(0) - var) < 5 * np.sqrt((fourth - var**2) / k)).all()
    np.testing.assert_allclose(x[:5], direct[1].run(["x"], {"z": z[:5]})[0], atol=1e-6)


def test_posterior_draws_follow_mean_and_logvar(stub, direct):
    k = 4096
    mean = np.stack([np.linspace(-2, 2, L), np.zeros(L)]).astype(np.float32)
    logvar = np.stack([np.full(L, -2.0), np.linspace(-1, 1, L)]).astype(np.float32)
    z, x = sample(stub, num_samples=k, seed=3, mean=to_tensor(mean), logvar=to_tensor(logvar), decode=True)
    assert z.shape == (2, k, L) and x.shape == (2, k, D)
    sd = np.exp(logvar / 2)
    assert (np.abs(z.mean(1) - mean) < 5 * sd / np.sqrt(k)).all()
    assert (np.abs(z.var(1) / sd**2 - 1) < 5 * np.sqrt(2 / k)).all()
    np.testing.assert_allclose(x[1, :3], direct[1].run(["x"], {"z": z[1, :3]})[0], atol=1e-6)


def test_model_info(stub, running):
    info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
    assert (info.name, info.version) == ("fashion-vae", DEFAULT_VERSION)
    assert (info.input_dim, list(info.image_shape), info.latent_dim) == (D, [28, 28], L)
    assert info.execution_provider == "CPUExecutionProvider"
    assert float(info.card["test_neg_elbo_nats"]) < 238
    limits = info.limits
    assert (limits.max_request_rows, limits.max_samples, limits.max_message_bytes) == (8192, 4096, 32 << 20)


def test_model_info_carries_the_card_typed(stub):
    """model_card is model.json itself: numbers are numbers, objects are objects (a Struct's numbers
    are doubles, which JSON's are too)."""
    info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
    assert info.HasField("model_card")
    card = info.model_card
    assert card["epochs"] == 40 and card["lr"] == 0.002 and list(card["image_shape"]) == [28, 28]
    directions = card["principal_directions"]
    assert len(directions["mean"]) == L and len(directions["vectors"]) == len(directions["std"]) == 8
    written = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert json_format.MessageToDict(card) == written
    # The string map stays for the clients of the last release, deprecated, with every key.
    assert set(info.card) == set(written) and info.card["epochs"] == "40"
    assert vae_pb2.ModelInfo.DESCRIPTOR.fields_by_name["card"].GetOptions().deprecated


def bad_tensor(shape, nbytes):
    return vae_pb2.Tensor(shape=shape, data=b"\0" * nbytes)


def with_value(value: float, at=(0, 0), shape=(2, D)):
    a = np.full(shape, 0.5, dtype=np.float32)
    a[at] = value
    return to_tensor(a)


INVALID = [
    ("Encode", vae_pb2.EncodeRequest(), "x: required"),
    ("Encode", vae_pb2.EncodeRequest(x=to_tensor(np.zeros((2, 10)))), "expected shape [N, 784], got [2, 10]"),
    ("Encode", vae_pb2.EncodeRequest(x=to_tensor(np.zeros(D))), "expected shape [N, 784], got [784]"),
    (
        "Encode",
        vae_pb2.EncodeRequest(x=bad_tensor([2, D], 100)),
        "data has 100 bytes but shape [2, 784] needs 6272",
    ),
    ("Encode", vae_pb2.EncodeRequest(x=bad_tensor([-1, D], 0)), "dimensions must be in [0, 2147483647]"),
    ("Encode", vae_pb2.EncodeRequest(x=bad_tensor([1] * 65, 4)), "rank 65 is above the supported 8"),
    ("Encode", vae_pb2.EncodeRequest(x=bad_tensor([2**62, 0], 0)), "dimensions must be in"),
    ("Encode", vae_pb2.EncodeRequest(x=bad_tensor([2**31 - 1, 2**31 - 1, 0], 0)), "cannot be represented"),
    ("Encode", vae_pb2.EncodeRequest(x=to_tensor(np.zeros((0, D)))), "empty batch (N = 0)"),
    ("Encode", vae_pb2.EncodeRequest(x=with_value(np.nan, (1, 3))), "row 1 holds NaN or infinity"),
    ("Encode", vae_pb2.EncodeRequest(x=with_value(np.inf)), "row 0 holds NaN or infinity"),
    ("Encode", vae_pb2.EncodeRequest(x=with_value(1.5, (1, 0))), "row 1 has values outside [0, 1]"),
    ("Encode", vae_pb2.EncodeRequest(x=with_value(-0.1)), "outside [0, 1]"),
    ("Encode", vae_pb2.EncodeRequest(x=to_tensor(np.zeros((8193, D)))), "8193 rows exceed the limit of 8192"),
    ("Decode", vae_pb2.DecodeRequest(), "z: required"),
    ("Decode", vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, 31)))), "expected shape [N, 32], got [1, 31]"),
    ("Decode", vae_pb2.DecodeRequest(z=with_value(-np.inf, shape=(3, L))), "z: row 0 holds NaN or infinity"),
    ("Decode", vae_pb2.DecodeRequest(z=to_tensor(np.zeros((0, L)))), "z: empty batch (N = 0)"),
    ("Decode", vae_pb2.DecodeRequest(z=to_tensor(np.zeros((8193, L)))), "8193 rows exceed the limit of 8192"),
    ("Decode", vae_pb2.DecodeRequest(z=to_tensor(np.full((2, L), 3e38))), "z: values too large"),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=2, mean=to_tensor(np.zeros((1, 5))), logvar=to_tensor(np.zeros((1, 5)))
        ),
        "mean: expected shape [N, 32], got [1, 5]",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=2,
            decode=True,
            mean=to_tensor(np.full((1, L), 3e38)),
            logvar=to_tensor(np.zeros((1, L))),
        ),
        "mean: values too large",
    ),
    ("Sample", vae_pb2.SampleRequest(num_samples=0), "num_samples: must be between 1 and 4096, got 0"),
    ("Sample", vae_pb2.SampleRequest(num_samples=4097), "got 4097"),
    (
        "Sample",
        vae_pb2.SampleRequest(num_samples=1, logvar=to_tensor(np.zeros((1, L)))),
        "logvar given without mean",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(num_samples=1, mean=to_tensor(np.zeros((1, L)))),
        "mean given without logvar",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=1, mean=to_tensor(np.zeros((2, L))), logvar=to_tensor(np.zeros((1, L)))
        ),
        "logvar: shape [1, 32] must equal mean's [2, 32]",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=1, mean=to_tensor(np.zeros((1, L))), logvar=with_value(np.nan, shape=(1, L))
        ),
        "logvar: row 0 holds NaN",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=1, mean=to_tensor(np.zeros((1, L))), logvar=with_value(1e3, shape=(1, L))
        ),
        "exp(logvar / 2) overflows",
    ),
    (
        "Sample",
        vae_pb2.SampleRequest(
            num_samples=100, mean=to_tensor(np.zeros((90, L))), logvar=to_tensor(np.zeros((90, L)))
        ),
        "90 rows x 100 samples = 9000 draws exceed the limit of 8192",
    ),
]


@pytest.mark.parametrize(("method", "request_", "message"), INVALID, ids=[m for _, _, m in INVALID])
def test_invalid_requests_get_invalid_argument_and_the_server_keeps_serving(stub, method, request_, message):
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request_, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert stub.Encode(vae_pb2.EncodeRequest(x=to_tensor(pixels(1))), timeout=10).mean.shape == [1, L]


def test_message_over_the_limit_is_resource_exhausted():
    server = RunningServer(max_message_bytes=64 * 1024)
    try:
        with grpc.insecure_channel(server.target) as ch:
            small = vae_pb2_grpc.VAEServiceStub(ch)
            with pytest.raises(grpc.RpcError) as caught:
                small.Encode(vae_pb2.EncodeRequest(x=to_tensor(pixels(30))), timeout=10)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            # A request that fits but whose response would not: 40 decoded prior samples (130 kB).
            with pytest.raises(grpc.RpcError) as caught:
                small.Sample(vae_pb2.SampleRequest(num_samples=40, decode=True), timeout=10)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the 65536-byte message limit" in caught.value.details()
            assert small.Encode(vae_pb2.EncodeRequest(x=to_tensor(pixels(2))), timeout=10).mean.shape == [
                2,
                L,
            ]
    finally:
        server.stop()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "vae.v1.VAEService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"vae.v1.VAEService", "grpc.health.v1.Health"} <= names


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def count(families: dict, family: str, sample_name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families[family].samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_parse_and_count_the_calls(stub, running):
    before = scrape(running.metrics_url)
    for _ in range(3):
        stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(np.zeros((2, L)))))
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest())
    after = scrape(running.metrics_url)

    def delta(family, sample_name, **labels):
        return count(after, family, sample_name, **labels) - count(before, family, sample_name, **labels)

    duration = "vae_serve_request_duration_seconds"
    assert delta(duration, f"{duration}_count", method="Decode", code="OK") == 3
    assert delta(duration, f"{duration}_count", method="Decode", code="INVALID_ARGUMENT") == 1
    assert delta("vae_serve_requests", "vae_serve_requests_total", method="Decode", code="OK") == 3
    assert delta(duration, f"{duration}_bucket", method="Decode", code="OK", le="+Inf") == 3
    compute = "vae_serve_inference_duration_seconds"
    assert delta(compute, f"{compute}_count", graph="decoder") == 3
    assert delta("vae_serve_batch_size_rows", "vae_serve_batch_size_rows_sum", graph="decoder") == 6
    info = after["vae_serve_model_info"].samples[0]
    assert info.labels == {
        "name": "fashion-vae",
        "version": DEFAULT_VERSION,
        "execution_provider": "CPUExecutionProvider",
    }
    assert count(after, "vae_serve_requests_in_flight", "vae_serve_requests_in_flight", method="Decode") == 0


@pytest.mark.parametrize(
    "path",
    ["/vae.v1.VAEService/Encode", "/vae.v1.VAEService/Sample", "/inference.GRPCInferenceService/ModelInfer"],
)
def test_bytes_that_are_no_message_get_invalid_argument(channel, stub, path):
    call = channel.unary_unary(path)  # raw bytes in and out
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff\xff\xff\x07not protobuf", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid" in caught.value.details()
    assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5).name == "fashion-vae"


@pytest.mark.parametrize(
    "request_",
    [
        vae_pb2.DecodeRequest(z=to_tensor(np.zeros((8193, L), np.float32))),  # refused: too many rows
        vae_pb2.DecodeRequest(z=to_tensor(np.full((2, L), np.nan, np.float32))),  # refused: NaN
    ],
)
def test_a_refused_request_is_freed_at_once_not_by_the_cycle_collector(stub, request_):
    """A refused 64 MB request that waited for the cyclic GC kept RSS up after every burst."""

    def alive() -> int:
        return sum(isinstance(o, vae_pb2.DecodeRequest) for o in gc.get_objects())

    gc.collect()
    baseline = alive()  # the parametrized requests themselves
    gc.disable()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Decode(request_, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # the server frees it just after the status goes out
        wait_for(lambda: alive() <= baseline, "the refused request freed")
        assert alive() == baseline
    finally:
        gc.enable()
