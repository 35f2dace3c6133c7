"""Triton, started the peer harness's way (`../shared/peers/start_triton.sh`: the tritonserver of
its venv, the graph behind its python backend calling ONNX Runtime), for the benchmarks that
compare with it. The harness serves gRPC only; for HTTP the script runs from a copy with Triton's
HTTP endpoint allowed on a port of ours, every other line as the harness has it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc.aio as triton_aio
from _test_support import free_port

__all__ = ["PEERS", "Triton", "alive", "start_triton", "stop"]

PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
_HTTP_EDITS = {
    "--allow-http=false": "--allow-http=true",
    'HTTP_PORT="$(free_port)"': 'HTTP_PORT="$TRITON_HTTP_PORT"',
}


@dataclass(frozen=True)
class Triton:
    pid: int  # its process group's, as start_triton.sh reports it
    grpc_target: str
    http_port: int | None


def start_triton(model_dir: Path, batching: bool, stack: ExitStack, *, http: bool = False) -> Triton:
    """Triton serving `model_dir`'s decoder.onnx as `decoder`, with its dynamic batcher (max batch
    64, 2000 us window) or without, stopped with `stack`; ready when this returns."""
    script = PEERS / "start_triton.sh"
    if not script.is_file():
        raise SystemExit(f"{script}: missing; the peer harness starts Triton (see its README)")
    env = {**os.environ, "PEER_TRITON_BATCHING": "1" if batching else "0"}
    env["PEERS_HOME"] = str(_own_home(stack))
    http_port = None
    if http:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in ("common.sh", "triton_model.py"):
            shutil.copy(PEERS / name, folder / name)
        text = script.read_text()
        for old, new in _HTTP_EDITS.items():
            if old not in text:
                raise SystemExit(f"{script}: no {old!r} to change; the harness has changed")
            text = text.replace(old, new)
        script = folder / "start_triton.sh"
        script.write_text(text)
        http_port = free_port()
        env["TRITON_HTTP_PORT"] = str(http_port)
    port = free_port()
    started = subprocess.run(
        ["bash", str(script), str(model_dir.resolve()), str(port), "decoder"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    triton = Triton(int(started.stdout.split()[-1]), f"127.0.0.1:{port}", http_port)
    stack.callback(stop, triton)
    asyncio.run(_wait_ready(triton.grpc_target))
    return triton


def alive(triton: Triton) -> bool:
    """Whether its server still runs (Triton's python backend can die under a benchmark's load)."""
    try:
        os.kill(triton.pid, 0)  # the server itself: started in a session of its own, it leads it
    except ProcessLookupError:
        return False
    return True


def _own_home(stack: ExitStack) -> Path:
    """A peers' home of this Triton's own, so that one started beside another (or again) keeps its
    own model repository and log; the venv and the server's copied binaries are shared."""
    shared = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "vae-peers"))
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vae-triton-")))
    (home / "venv").symlink_to(shared / "venv")
    (home / "work").mkdir()
    if (shared / "work" / "tritonserver").is_dir():
        (home / "work" / "tritonserver").symlink_to(shared / "work" / "tritonserver")
    return home


def stop(triton: Triton) -> None:
    """Its whole process group: the server and its backend's stub."""
    pgid = triton.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(100):
            os.killpg(pgid, 0)
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


async def _wait_ready(target: str) -> None:
    client = triton_aio.InferenceServerClient(target)
    try:
        for _ in range(600):
            try:
                if await client.is_model_ready("decoder"):
                    return
            except Exception:  # not listening yet: tritonclient wraps every failure alike
                pass
            await asyncio.sleep(0.1)
        raise SystemExit(f"Triton's decoder at {target} never became ready")
    finally:
        await client.close()
