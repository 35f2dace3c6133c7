"""Triton's extensions over gRPC (ModelConfig, ModelStatistics, RepositoryIndex), called by the real
tritonclient in its own process (tritonclient_calls.py), and the statistics merged across workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import DEFAULT_VERSION, REPOSITORY, free_port, read_until, start_vae_serve

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.server.protocol.oip_extensions import OLDER
from vae_serve.tensor import to_tensor

CALLS = Path(__file__).with_name("tritonclient_calls.py")
W, L = 784, 32
# The default model's graphs under the names clients knew first, then under its own.
OIP_NAMES = ("vae_encoder", "vae_decoder", "fashion-vae_encoder", "fashion-vae_decoder")


def triton(target: str, scenario: str, **kwargs: object) -> dict:
    cmd = [sys.executable, str(CALLS), target, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def number(stats: dict, *path: str) -> int:
    """A count or duration from tritonclient's JSON: uint64 as a string, absent when zero."""
    for key in path:
        stats = stats.get(key, {})
    return int(stats or 0)


def only(reply: dict) -> dict:
    (stats,) = reply["model_stats"]
    return stats


def test_server_metadata_lists_the_extensions_served(running):
    assert triton(running.target, "extensions", version=DEFAULT_VERSION)["server"]["extensions"] == [
        "model_configuration",
        "model_repository",
        "statistics",
    ]


def test_model_config_states_what_the_server_does(running):
    s = running.server.settings
    got = triton(running.target, "extensions", version=DEFAULT_VERSION)
    assert got["pinned"] == "vae_decoder"

    def tensor(name: str, width: int) -> dict:
        return {"name": name, "data_type": "TYPE_FP32", "dims": [str(width)]}

    common = {
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": s.keep_versions}},
        "max_batch_size": s.max_request_rows,
        "dynamic_batching": {
            "preferred_batch_size": [s.max_batch_size],
            "max_queue_delay_microseconds": str(s.max_queue_delay_us),
        },
    }
    assert got["config"]["vae_encoder"] == {
        **common,
        "name": "vae_encoder",
        "input": [tensor("x", W)],  # FORMAT_NONE is protobuf's default: not in the JSON
        "output": [tensor("mean", L), tensor("logvar", L)],
        "instance_group": [{"name": "vae_encoder_0", "kind": "KIND_CPU", "count": 1}],
    }
    assert got["config"]["vae_decoder"] == {
        **common,
        "name": "vae_decoder",
        "input": [tensor("z", L)],
        "output": [tensor("x", W)],
        "instance_group": [{"name": "vae_decoder_0", "kind": "KIND_CPU", "count": 1}],
    }


def test_repository_index_lists_both_models_ready(running):
    """The version served READY under each name; version 1, on disk beside it, listed as not served."""
    assert triton(running.target, "extensions", version=DEFAULT_VERSION)["index"] == [
        *({"name": name, "version": "1", "state": "UNAVAILABLE", "reason": OLDER} for name in OIP_NAMES),
        *({"name": name, "version": DEFAULT_VERSION, "state": "READY"} for name in OIP_NAMES),
    ]


def test_unknown_models_and_versions_are_not_found_and_model_control_is_refused(running):
    errors = triton(running.target, "extensions", version=DEFAULT_VERSION)["errors"]
    for key in ("config_unknown_model", "stats_unknown_model"):
        assert errors[key].startswith("StatusCode.NOT_FOUND no model 'vae_other'"), errors[key]
    for key in ("config_unknown_version", "stats_unknown_version"):
        assert errors[key].startswith("StatusCode.NOT_FOUND model version '9' is not loaded"), errors[key]
    for action in ("load", "unload"):
        assert errors[action].startswith(
            "StatusCode.UNIMPLEMENTED explicit model load / unload is not allowed"
        )


@pytest.mark.parametrize(("model", "name", "width"), [("vae_encoder", "x", W), ("vae_decoder", "z", L)])
def test_statistics_move_by_exactly_what_was_sent(running, model, name, width):
    n, rows = 7, 3
    got = triton(running.target, "statistics", model=model, name=name, width=width, rows=rows, n=n)
    before, after = only(got["before"]), only(got["after"])
    assert (after["name"], after["version"]) == (model, DEFAULT_VERSION)

    def moved(*path: str) -> int:
        return number(after, *path) - number(before, *path)

    assert moved("inference_count") == n * rows
    assert moved("execution_count") == n  # one after the other: each request ran alone
    assert moved("inference_stats", "success", "count") == n
    assert moved("inference_stats", "fail", "count") == 0
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert moved("inference_stats", part, "count") == n, part
    success_ns = moved("inference_stats", "success", "ns")
    infer_ns = moved("inference_stats", "compute_infer", "ns")
    assert infer_ns > 0 and success_ns > 0
    assert moved("inference_stats", "queue", "ns") + infer_ns <= success_ns
    assert number(after, "last_inference") > number(before, "last_inference")


def test_statistics_without_a_model_cover_both(running):
    got = triton(running.target, "statistics", model="", name="x", width=W, rows=1, n=0)
    assert [(s["name"], s["version"]) for s in got["after"]["model_stats"]] == [
        (n, DEFAULT_VERSION) for n in OIP_NAMES
    ]


def test_the_native_api_runs_the_same_graphs_and_counts_too(running, stub):
    """Decode and a decoded Sample over the native API are runs of vae_decoder."""
    read = {"model": "vae_decoder", "name": "z", "width": L, "rows": 1, "n": 0}
    before = only(triton(running.target, "statistics", **read)["after"])
    stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(np.zeros((3, L), np.float32))), timeout=10)
    stub.Sample(vae_pb2.SampleRequest(num_samples=5, seed=1, decode=True), timeout=10)
    stub.Sample(vae_pb2.SampleRequest(num_samples=5, seed=1), timeout=10)  # no decoding: no run
    after = only(triton(running.target, "statistics", **read)["after"])
    assert number(after, "inference_count") - number(before, "inference_count") == 3 + 5
    assert number(after, "execution_count") - number(before, "execution_count") == 2


@pytest.mark.slow
def test_statistics_are_merged_across_workers():
    """Every request and every reading on a new connection, so the kernel spreads them over both
    workers: a worker that reported only its own share would fall short of the total."""
    port = free_port()
    args = ["--model-repository", str(REPOSITORY), "--port", str(port), "--workers", "2"]
    args += ["--metrics-port", str(free_port()), "--http-port", str(free_port())]
    proc, _ = start_vae_serve(*args)
    try:
        read_until(proc, r"all 2 workers ready")  # both listen now
        n, rows = 12, 2
        got = triton(
            f"127.0.0.1:{port}",
            "statistics",
            model="vae_decoder",
            name="z",
            width=L,
            rows=rows,
            n=n,
            fresh=True,
        )
        for reading in got["readings"]:
            assert number(only(reading), "inference_count") == n * rows
            assert number(only(reading), "inference_stats", "success", "count") == n
            assert number(only(reading), "execution_count") == n
        assert number(only(got["before"]), "inference_count") == 0
    finally:
        proc.terminate()
        proc.wait(30)
