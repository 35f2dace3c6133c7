"""Model versions from object storage, against a real S3 server (moto's, in its own process): what
is fetched, checked and published, what is not fetched again, and a slow or hostile store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import grpc
import obstore
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from loop_probe import LOOP_STALL_BOUND_S, LoopProbe
from moto_store import MotoStore
from obstore.store import S3Store
from support import GOOD_DECODER, GOOD_ENCODER, LoopThread, free_port, wait_for, write_version_files

from vae_serve.errors import ModelLoadError
from vae_serve.server.models.repository import MAX_ENTRIES, list_versions, resolve
from vae_serve.server.models.storage import StoreRepository, StoreUnavailable, VersionRefused, is_store_uri

BUCKET = "models"
LOGGER = "vae_serve.server.models.storage"


@pytest.fixture(scope="module")
def s3():
    with MotoStore() as store:
        store.create_bucket(BUCKET)
        yield store


@pytest.fixture
def store_env(monkeypatch, s3):
    """The standard credential chain's variables, as an operator would set them for MinIO."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.fixture
def prefix(store_env, s3):
    """A prefix of its own for each test, the request log emptied."""
    s3.requests()
    return f"t-{uuid.uuid4().hex[:8]}"


def writer(s3, prefix):
    return S3Store(
        BUCKET,
        prefix=prefix,
        endpoint=s3.endpoint,
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
        client_options={"allow_http": True},
    )


def upload(s3, prefix, tmp_path, version="1", only=None, card=None):
    """A tiny real version (two graphs and their card, sizes recorded) uploaded as m/<version>/."""
    path = write_version_files(
        tmp_path / uuid.uuid4().hex, GOOD_ENCODER, GOOD_DECODER, version=version, card=card, record_bytes=True
    )
    store = writer(s3, prefix)
    for name in only or ("model.json", "encoder.onnx", "decoder.onnx"):
        obstore.put(store, f"m/{version}/{name}", (path / name).read_bytes())
    return path


def gets(s3, name=""):
    """GET requests for objects (listings left out) since the last look, ending in `name`."""
    return [r for r in s3.requests() if r.startswith("GET /") and "list-type" not in r and r.endswith(name)]


def test_store_uris():
    assert is_store_uri("s3://b/p") and is_store_uri("gs://b") and is_store_uri("az://c/p")
    assert not is_store_uri("/srv/models") and not is_store_uri("s3:/b") and not is_store_uri("http://h/p")
    with pytest.raises(ModelLoadError, match="not an object store URI"):
        StoreRepository("file:///srv/models", Path("/tmp"))


def test_a_version_is_fetched_verified_and_published_whole(s3, prefix, tmp_path):
    source = upload(s3, prefix, tmp_path)
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
    assert asyncio.run(repo.list_versions("m")) == ["1"]
    assert asyncio.run(repo.sync("m")) == [cache / "m" / "1"]
    for name in ("model.json", "encoder.onnx", "decoder.onnx"):
        assert (cache / "m" / "1" / name).read_bytes() == (source / name).read_bytes()
    assert resolve(cache, "m").version == "1"  # the repository reads the cache unchanged
    assert sorted(p.name for p in (cache / "m").iterdir()) == [".lock", "1"]  # no staging left


def test_what_is_cached_is_not_downloaded_again(s3, prefix, tmp_path):
    upload(s3, prefix, tmp_path)
    uri, cache = f"s3://{BUCKET}/{prefix}", tmp_path / "cache"
    repo = StoreRepository(uri, cache)
    asyncio.run(repo.sync("m"))
    assert len(gets(s3, ".onnx")) == 2
    asyncio.run(repo.sync("m"))  # same listing: no request but the listing
    assert gets(s3) == []
    published = (cache / "m" / "1").stat().st_ino
    asyncio.run(StoreRepository(uri, cache).sync("m"))  # a restart: the card, compared, and no graph
    assert gets(s3) == [f"GET /{BUCKET}/{prefix}/m/1/model.json"]
    assert (cache / "m" / "1").stat().st_ino == published  # not published again either

    # The encoder object replaced by other bytes of its size: the card's hash is unchanged, so the
    # cached file stands and the new bytes are never fetched.
    encoder = cache / "m" / "1" / "encoder.onnx"
    obstore.put(writer(s3, prefix), "m/1/encoder.onnx", b"\0" * encoder.stat().st_size)
    s3.requests()
    asyncio.run(repo.sync("m"))
    assert gets(s3, ".onnx") == []
    assert (
        hashlib.sha256(encoder.read_bytes()).hexdigest()
        == json.loads((cache / "m" / "1" / "model.json").read_text())["files"]["encoder.onnx"]["sha256"]
    )


