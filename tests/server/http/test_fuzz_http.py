"""Fuzzing the HTTP bodies as the gRPC side is fuzzed: any JSON, near-valid KServe requests and
binary sections that lie: never a 500, and the server keeps serving. In process (httpx's ASGI
transport): the codecs and routes are under test here, the sockets in test_hostile_http.py."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import InProcessHttp

EXAMPLES = 300  # per strategy
# Every example begins with give_way(): a timed test waiting for the machine runs between two
# examples, not after the whole run of them.
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ALLOWED = {200, 400, 404, 405, 413}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)
dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 32, 784, 2**31 - 1, 2**31, 2**62]))
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["z", "x", ""]), "datatype": st.sampled_from(["FP32", "FP16", "BYTES", 7])},
    optional={
        "shape": st.lists(dims, max_size=10) | json_values,
        "data": st.lists(st.floats(width=32, allow_nan=False) | st.integers(-5, 5), max_size=80)
        | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-4, 400) | json_values}
        ),
    },
)
infer_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_values},
    optional={
        "id": st.text(max_size=20) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["x", "mean", "nope"])}), max_size=3
        ),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_output", "timeout"]), json_values, max_size=2
        ),
    },
)


@pytest.fixture(scope="module")
def client():
    app = InProcessHttp()
    try:
        yield app
        assert app.get("/v2/health/ready").status_code == 200  # alive and well after all of it
    finally:
        app.stop()


def posted(client: InProcessHttp, path: str, content: bytes, headers: dict | None = None) -> int:
    reply = client.post(path, content=content, headers=headers or {})
    assert reply.status_code in ALLOWED, (reply.status_code, reply.text[:300])
    if reply.status_code != 200:
        assert set(reply.json()) == {"error"}
    return reply.status_code


@pytest.mark.slow
@FUZZ
@given(body=infer_bodies, tail=st.binary(max_size=300), model=st.sampled_from(["vae_decoder", "vae_encoder"]))
def test_kserve_infer(client, body, tail, model, give_way):
    give_way()
    header = orjson.dumps(body)
    posted(
        client,
        f"/v2/models/{model}/infer",
        header + tail,
        {"inference-header-content-length": str(len(header))},
    )
    posted(client, f"/v2/models/{model}/infer", header)


@pytest.mark.slow
@FUZZ
@given(body=json_values, path=st.sampled_from(["/v1/encode", "/v1/decode", "/v1/sample", "/v1/reconstruct"]))
def test_v1_bodies(client, body, path, give_way):
    give_way()
    posted(client, path, orjson.dumps(body), {"content-type": "application/json"})


@pytest.mark.slow
@FUZZ
@given(
    raw=st.binary(max_size=600),
    path=st.sampled_from(["/v1/encode", "/v1/reconstruct", "/v2/models/vae_decoder/infer"]),
)
def test_raw_bytes(client, raw, path, give_way):
    give_way()
    kind = "image/png" if path.startswith("/v1") else "application/octet-stream"
    posted(client, path, raw, {"content-type": kind})
