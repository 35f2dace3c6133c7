"""`--model-repository s3://...`: a real `vae-serve` process serving the default model from a real
S3 server (moto's, in its own process), new versions found by the poll, a failing store that
leaves serving untouched, and the settings that name a store."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid

import grpc
import numpy as np
import obstore
import pytest
from moto_store import REGION, MotoStore
from obstore.store import S3Store
from support import DEFAULT_MODEL_DIR, RunningServer, free_port, start_server_ports, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.models.source import local_root
from vae_serve.server.settings import Settings, ValidationError
from vae_serve.tensor import from_tensor, to_tensor

BUCKET = "models"
MODEL = "fashion-vae"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": REGION}


@pytest.fixture(scope="module")
def s3():
    with MotoStore() as store:
        store.create_bucket(BUCKET)
        yield store


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:8]}"


def upload(s3, prefix: str, version: str) -> None:
    """The default model's files as `<prefix>/fashion-vae/<version>/`, the card last (as an
    uploader that publishes a version by its card would)."""
    store = S3Store(
        BUCKET,
        prefix=prefix,
        endpoint=s3.endpoint,
        access_key_id="test",
        secret_access_key="test",
        region=REGION,
        client_options={"allow_http": True},
    )
    for name in ("encoder.onnx", "decoder.onnx", "model.json"):
        obstore.put(store, f"{MODEL}/{version}/{name}", (DEFAULT_MODEL_DIR / name).read_bytes())


def serve(s3, prefix: str, cache, *flags: str, poll_s: float = 0.2):
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint, **CREDENTIALS}
    args = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1", "--no-http"]
    args += ["--model-repository", f"s3://{BUCKET}/{prefix}", "--model-cache-dir", str(cache)]
    args += ["--repository-poll-s", str(poll_s), *flags]
    proc, (port,) = start_server_ports(args, r"serving on 127\.0\.0\.1:(\d+)", env=env)
    return proc, port


def decode(stub) -> vae_pb2.DecodeResponse:
    z = to_tensor(np.zeros((2, 32), np.float32))
    return stub.Decode(vae_pb2.DecodeRequest(z=z), timeout=30)


def newest(stub) -> str:
    return stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=30).version


def stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    return log


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_process_serves_from_s3_and_picks_up_new_versions(s3, prefix, tmp_path, workers):
    upload(s3, prefix, "1")
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port())] if workers > 1 else []
    proc, port = serve(s3, prefix, tmp_path / "cache", "--workers", str(workers), *ports)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            first = decode(stub)
            assert first.model_version == "1"
            assert from_tensor(first.x, "x").shape == (2, 784)
            s3.requests()
            upload(s3, prefix, "2")
            # With workers, every process must have it: ask until each answers with version 2.
            wait_for(lambda: all(newest(stub) == "2" for _ in range(8)), "version 2 served")
            assert decode(stub).model_version == "2"
    finally:
        log = stop(proc)
    assert f"s3://{BUCKET}/{prefix}/{MODEL}/2: fetched" in log


def test_listings_come_from_one_process_with_workers(s3, prefix, tmp_path):
    """The supervisor alone asks the store: with two workers and a 1 s poll, the listings in four
    seconds are those of one poller (four at most), not of three (about twelve)."""
    upload(s3, prefix, "1")
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port())]
    proc, _ = serve(s3, prefix, tmp_path / "cache", "--workers", "2", *ports, poll_s=1.0)
    try:
        s3.requests()
        time.sleep(4.0)  # a window to count in, not a wait for the system
        listings = sum("list-type" in r for r in s3.requests())
    finally:
        stop(proc)
    assert 1 <= listings <= 5, listings


def test_a_failing_store_is_said_once_and_serving_goes_on(s3, prefix, tmp_path, monkeypatch, caplog):
    upload(s3, prefix, "1")
    with MotoStore() as doomed:  # a store of its own, killed while the server serves from it
        doomed.create_bucket(BUCKET)
        upload(doomed, prefix, "1")
        for name, value in {"AWS_ENDPOINT_URL": doomed.endpoint, **CREDENTIALS}.items():
            monkeypatch.setenv(name, value)
        server = RunningServer(
            model_repository=f"s3://{BUCKET}/{prefix}",
            model_cache_dir=tmp_path / "cache",
            repository_poll_s=0.05,
            store_timeout_s=0.5,
            store_retries=0,
        )
    try:
        with caplog.at_level(logging.WARNING, logger="vae_serve.server.models.source"):
            scans = server.server.watcher.scans
            wait_for(lambda: server.server.watcher.scans >= scans + 5, "five scans against a dead store")
        said = [r.getMessage() for r in caplog.records if "still serving what is loaded" in r.getMessage()]
        assert len(said) == 1, said  # once per change, not once per scan
        with grpc.insecure_channel(server.target) as channel:
            assert decode(vae_pb2_grpc.VAEServiceStub(channel)).model_version == "1"
    finally:
        server.stop()


def test_a_store_that_cannot_be_reached_at_start_leaves_the_cache(s3, prefix, tmp_path, monkeypatch):
    """A restart while the store is down starts from what the cache holds."""
    upload(s3, prefix, "1")
    for name, value in {"AWS_ENDPOINT_URL": s3.endpoint, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    options = {"model_repository": f"s3://{BUCKET}/{prefix}", "model_cache_dir": tmp_path / "cache"}
    RunningServer(**options, repository_poll_s=0).stop()  # fills the cache
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    server = RunningServer(**options, repository_poll_s=0, store_timeout_s=0.5, store_retries=0)
    try:
        assert server.server.dataplane.served.latest.version == "1"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/a/b/", "s3://bucket/a/b"),
        ("gs://b/p", "gs://b/p"),
        ("az://container/p", "az://container/p"),
        ("/srv/models", "/srv/models"),
        ("relative/models", "relative/models"),
    ],
)
def test_a_repository_is_a_directory_or_a_store_uri(given, kept):
    settings = Settings(model_repository=given)
    assert settings.model_repository == kept  # a string: a Path would have made s3://b of s3:/b


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("http://host/models", "neither a directory nor an object store"),
        ("file:///srv/models", "neither a directory nor an object store"),
        ("s3://", "a bucket name"),
        ("s3:///prefix", "a bucket name"),
        ("s3://b/../other", "no '.' or '..' segments"),
        ("s3://b/p\nq", "control characters"),
        ("", "a directory, or a URI"),
    ],
)
def test_a_repository_that_is_neither_is_refused(given, why):
    with pytest.raises(ValidationError, match=why):
        Settings(model_repository=given)


def test_each_store_has_a_cache_of_its_own(tmp_path):
    def root(uri):
        return local_root(Settings(model_repository=uri, model_cache_dir=tmp_path).repository)

    assert root("s3://b/p").parent == tmp_path
    assert root("s3://b/p").name.startswith("s3-b-")
    assert len({root("s3://b/p"), root("s3://b/q"), root("gs://b/p")}) == 3
    assert root("/srv/models") == type(tmp_path)("/srv/models")
    assert Settings().model_cache_dir == type(tmp_path).home() / ".cache" / "vae-serve" / "models"
