"""Lighter graphs for CPUs: a published version's graphs quantized to 8-bit integers by ONNX
Runtime's dynamic quantization, published as a new version of the same model, whose card states
what they cost: the test set's -ELBO and IWAE bound beside the source version's, both computed
from the graphs in the same run with the same draws, and the largest difference of each output.

Dynamic quantization stores each MatMul and Gemm weight as 8-bit integers and quantizes the
activations per batch as the graph runs: a quarter of the bytes a call streams through the caches,
and integer products (VNNI where the CPU has it). The weights are signed and kept to 7 bits
(ONNX Runtime's `reduce_range`): its u8s8 kernels, the fast ones, add pairs of products in 16 bits
on CPUs with AVX2 and without VNNI, where full 8-bit weights can saturate them, so a version could
lose accuracy on one x86 machine and not on another; at 7 bits they cannot saturate. One scale per
output channel wins back what the lost bit costs. Each batch's activations get their own scale,
so a row's answer depends on the rows batched with it; the card says so. The measured trade-offs
are on the benchmarks page.

A version whose -ELBO grows by more than `max_loss_nats` is not published: the version would be
served as the newest, so the bound is part of the command, not advice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .data import ImageRows
from .evaluate import Evaluation, evaluate
from .export import (
    CARD_FILE,
    GRAPH_FILES,
    MAX_CARD_BYTES,
    ExportError,
    card_image_shape,
    check_graphs,
    claim_version,
    staged_version,
    write_card,
)
from .model import reparameterize
from .prior import Prior, prior_from_card

__all__ = [
    "DEFAULT_MAX_LOSS_NATS",
    "GraphModel",
    "Quantized",
    "quantize_graph",
    "quantize_version",
    "read_card",
]

DEFAULT_MAX_LOSS_NATS = 0.5  # test -ELBO a quantized version may add to its source's, per image
_TINY = torch.finfo(torch.float32).tiny


class GraphModel:
    """A version's graphs in ONNX Runtime (one thread), with the prior its card records: what
    `evaluate` needs of a model, so a version's figures come from the files that are served."""

    def __init__(self, folder: Path, prior: Prior) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.encoder, self.decoder = (
            ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
            for name in GRAPH_FILES
        )
        self.prior = prior

    def eval(self) -> GraphModel:
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder.run(["mean", "logvar"], {"x": x.cpu().numpy()})
        return torch.from_numpy(mean), torch.from_numpy(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of x for z [..., L], as a module's `decode` gives them: the graph gives
        values in [0, 1] for rows, so leading axes are flattened and restored, and the values
        turned back into logits in float64 (1.0 itself, a float32 sigmoid's ceiling, is taken as
        the nearest value below it)."""
        (x,) = self.decoder.run(["x"], {"z": z.reshape(-1, z.shape[-1]).cpu().numpy()})
        p = torch.from_numpy(x).double().clamp(_TINY, 1 - 2**-25)
        return (p.log() - (-p).log1p()).reshape(*z.shape[:-1], x.shape[-1])

    reparameterize = staticmethod(reparameterize)


@dataclass(frozen=True)
class Quantized:
    path: Path
    source: Evaluation
    quantized: Evaluation
    max_abs_diff: dict[str, float]


def quantize_graph(source: Path, target: Path) -> None:
    """`source`'s graph quantized as this module's docstring says, written to `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source))
    # The exporter's recorded shapes trip onnx's shape inference inside quantize_dynamic; ONNX
    # Runtime infers them again when it loads the graph.
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / source.name
        onnx.save(graph, str(plain))
        with _quiet_advice():
            quantize_dynamic(
                str(plain), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            )


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    """quantize_dynamic advises, on the root logger, a pre-processing step meant for static
    quantization of convolutional networks; it does not apply here."""

    def advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _max_abs_diff(source: GraphModel, quantized: GraphModel, rows: ImageRows) -> dict[str, float]:
    """The largest difference of each output as the graphs give it, over the test rows: the
    encoder's on the images, the decoder's (values in [0, 1]) on the source encoder's means."""
    worst = dict.fromkeys(("mean", "logvar", "x"), 0.0)
    for x in rows.batches(500):
        feed = {"x": x.cpu().numpy()}
        ours, theirs = (model.encoder.run(["mean", "logvar"], feed) for model in (source, quantized))
        pairs = [*zip(("mean", "logvar"), ours, theirs, strict=True)]
        z = {"z": ours[0]}
        pairs.append(("x", *(model.decoder.run(["x"], z)[0] for model in (source, quantized))))
        for name, a, b in pairs:
            worst[name] = max(worst[name], float(np.abs(a - b).max()))
    return worst


def read_card(version_dir: Path) -> dict[str, Any]:
    """`version_dir`'s model.json, no larger than a server reads, with its image shape."""
    path = version_dir / CARD_FILE
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ValueError(f"over the {MAX_CARD_BYTES} bytes a server reads")
        card = json.loads(path.read_text())
        card_image_shape(card["image_shape"])
    except (OSError, ValueError, KeyError, TypeError, ExportError) as exc:
        raise ExportError(f"{path}: not a model card ({exc})") from None
    return card


def quantize_version(
    source: Path,
    test_rows: ImageRows,
    *,
    version: str | None = None,
    iwae_k: int = 100,
    max_loss_nats: float = DEFAULT_MAX_LOSS_NATS,
    seed: int = 0,
) -> Quantized:
    """Quantize `source` (a version directory of a repository) into a new version of the same
    model; `test_rows` are the test images its figures are computed on. Refused, and nothing
    published, when the -ELBO grows by more than `max_loss_nats`."""
    card = read_card(source)
    if card.get("quantization"):
        raise ExportError(f"{source}: already quantized; quantize the version it came from")
    check_graphs(source, card["image_shape"])
    try:
        prior = prior_from_card(card)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{source / CARD_FILE}: prior unreadable ({exc})") from None
    target = claim_version(source.resolve().parent.parent, source.resolve().parent.name, version)
    with staged_version(target) as staging:
        for name in GRAPH_FILES:
            quantize_graph(source / name, staging / name)
        check_graphs(staging, card["image_shape"])
        models = GraphModel(source, prior), GraphModel(staging, prior)
        before, after = (evaluate(model, test_rows, iwae_k=iwae_k, seed=seed) for model in models)
        loss = after.neg_elbo - before.neg_elbo
        if not loss <= max_loss_nats:
            raise ExportError(
                f"quantized graphs lose {loss:.3f} nats of test -ELBO per image (from "
                f"{before.neg_elbo:.3f} to {after.neg_elbo:.3f}), more than the {max_loss_nats} allowed"
            )
        diff = _max_abs_diff(*models, test_rows)
        fields = _card(card, target, before, after, diff)
        write_card(staging, image_shape=card["image_shape"], extra=fields, directions_rows=test_rows)
    return Quantized(target, before, after, diff)


def _figure(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def _card(
    source: Mapping[str, Any], target: Path, before: Evaluation, after: Evaluation, diff: dict[str, float]
) -> dict[str, Any]:
    """The source's card (recipe, prior, training data) with the figures of the quantized graphs,
    and a record of what was done and what it cost. Figures the graphs do not give (PyTorch
    parity, the binarized bound) are dropped rather than carried over untrue."""
    dropped = {"parity_max_abs_diff", "files", "card_written"}
    card = {key: value for key, value in source.items() if key not in dropped}
    return {
        **card,
        "name": target.parent.name,
        "version": target.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exporter": f"{source.get('exporter', 'unknown')}; onnxruntime {ort.__version__} quantize_dynamic",
        "test_neg_elbo_nats": _figure(after.neg_elbo),
        "test_iwae_nll_nats": _figure(after.iwae_nll),
        "iwae_k": after.iwae_k,
        "test_iwae_nll_binarized_nats": None,
        "iwae_binarized_k": 0,
        "quantization": {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weights": "int8 kept to 7 bits, one scale per output channel; activations uint8, per batch",
            "source_version": str(source.get("version")),
            "source_test_neg_elbo_nats": _figure(before.neg_elbo),
            "source_test_iwae_nll_nats": _figure(before.iwae_nll),
            "test_neg_elbo_increase_nats": _figure(after.neg_elbo - before.neg_elbo),
            "max_abs_diff": {name: float(f"{value:.3g}") for name, value in diff.items()},
            # Activations are scaled per batch, so a row's answer depends on the rows batched with it.
            "rows_depend_on_their_batch": True,
        },
    }
