"""A version's graphs against their lighter variants, in ONNX Runtime on one thread, alternating:
batch-1 p50 and batch-256 rows per second for each graph.

    python bench/variants.py [--model-dir models/fashion-vae/2] [--runs 2000]

Variants: INT8 as `vae-train quantize` writes it (the card's quality figures come from that
command), and FP16 (weights and arithmetic in half precision, inputs and outputs float32), which
ONNX Runtime's CPU provider runs without half-precision kernels on x86: the row that says whether
it pays on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _table import markdown_table

from vae_serve.training.quantize import quantize_graph

GRAPHS = {"encoder.onnx": "x", "decoder.onnx": "z"}


def _fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    onnx.save(convert_float_to_float16(graph, keep_io_types=True), str(target))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _times(sessions: dict[str, ort.InferenceSession], feed: str, rows: int, runs: int) -> dict[str, float]:
    """Median seconds per run of each session on the same rows, the order alternating."""
    values = np.random.default_rng(0).random((rows, sessions["float32"].get_inputs()[0].shape[1]))
    feeds = {feed: values.astype(np.float32)}
    for session in sessions.values():
        for _ in range(max(5, runs // 20)):
            session.run(None, feeds)
    spent: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(runs):
        order = list(sessions) if i % 2 == 0 else list(reversed(sessions))
        for name in order:
            began = time.perf_counter()
            sessions[name].run(None, feeds)
            spent[name].append(time.perf_counter() - began)
    return {name: float(np.median(values)) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/fashion-vae/2"))
    parser.add_argument("--runs", type=int, default=2000, help="timed batch-1 runs per variant (1/20 at 256)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for graph, feed_name in GRAPHS.items():
            paths = {"float32": args.model_dir / graph}
            paths["int8"] = Path(scratch) / f"int8-{graph}"
            quantize_graph(paths["float32"], paths["int8"])
            paths["float16"] = Path(scratch) / f"fp16-{graph}"
            _fp16(paths["float32"], paths["float16"])
            sessions = {name: _session(path) for name, path in paths.items()}
            one = _times(sessions, feed_name, 1, args.runs)
            many = _times(sessions, feed_name, 256, max(20, args.runs // 20))
            for name, path in paths.items():
                rows.append(
                    [
                        graph.removesuffix(".onnx"),
                        name,
                        f"{path.stat().st_size / 1e6:.1f}",
                        f"{one[name] * 1e6:,.0f}",
                        f"{one[name] / one['float32']:.2f}x",
                        f"{256 / many[name]:,.0f}",
                        f"{many['float32'] / many[name]:.2f}x",
                    ]
                )
    header = ["graph", "variant", "MB", "batch-1 p50 (us)", "vs float32", "batch-256 rows/s", "vs float32"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