def test_a_new_card_over_cached_graphs_links_them(s3, prefix, tmp_path):
    upload(s3, prefix, tmp_path, version="1")
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
    asyncio.run(repo.sync("m"))
    upload(s3, prefix, tmp_path, version="2", card={"notes": "same graphs, new card"})
    s3.requests()
    assert asyncio.run(repo.sync("m", newest=2)) == [cache / "m" / "1", cache / "m" / "2"]
    assert gets(s3, ".onnx") == []
    assert json.loads((cache / "m" / "2" / "model.json").read_text())["notes"] == "same graphs, new card"
    assert resolve(cache, "m").version == "2"


def test_a_half_uploaded_version_is_skipped_then_picked_up(s3, prefix, tmp_path, caplog):
    upload(s3, prefix, tmp_path, version="1")
    source = upload(s3, prefix, tmp_path, version="2", only=("model.json", "encoder.onnx"))
    upload(s3, prefix, tmp_path, version="3", only=("encoder.onnx", "decoder.onnx"))  # card not yet
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert asyncio.run(repo.sync("m")) == [cache / "m" / "1"]
        assert asyncio.run(repo.sync("m")) == [cache / "m" / "1"]
    said = [r.getMessage() for r in caplog.records]
    assert sum("m/2: decoder.onnx not in the store yet" in line for line in said) == 1  # once
    assert sum("m/3: model.json not in the store yet" in line for line in said) == 1
    assert list_versions(cache, "m") == ["1"]
    assert asyncio.run(repo.list_versions("m")) == ["1"]

    obstore.put(writer(s3, prefix), "m/2/decoder.onnx", (source / "decoder.onnx").read_bytes())
    assert asyncio.run(repo.sync("m")) == [cache / "m" / "2"]
    assert list_versions(cache, "m") == ["1", "2"]


def _lie_about_size(card, path):
    card["files"]["encoder.onnx"]["bytes"] += 1


def _lie_about_hash(card, path):
    card["files"]["encoder.onnx"]["sha256"] = hashlib.sha256(b"something else").hexdigest()


def _no_latent_dim(card, path):
    del card["latent_dim"]


@pytest.mark.parametrize(
    ("lie", "message", "graphs_fetched"),
    [
        (_lie_about_size, r"encoder.onnx: \d+ bytes in the store, the card says \d+", 0),
        (_lie_about_hash, r"encoder.onnx: sha256 .* does not match the card's", 1),
        (_no_latent_dim, r"model.json: field 'latent_dim': Field required", 0),
    ],
)
def test_a_lying_card_is_refused_and_not_fetched_again(s3, prefix, tmp_path, lie, message, graphs_fetched):
    path = write_version_files(tmp_path / "src", GOOD_ENCODER, GOOD_DECODER, model="m", record_bytes=True)
    card = json.loads((path / "model.json").read_text())
    lie(card, path)
    store = writer(s3, prefix)
    obstore.put(store, "m/1/model.json", json.dumps(card).encode())
    for name in ("encoder.onnx", "decoder.onnx"):
        obstore.put(store, f"m/1/{name}", (path / name).read_bytes())
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
    with pytest.raises(VersionRefused, match=message):
        asyncio.run(repo.fetch("m", "1"))
    assert len(gets(s3, ".onnx")) == graphs_fetched
    assert asyncio.run(repo.sync("m")) == []
    with pytest.raises(VersionRefused, match=message):  # remembered: nothing fetched again
        asyncio.run(repo.fetch("m", "1"))
    assert gets(s3) == []
    assert not (cache / "m" / "1").exists()
    assert sorted(p.name for p in cache.rglob("*")) in ([], [".lock", "m"])  # staging removed


