"""The quick benchmarks (the server's layers in this process, its statistics, a lone run after
idling, the playground's pad in a real browser, one replica against two behind nginx) still run
against today's server and print their table: a changed signature or metric label breaks them at
once, not on the day someone measures again. Run as the docs run them, with counts too small to
mean anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO_ROOT


@pytest.mark.parametrize(
    ("script", "args", "header"),
    [
        ("layers.py", ["--calls", "50"], "| layer | us per call |"),
        ("stats_overhead.py", ["--iterations", "500"], "| mode | added per request (us) |"),
        ("playground_pad.py", ["--duration", "1"], "| pointer moves/s | decodes | updates/s |"),
        ("variants.py", ["--runs", "40"], "| graph | variant | MB | batch-1 p50 (us) |"),
        ("cold.py", ["--runs", "3", "--rounds", "1"], "| decoder | huge pages | before the run |"),
        (
            "scale_out.py",
            ["--pairs", "1", "--duration", "0.5", "--concurrency", "4"],
            "| load | one replica req/s | two replicas req/s |",
        ),
    ],
)
def test_the_benchmark_runs_and_prints_its_table(script, args, header):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert header in done.stdout
    assert sum(line.startswith("|") for line in lines) >= 3, done.stdout  # header, rule, a row at least
