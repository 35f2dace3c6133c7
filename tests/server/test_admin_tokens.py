"""Who may load and unload: admin tokens over gRPC and REST, the token file (reloaded, refused
when unusable), the loopback-only default without one, tritonclient with its headers, the token
kept out of every log line and span, and `vae-serve hash-token`."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from support import RunningServer
from two_models import GREY, RGB, two_models

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.errors import PermissionDenied, Unauthenticated
from vae_serve.server import cli
from vae_serve.server.protocol import admin
from vae_serve.server.settings import Settings, ValidationError, describe_error
from vae_serve.server.telemetry import observe

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef-bob"
ADMIN_LOG = "vae_serve.server.protocol.admin"


def token_file(path: Path, **tokens: str) -> Path:
    """`path` holding the line of each token (name: token), replaced at once (as an operator
    rotating it should: write beside, rename over)."""
    lines = ["# admins", "", *(admin.hash_line(token, name) for name, token in tokens.items())]
    spare = path.with_suffix(".new")
    spare.write_text("\n".join(lines) + "\n")
    os.replace(spare, path)
    return path


def explicit(root: Path, **settings: object) -> RunningServer:
    return RunningServer(
        model_repository=root, model_control_mode="explicit", http_host="127.0.0.1", http_port=0, **settings
    )


def grpc_call(server: RunningServer, op: str, name: str, token: str | None = None, scheme: str = "Bearer"):
    """Load or unload `name` over gRPC; the status code and details."""
    metadata = () if token is None else (("authorization", f"{scheme} {token}"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        try:
            if op == "load":
                stub.RepositoryModelLoad(
                    oip.RepositoryModelLoadRequest(model_name=name), metadata=metadata, timeout=60
                )
            else:
                stub.RepositoryModelUnload(
                    oip.RepositoryModelUnloadRequest(model_name=name), metadata=metadata, timeout=60
                )
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def rest(server: RunningServer, path: str, token: str | None = None, method: str = "POST"):
    """The status, headers and body of an HTTP call, with `authorization: Bearer <token>` if given."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{server.server.http_port}{path}"
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def served(server: RunningServer) -> list[str]:
    return server.server.dataplane.models.names


@pytest.fixture
def guarded(tmp_path):
    """An explicit-mode server (on loopback) whose load and unload need alice's token."""
    tokens = token_file(tmp_path / "tokens", alice=ALICE)
    server = explicit(two_models(tmp_path / "repo"), admin_token_file=tokens)
    yield server, tokens
    server.stop()


def test_grpc_needs_the_token(guarded):
    server, _ = guarded
    code, details = grpc_call(server, "load", GREY)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "Bearer <token>" in details
    assert grpc_call(server, "load", GREY, ALICE, scheme="Basic")[0] is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_call(server, "load", GREY, BOB)[0] is grpc.StatusCode.PERMISSION_DENIED
    assert grpc_call(server, "load", GREY, "x" * 5000)[0] is grpc.StatusCode.PERMISSION_DENIED
    # The gate comes before the name is read: a stranger learns nothing of the repository.
    assert grpc_call(server, "load", "../etc")[0] is grpc.StatusCode.UNAUTHENTICATED
    assert served(server) == []
    assert grpc_call(server, "load", GREY, ALICE)[0] is grpc.StatusCode.OK
    assert served(server) == [GREY]
    assert grpc_call(server, "unload", GREY)[0] is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_call(server, "unload", GREY, BOB)[0] is grpc.StatusCode.PERMISSION_DENIED
    assert served(server) == [GREY]
    assert grpc_call(server, "unload", GREY, ALICE)[0] is grpc.StatusCode.OK
    assert served(server) == []


def test_rest_needs_the_token_and_everything_else_stays_open(guarded):
    server, _ = guarded
    load, unload = f"/v2/repository/models/{RGB}/load", f"/v2/repository/models/{RGB}/unload"
    status, headers, body = rest(server, load)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert "Bearer <token>" in json.loads(body)["error"]
    assert rest(server, load, BOB)[0] == 403
    assert served(server) == []
    assert rest(server, load, ALICE)[0] == 200 and served(server) == [RGB]
    assert rest(server, unload)[0] == 401 and served(server) == [RGB]
    assert rest(server, unload, BOB)[0] == 403 and served(server) == [RGB]
    assert rest(server, unload, ALICE)[0] == 200 and served(server) == []
    # Health, metadata, the index and metrics need no token.
    assert rest(server, "/v2/health/live", method="GET")[0] == 200
    assert rest(server, "/v2", method="GET")[0] == 200
    assert rest(server, "/v2/repository/index")[0] == 200
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        assert reply.status == 200
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
        assert stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=10).models