class HostileProxy:
    """In front of moto: passes requests through, except GETs of `target`, which it answers as a
    hostile store would: `stall` sends the headers and a few bytes, then nothing; `grow` sends
    the object with `extra` bytes more than it has. Records the connections the client closed."""

    def __init__(self, upstream: str, target: str, mode: str, extra: int = 0) -> None:
        self.upstream, self.target, self.mode, self.extra = upstream, target, mode, extra
        self.closed_by_client = threading.Event()
        self.stalled = threading.Event()
        self.sent_whole: bool | None = None  # in `grow` mode: whether the client read it all
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                more = conn.recv(65536)
                if not more:
                    return
                head += more
            line, *_ = head.split(b"\r\n", 1)
            method, path, _ = line.decode().split(" ", 2)
            if method == "GET" and path.endswith(self.target) and self.mode == "stall":
                conn.sendall(
                    b'HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\nETag: "e"\r\n\r\n' + b"\0" * 1000
                )
                self.stalled.set()
                conn.settimeout(60)
                if conn.recv(1) == b"":
                    self.closed_by_client.set()
                return
            status, headers, body = self._forward(head)
            if method == "GET" and path.endswith(self.target) and self.mode == "grow":
                body += b"\0" * self.extra
            headers = [
                h
                for h in headers
                if h[0].lower() not in ("content-length", "connection", "transfer-encoding")
            ]
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            try:
                conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
                grown = True
            except OSError:  # the client closed the connection before reading it all
                grown = False
            if method == "GET" and path.endswith(self.target):
                self.sent_whole = grown

    def _forward(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        import http.client

        line, _, rest = head.partition(b"\r\n")
        method, path, _ = line.decode().split(" ", 2)
        headers = dict(h.split(": ", 1) for h in rest.decode().split("\r\n") if ": " in h)
        upstream = http.client.HTTPConnection(self.upstream.removeprefix("http://"), timeout=30)
        upstream.request(method, path, headers=headers)
        reply = upstream.getresponse()
        body = reply.read()
        upstream.close()
        return f"{reply.status} {reply.reason}", reply.getheaders(), body

    def close(self) -> None:
        self._server.close()


def test_a_file_longer_than_its_card_is_cut_off(s3, prefix, tmp_path, store_env):
    upload(s3, prefix, tmp_path)
    # 64 MiB more than the card says: far more than the sockets buffer, so the proxy can tell
    # whether the client read it all.
    proxy = HostileProxy(s3.endpoint, "/m/1/encoder.onnx", "grow", extra=64 << 20)
    store_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    cache = tmp_path / "cache"
    try:
        repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
        with pytest.raises(VersionRefused, match=r"encoder.onnx: more than the \d+ bytes the card says"):
            asyncio.run(repo.fetch("m", "1"))
    finally:
        proxy.close()
    wait_for(lambda: proxy.sent_whole is not None, "the proxy's account of the download")
    assert proxy.sent_whole is False  # cut off at the card's size, the connection dropped
    assert not (cache / "m" / "1").exists()


class ServingLoop(LoopThread):
    """An event loop in a thread of its own that answers gRPC health checks, as the server's
    does: what LoopProbe measures while store work runs on it."""

    def __enter__(self) -> ServingLoop:
        self.target = self.call(self._start())
        return self

    async def _start(self) -> str:
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop(0))
        self.close()


@pytest.mark.timing
def test_a_hanging_download_is_abandoned_without_blocking_the_loop(s3, prefix, tmp_path, store_env):
    upload(s3, prefix, tmp_path)
    proxy = HostileProxy(s3.endpoint, "/m/1/encoder.onnx", "stall")
    store_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache, timeout_s=1.0, retries=1)
    try:
        with ServingLoop() as serving, LoopProbe(serving.target) as probe:
            started = time.monotonic()
            pending = asyncio.run_coroutine_threadsafe(repo.fetch("m", "1"), serving.loop)
            assert proxy.stalled.wait(30)
            assert list_versions(cache, "m") == []  # mid-download: staged, hidden, not published
            assert any(p.name.startswith(".1.partial-") for p in (cache / "m").iterdir())
            with pytest.raises(StoreUnavailable, match=r"encoder.onnx"):
                pending.result(60)
            took = time.monotonic() - started
    finally:
        proxy.close()
    assert took < repo.call_timeout_s + 1
    assert proxy.closed_by_client.wait(5)  # abandoned: the connection is closed, not left hanging
    assert probe.calls > 10 and probe.max_gap_s < LOOP_STALL_BOUND_S
    assert list_versions(cache, "m") == []
    assert [p.name for p in (cache / "m").iterdir()] == [".lock"]


@pytest.mark.timing
def test_a_store_that_is_down_fails_in_bounded_time(prefix, tmp_path, store_env):
    store_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache", timeout_s=0.5, retries=1)
    said = []
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=rf"listing s3://{BUCKET}/{prefix}/m/") as failed:
            asyncio.run(repo.sync("m"))
        assert time.monotonic() - started < repo.call_timeout_s + 1
        said.append(str(failed.value))
    assert said[0] == said[1]  # the same failure reads the same, so a poller can say it once


