"""Export the encoder and decoder to ONNX, prove them equal to PyTorch, write a model version.

The output is one Triton-style version directory, `<repository>/<name>/<version>/` holding
`encoder.onnx`, `decoder.onnx` and `model.json` (the model card). It is assembled in a hidden
sibling directory and renamed into place, so a server watching the repository never sees a
half-written version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .model import VAE, Decoder, Encoder

__all__ = [
    "OPSET",
    "PARITY_BATCH_SIZES",
    "PARITY_TOLERANCE",
    "VERSION_RULE",
    "ExportError",
    "claim_version",
    "export_onnx",
    "next_version",
    "sha256_of",
    "write_version",
]

OPSET = 18
PARITY_BATCH_SIZES = (1, 7, 256)
PARITY_TOLERANCE = 1e-5  # max abs difference, ORT vs PyTorch, in the outputs' own units
# What the server accepts as a version directory (server/repository.py): ASCII digits, no leading
# zero, at most 18 (an int64). Anything else would be published and then never served.
VERSION_RULE = re.compile(r"0|[1-9][0-9]{0,17}")


class ExportError(Exception):
    """An exported graph failed its check or disagreed with PyTorch."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_graph(
    module: torch.nn.Module, width: int, path: Path, input_name: str, output_names: list[str]
) -> None:
    batch = torch.export.Dim("batch", min=1)
    example = torch.zeros(2, width)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=output_names,
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
        external_data=False,  # one self-contained file per graph
        dynamic_shapes={"x" if isinstance(module, Encoder) else "z": {0: batch}},
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _parity(module: torch.nn.Module, path: Path, width: int, seed: int) -> float:
    """Largest |ORT - PyTorch| over the parity batch sizes; raises past the tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in PARITY_BATCH_SIZES:
        x = torch.rand(n, width, generator=generator)
        if isinstance(module, Decoder):
            x = x * 6 - 3  # latents around the prior's bulk, not [0, 1]
        with torch.no_grad():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {input_name: x.numpy()})
        for e, g in zip(expected, got, strict=True):
            if g.shape != tuple(e.shape):
                raise ExportError(f"{path.name}: batch {n}: ORT shape {g.shape} != {tuple(e.shape)}")
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from PyTorch by {worst:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g}, batch sizes {PARITY_BATCH_SIZES})"
        )
    return worst


def export_onnx(model: VAE, out_dir: Path, seed: int = 0) -> dict[str, float]:
    """Write encoder.onnx and decoder.onnx into out_dir; return each graph's parity error."""
    model = model.cpu().eval()
    cfg = model.config
    graphs = {
        "encoder.onnx": (Encoder(model).eval(), cfg.input_dim, "x", ["mean", "logvar"]),
        "decoder.onnx": (Decoder(model).eval(), cfg.latent_dim, "z", ["x"]),
    }
    parity = {}
    for filename, (module, width, input_name, outputs) in graphs.items():
        path = out_dir / filename
        _export_graph(module, width, path, input_name, outputs)
        parity[filename] = _parity(module, path, width, seed)
    return parity


def next_version(repository: Path, name: str) -> str:
    """One past the highest version present, counting only the names the server takes for versions."""
    model_dir = repository / name
    names = [p.name for p in model_dir.iterdir()] if model_dir.is_dir() else []
    highest = max((int(n) for n in names if VERSION_RULE.fullmatch(n)), default=0)
    following = str(highest + 1)
    if not VERSION_RULE.fullmatch(following):
        raise ExportError(f"no version after {highest} fits in 18 digits; pass --version")
    return following


def claim_version(repository: Path, name: str, version: str | None) -> Path:
    """The directory a run will publish to (`version`, or the next one), refused at once if taken:
    checked before training, so a clash costs nothing. `write_version` checks again at the end."""
    for folder in (repository, repository / name):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"{folder} is not a directory")
    target = repository / name / (version or next_version(repository, name))
    if target.exists():
        raise ExportError(f"{target} already exists; pass another --version or remove it")
    return target


def write_version(
    model: VAE, repository: Path, name: str, version: str, card: dict[str, Any], seed: int = 0
) -> Path:
    """Export, check and publish `<repository>/<name>/<version>/` atomically; return its path."""
    target = repository / name / version
    if target.exists():
        raise ExportError(f"{target} already exists; pass another --version or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        parity = export_onnx(model, staging, seed)
        card = {
            **card,
            "name": name,
            "version": version,
            "opset": OPSET,
            "parity_max_abs_diff": parity,
            "files": {
                f: {"sha256": sha256_of(staging / f), "bytes": (staging / f).stat().st_size}
                for f in sorted(parity)
            },
        }
        (staging / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; a served repository must be readable
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
