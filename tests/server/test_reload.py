"""Hot reload: new versions load while serving; bad ones are refused; nothing in flight fails."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from loop_probe import LOOP_STALL_BOUND_S, LoopProbe
from onnx import numpy_helper
from support import DEFAULT_MODEL_DIR, GOOD_DECODER, GOOD_ENCODER, RunningServer, wait_for, write_version

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.client import VaeClient
from vae_serve.tensor import from_tensor, to_tensor

L = 32


def publish(repo: Path, version: str, tweak=None, corrupt: str | None = None) -> Path:
    """Copy the default model in as `version` (optionally with its decoder changed or a file
    corrupted), assembled aside and renamed into place as vae-train does."""
    staging = repo / "fashion-vae" / f".{version}.staging"
    shutil.copytree(DEFAULT_MODEL_DIR, staging)
    card = json.loads((staging / "model.json").read_text())
    if tweak is not None:
        model = onnx.load(str(staging / "decoder.onnx"))
        tweak(model)
        onnx.save(model, str(staging / "decoder.onnx"))
        card["files"]["decoder.onnx"]["sha256"] = hashlib.sha256(
            (staging / "decoder.onnx").read_bytes()
        ).hexdigest()
    card["version"] = version
    (staging / "model.json").write_text(json.dumps(card))
    if corrupt:
        (staging / corrupt).write_bytes(b"\0" * 64)
    target = repo / "fashion-vae" / version
    os.rename(staging, target)
    return target


def shift_last_bias(model: onnx.ModelProto) -> None:
    """A different, still valid decoder: its last bias moved by +1 (outputs change visibly)."""
    biases = [init for init in model.graph.initializer if len(init.dims) == 1 and init.dims[0] == 784]
    bias = biases[-1]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "fashion-vae" / "1")
    return tmp_path


def info(stub, version: str = ""):
    return stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model_version=version), timeout=10)


def test_new_versions_load_bad_ones_are_refused_and_pinning_works(repo):
    server = RunningServer(model_repository=repo, repository_poll_s=0.1)
    metrics = server.server.metrics.registry
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            assert info(stub).version == "1"
            publish(repo, "2", tweak=shift_last_bias)
            wait_for(lambda: info(stub).version == "2", "version 2 served")
            assert list(info(stub).loaded_versions) == ["1", "2"]
            label = {"name": "fashion-vae", "version": "2", "execution_provider": "CPUExecutionProvider"}
            assert metrics.get_sample_value("vae_serve_model_info", label) == 1

            publish(repo, "3", corrupt="decoder.onnx")  # its sha256 no longer matches the card
            wait_for(
                lambda: metrics.get_sample_value("vae_serve_model_loads_total", {"result": "rejected"}) == 1,
                "version 3 rejected",
            )
            assert info(stub).version == "2"

            z = to_tensor(np.zeros((1, L), np.float32))
            old = stub.Decode(vae_pb2.DecodeRequest(z=z, model_version="1"), timeout=10)
            new = stub.Decode(vae_pb2.DecodeRequest(z=z), timeout=10)
            assert (old.model_version, new.model_version) == ("1", "2")
            assert not np.allclose(from_tensor(old.x, "x"), from_tensor(new.x, "x"))
            with pytest.raises(grpc.RpcError) as caught:
                stub.Decode(vae_pb2.DecodeRequest(z=z, model_version="7"), timeout=10)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            assert metrics.get_sample_value("vae_serve_model_loads_total", {"result": "loaded"}) == 1
        with VaeClient(server.target, model_version="1") as pinned, VaeClient(server.target) as latest:
            assert (pinned.model_info().version, latest.model_info().version) == ("1", "2")
            zeros = np.zeros((1, L), np.float32)
            np.testing.assert_array_equal(pinned.decode(zeros), from_tensor(old.x, "x"))
            np.testing.assert_array_equal(latest.decode(zeros), from_tensor(new.x, "x"))
    finally:
        server.stop()


def test_an_incompatible_version_is_refused(repo):
    server = RunningServer(model_repository=repo, repository_poll_s=0.1)
    try:
        tiny = write_version(repo / "tiny", GOOD_ENCODER, GOOD_DECODER)  # 6-pixel images, 2 latents
        shutil.copytree(tiny.path, repo / "fashion-vae" / ".2.staging")
        os.rename(repo / "fashion-vae" / ".2.staging", repo / "fashion-vae" / "2")  # published atomically
        registry = server.server.metrics.registry
        wait_for(
            lambda: registry.get_sample_value("vae_serve_model_loads_total", {"result": "rejected"}) == 1,
            "version 2 rejected",
        )
        assert "input_dim 6 differs from the served version's 784" in server.server.watcher.last_rejection
        assert server.server.dataplane.served.loaded == ["1"]
    finally:
        server.stop()


def test_versions_present_at_start_do_not_override_a_pinned_start(repo):
    publish(repo, "2", tweak=shift_last_bias)
    server = RunningServer(model_repository=repo, model_version="1", repository_poll_s=0.05)
    try:
        scans = server.server.watcher.scans
        wait_for(lambda: server.server.watcher.scans >= scans + 3, "three scans")  # they all saw version 2
        assert server.server.dataplane.served.loaded == ["1"]
        publish(repo, "3", tweak=shift_last_bias)  # a version that appears later does load
        wait_for(lambda: server.server.dataplane.served.loaded[-1] == "3", "version 3 loaded")
    finally:
        server.stop()


def test_reload_under_load_fails_nothing_and_each_answer_matches_its_version(repo):
    server = RunningServer(model_repository=repo, repository_poll_s=0.05)
    z = np.random.default_rng(0).standard_normal((4, L), dtype=np.float32)
    answers, failures, stop = [], [], threading.Event()

    def load() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(z)), timeout=10)
                    answers.append((reply.model_version, from_tensor(reply.x, "x").copy()))
                except grpc.RpcError as err:
                    failures.append(err)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) > 50, "50 answers")
        publish(repo, "2", tweak=shift_last_bias)
        wait_for(lambda: any(v == "2" for v, _ in answers[-20:]), "an answer from version 2")
        served = len(answers)
        wait_for(lambda: len(answers) > served + 50, "50 more answers")  # it keeps serving
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
    assert not failures, failures[:3]

    def decode_with(version: str) -> np.ndarray:
        path = repo / "fashion-vae" / version / "decoder.onnx"
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]

    expected = {v: decode_with(v) for v in ("1", "2")}
    seen = {v for v, _ in answers}
    assert seen == {"1", "2"}
    for version, x in answers:
        np.testing.assert_allclose(x, expected[version], atol=1e-6)


def big_graph_version(repo: Path, version: str, size: int, record_size: bool) -> None:
    """A version whose encoder.onnx is a `size`-byte sparse file (so its sha256 fails), with or
    without the graph sizes in its card."""
    staging = repo / "fashion-vae" / f".{version}.staging"
    shutil.copytree(DEFAULT_MODEL_DIR, staging)
    if not record_size:
        card = json.loads((staging / "model.json").read_text())
        for entry in card["files"].values():
            del entry["bytes"]
        (staging / "model.json").write_text(json.dumps(card))
    os.truncate(staging / "encoder.onnx", size)
    os.rename(staging, repo / "fashion-vae" / version)


def fifo_card_version(repo: Path, version: str) -> Path:
    staging = repo / "fashion-vae" / f".{version}.staging"
    shutil.copytree(DEFAULT_MODEL_DIR, staging)
    (staging / "model.json").unlink()
    os.mkfifo(staging / "model.json")
    os.rename(staging, repo / "fashion-vae" / version)
    return repo / "fashion-vae" / version / "model.json"


def release_fifo(path: Path) -> None:
    """A reader blocked opening the FIFO (the defect) is let go: a writer comes and leaves."""
    with contextlib.suppress(OSError):  # ENXIO: nobody is reading it, nothing to release
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.slow
@pytest.mark.timing
def test_repository_io_never_stalls_the_event_loop(repo, caplog):
    """A big graph is hashed, a FIFO card is refused, and every call meanwhile is answered promptly."""
    server = RunningServer(model_repository=repo, repository_poll_s=0)  # scans when woken only
    registry = server.server.metrics.registry
    watcher = server.server.watcher

    def rejected() -> float:
        return registry.get_sample_value("vae_serve_model_loads_total", {"result": "rejected"}) or 0

    fifo = fifo_card_version(repo, "3")
    try:
        big_graph_version(repo, "2", 300 << 20, record_size=False)  # read and hashed in full
        big_graph_version(repo, "4", 1 << 40, record_size=True)  # refused by its size, unread
        with LoopProbe(server.target) as probe:
            server.loop.call_soon_threadsafe(watcher.wake.set)
            wait_for(lambda: rejected() == 3, "three versions rejected")
        assert probe.max_gap_s < LOOP_STALL_BOUND_S, f"event loop stalled {probe.max_gap_s * 1000:.0f} ms"
        assert probe.calls > 10 and not probe.errors
        assert server.server.dataplane.served.loaded == ["1"]
        reasons = [r.getMessage() for r in caplog.records if "rejected, still serving 1" in r.getMessage()]
        assert any("2/encoder.onnx: sha256" in r for r in reasons), reasons
        assert any("3/model.json: not a regular file" in r for r in reasons), reasons
        assert any(f"4/encoder.onnx: {1 << 40} bytes, the card says" in r for r in reasons), reasons
    finally:
        release_fifo(fifo)
        server.stop()


def test_one_bad_entry_never_stops_a_scan_and_is_reported_once(repo, caplog):
    server = RunningServer(model_repository=repo, repository_poll_s=0)  # scans when woken only
    versions = server.server.dataplane.served
    try:
        shutil.copytree(DEFAULT_MODEL_DIR, repo / "fashion-vae" / "²")  # int("²") raises
        publish(repo, "2", tweak=shift_last_bias)
        server.loop.call_soon_threadsafe(server.server.watcher.wake.set)
        wait_for(lambda: versions.loaded[-1] == "2", "version 2 loaded")
        publish(repo, "3", tweak=shift_last_bias)
        server.loop.call_soon_threadsafe(server.server.watcher.wake.set)
        wait_for(lambda: versions.loaded[-1] == "3", "version 3 loaded")
        assert sum("'²'" in r.getMessage() for r in caplog.records) == 1
    finally:
        server.stop()