def test_a_replaced_token_file_takes_effect_and_a_bad_one_keeps_the_old_tokens(guarded, caplog):
    server, tokens = guarded
    server.server.control.gate.tokens.recheck_s = 0  # every call looks at the file (see the next test)
    assert grpc_call(server, "load", GREY, ALICE)[0] is grpc.StatusCode.OK
    token_file(tokens, bob=BOB)  # alice's token rotated out
    assert grpc_call(server, "unload", GREY, ALICE)[0] is grpc.StatusCode.PERMISSION_DENIED
    assert grpc_call(server, "unload", GREY, BOB)[0] is grpc.StatusCode.OK

    caplog.set_level(logging.INFO, logger=ADMIN_LOG)
    tokens.with_suffix(".new").write_text("sha256:not-a-hash\n")
    os.replace(tokens.with_suffix(".new"), tokens)
    for _ in range(3):  # each after a look at the file: one warning for the one change
        assert rest(server, f"/v2/repository/models/{GREY}/load", BOB)[0] == 200
    assert rest(server, f"/v2/repository/models/{GREY}/load", ALICE)[0] == 403
    warned = [r for r in caplog.records if r.name == ADMIN_LOG and r.levelno == logging.WARNING]
    warnings = [r.getMessage() for r in warned]
    assert len(warnings) == 1 and str(tokens) in warnings[0] and "not-a-hash" not in warnings[0]

    tokens.unlink()  # gone: the same, logged once more
    assert grpc_call(server, "unload", GREY, BOB)[0] is grpc.StatusCode.OK
    token_file(tokens)  # no token lines: nobody may change what is served
    assert grpc_call(server, "load", GREY, BOB)[0] is grpc.StatusCode.PERMISSION_DENIED
    assert served(server) == []


def test_the_file_is_looked_at_no_more_often_than_its_recheck_interval(tmp_path):
    """Between looks a call costs no file system call: a change waits for the next look."""
    tokens = admin.TokenFile(token_file(tmp_path / "tokens", alice=ALICE), recheck_s=3600)
    token_file(tmp_path / "tokens", bob=BOB)
    assert [a.name for a in asyncio.run(tokens.current())] == ["alice"]
    tokens.recheck_s = 0
    assert [a.name for a in asyncio.run(tokens.current())] == ["bob"]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_fifo(path: Path) -> None:
    _fifo(path.with_name("fifo"))
    path.symlink_to(path.with_name("fifo"))