def test_a_store_error_is_one_line_safe_to_log(prefix, tmp_path, store_env):
    """A store's error bodies reach the library's messages: control characters are escaped."""
    server = socket.create_server(("127.0.0.1", 0))

    def refuse():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            body = b"<Error><Code>AccessDenied</Code><Message>\x1b[2J\x07</Message></Error>\nmore"
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=refuse, daemon=True).start()
    store_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache", timeout_s=2, retries=0)
    with server, pytest.raises(StoreUnavailable, match=r"403 Forbidden.*AccessDenied") as refused:
        asyncio.run(repo.sync("m"))
    message = str(refused.value)
    assert "\\x1b[2J\\x07" in message and "\n" not in message and "\x1b" not in message


@pytest.mark.slow  # moto takes about 2 s to hold 20,000 objects and 0.5-1 s a page to list them
def test_a_listing_of_twice_the_cap_is_bounded(store_env, tmp_path):
    with MotoStore() as big:  # its own server: the others' listings stay fast
        big.create_bucket("big")
        big.fill("big", "repo/m/", 2 * MAX_ENTRIES)  # ten pages past the cap: none of them is asked
        store_env.setenv("AWS_ENDPOINT_URL", big.endpoint)
        big.requests()
        repo = StoreRepository("s3://big/repo", tmp_path / "cache")
        tracemalloc.start()
        with pytest.raises(ModelLoadError, match=rf"s3://big/repo/m/: more than {MAX_ENTRIES} objects"):
            asyncio.run(repo.sync("m"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        listings = [r for r in big.requests() if "list-type" in r]
    assert len(listings) == MAX_ENTRIES // 1000 + 1  # pages of 1000, up to the cap, then no more
    assert peak < 16 << 20


@pytest.mark.parametrize("name", ["../m", "a/b", "m\0", "modèle", "", ".m", "m" * 129])
def test_hostile_model_names_are_refused_before_any_request(s3, prefix, tmp_path, name):
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache")
    for call in (repo.sync(name), repo.list_versions(name), repo.fetch(name, "1")):
        with pytest.raises(ModelLoadError, match="not a model name"):
            asyncio.run(call)
    for version in ("../1", "01", "1\0", "\u0661"):  # the last an Arabic-Indic digit one
        with pytest.raises(ModelLoadError, match="not a version"):
            asyncio.run(repo.fetch("m", version))
    assert s3.requests() == []
    assert not (tmp_path / "cache").exists()


def test_hostile_keys_never_reach_the_cache(s3, prefix, tmp_path, caplog):
    upload(s3, prefix, tmp_path)
    for key in ("m/\u0661/model.json", "m/01/model.json", "m/1/sub/model.json", "m/1 /model.json", "m/é/x"):
        s3.put_raw(BUCKET, f"{prefix}/{key}", b"{}")
    for model in ("mödel", ".m", "a b", "-m"):
        s3.put_raw(BUCKET, f"{prefix}/{model}/1/model.json", b"{}")
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert asyncio.run(repo.list_models()) == ["m"]
        assert asyncio.run(repo.sync("m", newest=10)) == [cache / "m" / "1"]
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "'mödel/1/model.json'" in said and "'a b/1/model.json'" in said
    assert "'m/\u0661/model.json'" in said and "'m/01/model.json'" in said and "'m/1 /model.json'" in said
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == [
        "m",
        "m/.lock",
        "m/1",
        "m/1/decoder.onnx",
        "m/1/encoder.onnx",
        "m/1/model.json",
    ]

    # Keys the library will not parse as paths (`..`, control characters) fail the listing as a
    # whole: refused in one line, with the key escaped, and nothing written.
    for n, key in enumerate(("m/../../etc/model.json", "m/3/\x1b[2J\0model.json")):
        s3.put_raw(BUCKET, f"{prefix}/{key}")
        with pytest.raises(StoreUnavailable, match=r"listing .*invalid path") as refused:
            asyncio.run(StoreRepository(f"s3://{BUCKET}/{prefix}", tmp_path / f"other{n}").sync("m"))
        assert "\x1b" not in str(refused.value) and "\0" not in str(refused.value)
        assert not (tmp_path / f"other{n}").exists()


def test_100_concurrent_loads_of_one_version_download_it_once(s3, prefix, tmp_path):
    upload(s3, prefix, tmp_path)
    cache = tmp_path / "cache"
    repo = StoreRepository(f"s3://{BUCKET}/{prefix}", cache)

    async def together():
        return await asyncio.gather(
            *(repo.fetch("m", "1") for _ in range(50)), *(repo.sync("m") for _ in range(50))
        )

    results = asyncio.run(together())
    assert all(r in (cache / "m" / "1", [cache / "m" / "1"]) for r in results)
    assert sorted(gets(s3)) == sorted(
        f"GET /{BUCKET}/{prefix}/m/1/{name}" for name in ("decoder.onnx", "encoder.onnx", "model.json")
    )
