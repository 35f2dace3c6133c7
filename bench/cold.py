"""A lone request's graph run: the decoder at batch 1 right after another run, and after the
process idled a while (what a request on a quiet server meets), on small pages and on huge pages,
float32 and INT8; and what keeping the weights warm with a run every few milliseconds of the
idle time buys, and costs.

    python bench/cold.py [--model-dir models/fashion-vae/2] [--runs 150] [--rounds 3]

Each configuration runs in a child process of its own (glibc reads GLIBC_TUNABLES at start:
`glibc.malloc.hugetlb=1` puts malloc's large blocks, ONNX Runtime's weights among them, on
transparent huge pages where the kernel's mode is `madvise`); the rounds alternate them, and the
table gives the median of the rounds' medians and their range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _table import markdown_table

from vae_serve.server.models.graph import CPU, Graph

HUGE_PAGES = "glibc.malloc.hugetlb=1"
IDLE_S = (0.0, 0.001, 0.01, 0.05)  # gaps before a timed run; 0: back to back
WARM_GAP_S = 0.02  # the gap in which a keep-warm run is made every...
WARM_EVERY_S = (0.005, 0.002, 0.001)


def _child(graph: Path, runs: int) -> dict[str, float]:
    """Median microseconds of a timed run after each kind of gap, and the keep-warm runs' CPU."""
    opened = Graph(graph, [CPU], 1, "cpu", graph.read_bytes())  # as the server opens it, one thread
    z = np.zeros((1, opened.input_shape[1]), np.float32)
    for _ in range(100):
        opened.run(z)

    def timed() -> float:
        began = time.perf_counter()
        opened.run(z)
        return (time.perf_counter() - began) * 1e6

    result = {}
    for idle in IDLE_S:
        spent = []
        for _ in range(runs):
            if idle:
                time.sleep(idle)
            spent.append(timed())
        result[f"idle {idle * 1e3:g} ms"] = statistics.median(spent)
    for every in WARM_EVERY_S:
        spent, cpu, idle_s = [], 0.0, 0.0
        for _ in range(runs):
            end = time.perf_counter() + WARM_GAP_S
            while end - time.perf_counter() > every:
                time.sleep(every)
                began = time.process_time()
                opened.run(z)
                cpu += time.process_time() - began
            time.sleep(max(0.0, end - time.perf_counter()))
            idle_s += WARM_GAP_S
            spent.append(timed())
        result[f"idle {WARM_GAP_S * 1e3:g} ms, a run every {every * 1e3:g} ms"] = statistics.median(spent)
        result[f"warm cpu {every * 1e3:g}"] = cpu / idle_s
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    huge_kb = sum(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages"))
    result["huge pages MB"] = huge_kb / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/fashion-vae/2"))
    parser.add_argument("--runs", type=int, default=150, help="timed runs per gap, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.runs)))
        return

    from vae_serve.training.quantize import quantize_graph

    with tempfile.TemporaryDirectory() as scratch:
        graphs = {"float32": args.model_dir / "decoder.onnx", "int8": Path(scratch) / "decoder-int8.onnx"}
        quantize_graph(graphs["float32"], graphs["int8"])
        configs = [(name, huge) for name in graphs for huge in (False, True)]
        results: dict[tuple[str, bool], list[dict[str, float]]] = {config: [] for config in configs}
        for round_ in range(args.rounds):
            for name, huge in configs if round_ % 2 == 0 else reversed(configs):
                env = {**os.environ, "GLIBC_TUNABLES": HUGE_PAGES if huge else ""}
                command = [sys.executable, __file__, "--child", str(graphs[name]), "--runs", str(args.runs)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                results[(name, huge)].append(json.loads(done.stdout))

    conditions = [key for key in results[configs[0]][0] if key.startswith("idle")]
    rows = []
    for name, huge in configs:
        rounds = results[(name, huge)]
        base = statistics.median(r[conditions[0]] for r in rounds)
        for condition in conditions:
            values = [r[condition] for r in rounds]
            every = condition.rpartition("every ")[2].removesuffix(" ms")
            cpu = statistics.median(r[f"warm cpu {every}"] for r in rounds) if "every" in condition else None
            huge_mb = statistics.median(r["huge pages MB"] for r in rounds)
            rows.append(
                [
                    name,
                    f"{'yes' if huge else 'no'} ({huge_mb:.0f} MB)",
                    condition,
                    f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})",
                    f"{statistics.median(values) / base:.2f}x",
                    "" if cpu is None else f"{cpu:.1%}",
                ]
            )
    header = ["decoder", "huge pages", "before the run", "p50 us (range)", "vs back to back"]
    header.append("warm runs' CPU")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