def test_a_kubernetes_secret_volume_is_read_through_its_links_and_its_swap_seen(tmp_path):
    """A Secret volume: `tokens -> ..data/tokens`, `..data -> <timestamped dir>`, and an update
    swaps `..data` at once. The file is read through the links, and the swap is a change."""
    for version, who in (("v1", {"alice": ALICE}), ("v2", {"bob": BOB})):
        (tmp_path / version).mkdir()
        token_file(tmp_path / version / "tokens", **who)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "tokens").symlink_to("..data/tokens")
    tokens = admin.TokenFile(tmp_path / "tokens", recheck_s=0)
    assert [a.name for a in tokens.admins] == ["alice"]
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert [a.name for a in asyncio.run(tokens.current())] == ["bob"]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"# pad\n" * 30_000), "over 131072 bytes"),
        (lambda p: p.write_text("\n" * (admin.MAX_LINES + 1)), "over 1024 lines"),
        (lambda p: p.write_bytes(b"# caf\xe9\n"), "not UTF-8"),
        (_link_to_fifo, "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (_fifo, "not a regular file"),
        (lambda p: None, "No such file"),
        (lambda p: p.write_text(f"# raw token pasted\n{ALICE}\n"), "line 2 is not sha256:"),
        (lambda p: p.write_text(admin.hash_line(ALICE, "bad name!") + "\n"), "line 1 is not"),
        (lambda p: p.write_text(f"{admin.hash_line(ALICE)}\n{admin.hash_line(ALICE, 'b')}\n"), "repeats"),
    ],
    ids=[
        "huge",
        "lines",
        "latin1",
        "link-to-fifo",
        "directory",
        "fifo",
        "missing",
        "raw-token",
        "name",
        "twice",
    ],
)
def test_an_unusable_token_file_fails_start_up_in_one_line(tmp_path, capsys, make, says):
    path = tmp_path / "tokens"
    make(path)
    with pytest.raises(ValidationError) as caught:
        Settings(admin_token_file=path)
    line = describe_error(caught.value)
    assert says in line and str(path) in line and "--admin-token-file" in line and "\n" not in line
    assert ALICE not in line  # a token pasted by mistake is never echoed
    assert cli.main(["--admin-token-file", str(path), "--port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and ALICE not in err


def test_a_file_broken_after_the_settings_were_read_still_fails_start_up(tmp_path):
    path = token_file(tmp_path / "tokens", alice=ALICE)
    settings = Settings(admin_token_file=path, model_control_mode="explicit")
    path.write_text("garbage\n")
    from vae_serve.errors import StartError

    with pytest.raises(StartError, match=r"--admin-token-file .*tokens: line 1 is not"):
        admin.ControlGate.from_settings(settings)


@pytest.mark.parametrize(
    ("hosts", "loopback"),
    [
        ({"host": "127.0.0.1"}, True),
        ({"host": "::1"}, True),
        ({"host": "localhost"}, True),
        ({"host": "127.0.0.2", "http_host": "[::1]"}, True),
        ({"host": "::ffff:127.0.0.1"}, True),
        ({"host": "127.0.0.1", "metrics_host": "0.0.0.0"}, True),  # metrics serve no control
        ({"host": "0.0.0.0", "http": False}, False),
        ({"host": "::"}, False),
        ({"host": "127.0.0.1", "http_host": "0.0.0.0"}, False),
        ({"host": "0.0.0.0", "http_host": "127.0.0.1"}, False),
        ({"host": "0.0.0.0", "http_host": "127.0.0.1", "http": False}, False),
        ({"host": "127.0.0.1", "http_host": "0.0.0.0", "http": False}, True),  # HTTP off
        ({"host": "10.1.2.3"}, False),
        ({"host": "vae.example"}, False),  # a name could resolve anywhere
        ({}, False),  # the default: 0.0.0.0
    ],
)
def test_control_without_tokens_is_served_on_loopback_only(hosts, loopback):
    settings = Settings(**{"port": 1, "http_port": 2, "metrics_port": 3, **hosts})
    assert admin.serves_loopback_only(settings) is loopback
    gate = admin.ControlGate.from_settings(settings)
    if loopback:
        assert "loopback" in asyncio.run(gate.admit([]))
    else:
        with pytest.raises(PermissionDenied, match="has no --admin-token-file; give it one"):
            asyncio.run(gate.admit([f"Bearer {ALICE}"]))


def test_without_tokens_control_works_on_loopback(tmp_path):
    server = explicit(two_models(tmp_path))
    try:
        assert grpc_call(server, "load", GREY)[0] is grpc.StatusCode.OK
        assert rest(server, f"/v2/repository/models/{GREY}/unload", "anything")[0] == 200
        assert served(server) == []
    finally:
        server.stop()


def _outward_address() -> str | None:
    """This machine's address on a network interface (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def test_without_tokens_control_is_refused_beyond_loopback(tmp_path):
    address = _outward_address()
    if address is None:
        pytest.skip("no network interface besides loopback")
    server = explicit(two_models(tmp_path), host=address)  # HTTP stays on 127.0.0.1
    try:
        server.target = f"{address}:{server.server.port}"
        code, details = grpc_call(server, "load", GREY)
        assert code is grpc.StatusCode.PERMISSION_DENIED and f"({address}, 127.0.0.1)" in details
        status, _, body = rest(server, f"/v2/repository/models/{GREY}/load")
        assert status == 403 and "--admin-token-file" in json.loads(body)["error"]
        assert served(server) == []
    finally:
        server.stop()


TRITON = """
import json, sys
import tritonclient.grpc as tgrpc, tritonclient.http as thttp
from tritonclient.utils import InferenceServerException
grpc_target, http_target, model, token = sys.argv[1:]
def status(call):
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"
out = {}
for kind, client in (("grpc", tgrpc.InferenceServerClient(grpc_target)),
                     ("http", thttp.InferenceServerClient(http_target))):
    good = {"authorization": "Bearer " + token}
    out[kind] = [
        status(lambda: client.load_model(model)),
        status(lambda: client.load_model(model, headers={"authorization": "Bearer wrong-one"})),
        status(lambda: client.load_model(model, headers=good)),
        client.is_model_ready(model + "_decoder"),
        status(lambda: client.unload_model(model, headers=good)),
    ]
print(json.dumps(out))
"""


def test_tritonclient_loads_and_unloads_with_its_headers(guarded):
    """tritonclient runs in a process of its own: it registers the same protobuf names."""
    server, _ = guarded
    http = f"127.0.0.1:{server.server.http_port}"
    cmd = [sys.executable, "-c", TRITON, server.target, http, GREY, ALICE]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["grpc"] == ["StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED", "OK", True, "OK"]
    assert found["http"] == ["401", "403", "OK", True, "OK"]
    assert served(server) == []


def test_the_token_is_in_no_log_line_span_or_reply(guarded, spans):
    server, _ = guarded
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(request_id)s"))
    from vae_serve.server.protocol.calls import RequestIdFilter

    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("vae_serve")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    observe.set_access_log(True)
    replies = []
    try:
        for token in (ALICE, BOB, None):
            replies.append(grpc_call(server, "load", GREY, token)[1])
            replies.append(rest(server, f"/v2/repository/models/{RGB}/load", token)[2].decode())
        replies.append(grpc_call(server, "unload", GREY, ALICE)[1])
    finally:
        observe.set_access_log(False)
        root.removeHandler(handler)
        root.setLevel(level)
    logged = stream.getvalue()
    assert "vae_serve.access" in logged and "RepositoryModelLoad" in logged  # the access log was on
    assert "load of grey asked by admin alice" in logged
    attributes = [
        str(value)
        for span in spans.get_finished_spans()
        for value in [*span.attributes.keys(), *span.attributes.values(), span.name]
    ]
    assert any("RepositoryModelLoad" in value for value in attributes)  # spans were recorded
    for secret in (ALICE, BOB, hashlib.sha256(ALICE.encode()).hexdigest()):
        assert secret not in logged
        assert not any(secret in value for value in attributes)
        assert not any(secret in reply for reply in replies)


def test_gate_reads_one_bearer_credential():
    too_long = "a" * (admin.MAX_TOKEN + 1)  # in the file, still refused: never hashed
    path_admins = (
        admin.Admin(hashlib.sha256(b"other-token-0123456789").digest(), "other"),
        admin.Admin(hashlib.sha256(too_long.encode()).digest(), "long"),
    )

    class Fixed(admin.TokenFile):
        def __init__(self) -> None:
            self.admins = (*path_admins, admin.Admin(hashlib.sha256(ALICE.encode()).digest(), "alice"))

        async def current(self) -> tuple[admin.Admin, ...]:
            return self.admins

    gate = admin.ControlGate(Fixed(), loopback_only=True)
    assert asyncio.run(gate.admit([f"Bearer {ALICE}"])) == "admin alice"
    assert asyncio.run(gate.admit([f"bearer  {ALICE} "])) == "admin alice"  # the scheme's case is free
    for values in ([], [f"Token {ALICE}"], ["Bearer"], ["Bearer "], [f"Bearer {ALICE}", f"Bearer {ALICE}"]):
        with pytest.raises(Unauthenticated):
            asyncio.run(gate.admit(values))
    for values in ([f"Bearer {BOB}"], [f"Bearer {ALICE}x"], [f"Bearer {too_long}"]):
        with pytest.raises(PermissionDenied):
            asyncio.run(gate.admit(values))


def test_hash_token_prints_the_line_for_a_token_from_stdin():
    out = io.StringIO()
    assert cli.hash_token(["--name", "alice"], io.StringIO(ALICE + "\n"), out) == 0
    line = out.getvalue()
    assert line == f"sha256:{hashlib.sha256(ALICE.encode()).hexdigest()} alice\n"


def test_hash_token_new_makes_a_fresh_token_and_its_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["hash-token", "--new"]) == 0  # a subcommand, not parsed as settings
    token, line = capsys.readouterr().out.splitlines()
    assert cli.main(["hash-token", "--new"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != token
    assert len(token) >= 40 and admin.check_token(token) == token
    (tmp_path / "tokens").write_text(line + "\n")
    (found,) = admin.read_token_file(tmp_path / "tokens")
    gate = admin.ControlGate(admin.TokenFile(tmp_path / "tokens"), loopback_only=False)
    assert asyncio.run(gate.admit([f"Bearer {token}"])) == f"admin {found.name}"
    assert found.name == line[:19]  # unnamed: the hash's start names it in the log


@pytest.mark.parametrize(
    ("args", "stdin"),
    [([], "short\n"), ([], "two words-0123456789\n"), ([], "x" * 2000), (["--name", "no spaces"], ALICE)],
)
def test_hash_token_refuses_what_the_server_could_not_take(args, stdin, capsys):
    assert cli.hash_token(args, io.StringIO(stdin), io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae-serve hash-token: error:") and err.count("\n") == 1
    assert stdin.strip() not in err
