"""Export any VAE's encoder and decoder to ONNX, prove them equal to PyTorch and to the serving
contract, and publish a model version: the trainer's path and `export_vae`'s are one.

The output is one Triton-style version directory, `<repository>/<name>/<version>/` holding
`encoder.onnx`, `decoder.onnx` and `model.json` (the model card). It is assembled in a hidden
sibling directory and renamed into place, so a server watching the repository never sees a
half-written version.

The contract (docs/training.md, "Bring your own VAE"), checked on the written graphs in ONNX
Runtime, the way the server loads them:

- encoder.onnx: input `x` float32 [batch, D] in [0, 1] -> outputs `mean`, `logvar` float32 [batch, L];
- decoder.onnx: input `z` float32 [batch, L] -> output `x` float32 [batch, D], values in [0, 1];
- `batch` a dynamic axis, every weight inline (no external data), D = prod(image_shape);
- image_shape channel-last: [H, W] for one channel, [H, W, C] for C; rows are pictures [H, W, C]
  flattened in that order (numpy's and Pillow's layout).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .data import ImageRows
from .exporter_internals import make_torchlib_ops_once

__all__ = [
    "CARD_FILE",
    "GRAPH_FILES",
    "MAX_CARD_BYTES",
    "OPSET",
    "PARITY_BATCH_SIZES",
    "PARITY_TOLERANCE",
    "VERSION_RULE",
    "ExportError",
    "card_image_shape",
    "check_graphs",
    "claim_version",
    "export_vae",
    "next_version",
    "sha256_of",
    "staged_version",
    "write_card",
]

OPSET = 18
PARITY_BATCH_SIZES = (1, 7, 256)
PARITY_TOLERANCE = 1e-5  # max abs difference, ORT vs PyTorch, in the outputs' own units
# What the server accepts as a version directory (server/models/repository.py): ASCII digits, no leading
# zero, at most 18 (an int64). Anything else would be published and then never served.
VERSION_RULE = re.compile(r"0|[1-9][0-9]{0,17}")
GRAPH_FILES = ("encoder.onnx", "decoder.onnx")
CARD_FILE = "model.json"
MAX_CARD_BYTES = 1 << 20  # the server refuses a larger card (server/models/repository.py)
_ENCODER = ("x", ("mean", "logvar"))
_DECODER = ("z", ("x",))
_FLOAT = "tensor(float)"


class ExportError(Exception):
    """A module or graph that does not meet the contract, or a version that cannot be written."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card_image_shape(shape: Sequence[int]) -> list[int]:
    """`shape` as the card records it: [H, W] for one channel, [H, W, C] for more (channel-last).
    [H, W, 1] becomes [H, W]: the form the server's picture routes take."""
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        raise ExportError(f"image_shape {shape!r}: expected [H, W] or [H, W, C] of integers") from None
    if len(dims) == 3 and dims[2] == 1:
        dims = dims[:2]
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise ExportError(f"image_shape {list(shape)}: expected [H, W] or [H, W, C] (channel-last), all >= 1")
    return dims


def _channels(image_shape: list[int]) -> int:
    return image_shape[2] if len(image_shape) == 3 else 1


# --- Versions -----------------------------------------------------------------------------------


def next_version(repository: Path, name: str) -> str:
    """One past the highest version present, counting only the names the server takes for versions."""
    model_dir = repository / name
    names = [p.name for p in model_dir.iterdir()] if model_dir.is_dir() else []
    highest = max((int(n) for n in names if VERSION_RULE.fullmatch(n)), default=0)
    following = str(highest + 1)
    if not VERSION_RULE.fullmatch(following):
        raise ExportError(f"no version after {highest} fits in 18 digits; pass --version")
    return following


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise ExportError(f"model name {name!r}: one directory name, not hidden, without / or \\")


def claim_version(repository: Path, name: str, version: str | None) -> Path:
    """The directory a run will publish to (`version`, or the next one), refused at once if taken:
    checked before training, so a clash costs nothing. `export_vae` checks again at the end."""
    _check_name(name)
    if version is not None and not VERSION_RULE.fullmatch(version):
        raise ExportError(f"version {version!r}: ASCII digits without a leading zero, at most 18")
    for folder in (repository, repository / name):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"{folder} is not a directory")
    target = repository / name / (version or next_version(repository, name))
    if target.exists():
        raise ExportError(f"{target} already exists; pass another --version or remove it")
    return target


# --- From torch modules to graphs ---------------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages for a terminal


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class _EncoderGraph(nn.Module):
    """What is exported: the caller's encoder, its two outputs as a tuple."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x)
        return mean, logvar


class _DecoderGraph(nn.Module):
    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def _probe(encoder: nn.Module, decoder: nn.Module, input_dim: int) -> int:
    """Latent width L, from one PyTorch run of each module on a batch of 2; checks their outputs
    against the contract first, so a wrong module fails in one line, not inside the exporter."""
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, input_dim))
    except Exception as exc:  # whatever the caller's module raises
        raise ExportError(f"encoder(x [2, {input_dim}]) failed: {_first_line(exc)}") from None
    if not (isinstance(out, tuple | list) and len(out) == 2 and all(torch.is_tensor(t) for t in out)):
        raise ExportError("the encoder must return a tuple (mean, logvar) of two tensors")
    for what, tensor in zip(("mean", "logvar"), out, strict=True):
        if tensor.dtype != torch.float32 or tensor.ndim != 2 or tensor.shape[0] != 2:
            raise ExportError(
                f"encoder: {what} is {tensor.dtype} {list(tensor.shape)} for x [2, {input_dim}]; "
                "expected float32 [2, L]"
            )
    if out[0].shape != out[1].shape:
        raise ExportError(f"encoder: mean {list(out[0].shape)} and logvar {list(out[1].shape)} differ")
    latent_dim = out[0].shape[1]
    try:
        with torch.no_grad():
            x = decoder(torch.zeros(2, latent_dim))
    except Exception as exc:
        raise ExportError(f"decoder(z [2, {latent_dim}]) failed: {_first_line(exc)}") from None
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or tuple(x.shape) != (2, input_dim):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ExportError(f"decoder: gave {got} for z [2, {latent_dim}]; expected float32 [2, {input_dim}]")
    return latent_dim


def _export_graph(
    module: nn.Module, width: int, path: Path, input_name: str, output_names: Sequence[str]
) -> None:
    make_torchlib_ops_once()
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            module,
            (torch.zeros(2, width),),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
            external_data=False,  # one self-contained file per graph
            dynamic_shapes=({0: batch},),
        )
    except Exception as exc:  # the exporter raises many types; one line names the graph
        raise ExportError(f"{path.name}: torch.onnx.export failed ({_first_line(exc)})") from None


def _parity(module: nn.Module, path: Path, width: int, seed: int, tolerance: float) -> float:
    """Largest |ORT - PyTorch| over the parity batch sizes; raises past the tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in PARITY_BATCH_SIZES:
        x = torch.rand(n, width, generator=generator)
        if isinstance(module, _DecoderGraph):
            x = x * 6 - 3  # latents around the prior's bulk, not [0, 1]
        with torch.no_grad():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {input_name: x.numpy()})
        for e, g in zip(expected, got, strict=True):
            if g.shape != tuple(e.shape):
                raise ExportError(f"{path.name}: batch {n}: ORT shape {g.shape} != {tuple(e.shape)}")
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
    if not worst <= tolerance:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from PyTorch by {worst:.3g} "
            f"(tolerance {tolerance:g}, batch sizes {PARITY_BATCH_SIZES})"
        )
    return worst


# --- Checking graphs against the contract -------------------------------------------------------


def _graphs_in(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs_in(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs_in(sub)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    for graph in _graphs_in(model.graph):
        tensors = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
        for node in graph.node:
            for attribute in node.attribute:
                tensors += [attribute.t] if attribute.HasField("t") else []
                tensors += list(attribute.tensors)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
            return True
    return False


def _load_graph(path: Path) -> ort.InferenceSession:
    """One graph file, checked as the server reads it (a regular file, weights inline), by
    onnx.checker, and loaded into ONNX Runtime."""
    if path.is_symlink():
        raise ExportError(f"{path}: a symbolic link; the server refuses links in a version")
    if not path.is_file():
        raise ExportError(f"{path}: missing (a version holds {' and '.join(GRAPH_FILES)})")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ExportError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    if _uses_external_data(model):
        raise ExportError(
            f"{path}: its weights are in external data, which the server refuses (they would escape "
            "the card's sha256); save the graph with its weights inline"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise ExportError(f"{path}: fails onnx.checker ({_first_line(exc)})") from None
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's Fail, InvalidGraph, ...
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None


def _widths(
    session: ort.InferenceSession, path: Path, input_name: str, outputs: Sequence[str]
) -> dict[str, int]:
    """Each input's and output's width, after checking names, dtype and the [batch, width] shape."""
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [input_name]:
        raise ExportError(f"{path}: inputs are {[i.name for i in inputs]}, expected one named {input_name!r}")
    found = sorted(o.name for o in session.get_outputs())
    if found != sorted(outputs):
        raise ExportError(f"{path}: outputs are {found}, expected {sorted(outputs)}")
    widths = {}
    for arg in (*inputs, *session.get_outputs()):
        shape = "[" + ", ".join(map(str, arg.shape)) + "]"
        if arg.type != _FLOAT:
            raise ExportError(f"{path}: {arg.name!r} is {arg.type}, expected float32 ({_FLOAT})")
        if len(arg.shape) != 2 or not isinstance(arg.shape[1], int):
            raise ExportError(f"{path}: {arg.name!r} has shape {shape}, expected [batch, width], width fixed")
        if isinstance(arg.shape[0], int):
            raise ExportError(f"{path}: {arg.name!r} has a fixed batch axis {shape}; export it dynamic")
        widths[arg.name] = arg.shape[1]
    return widths


def _run(session: ort.InferenceSession, path: Path, values: np.ndarray) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    try:
        results = session.run(None, {name: values})
    except Exception as exc:
        raise ExportError(f"{path}: fails to run on a batch of {len(values)} ({_first_line(exc)})") from None
    for output, value in zip(session.get_outputs(), results, strict=True):
        if value.shape != (len(values), output.shape[1]):
            raise ExportError(f"{path}: {output.name!r} is {list(value.shape)} for a batch of {len(values)}")
        if not np.isfinite(value).all():
            raise ExportError(f"{path}: {output.name!r} is not finite for a batch of {len(values)}")
    return results


def check_graphs(folder: Path, image_shape: Sequence[int]) -> tuple[int, int]:
    """Check `folder`'s encoder.onnx and decoder.onnx against the contract for `image_shape`;
    returns (D, L). Runs both in ONNX Runtime at batch sizes 1 and 3, as the server's warm-up
    does, and checks the decoder's values lie in [0, 1]."""
    shape = card_image_shape(image_shape)
    input_dim = math.prod(shape)
    paths = [folder / name for name in GRAPH_FILES]
    encoder, decoder = (_load_graph(path) for path in paths)
    enc = _widths(encoder, paths[0], *_ENCODER)
    dec = _widths(decoder, paths[1], *_DECODER)
    if enc["x"] != input_dim:
        raise ExportError(f"{paths[0]}: 'x' is {enc['x']} wide, but image_shape {shape} has D = {input_dim}")
    latent_dim = enc["mean"]
    if enc["logvar"] != latent_dim:
        raise ExportError(f"{paths[0]}: 'mean' is {latent_dim} wide but 'logvar' {enc['logvar']}")
    if dec["z"] != latent_dim:
        raise ExportError(f"{paths[1]}: 'z' is {dec['z']} wide, the encoder's latents {latent_dim}")
    if dec["x"] != input_dim:
        raise ExportError(f"{paths[1]}: 'x' is {dec['x']} wide, but image_shape {shape} has D = {input_dim}")
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        _run(encoder, paths[0], rng.random((rows, input_dim), dtype=np.float32))
        _run(decoder, paths[1], rng.standard_normal((rows, latent_dim), dtype=np.float32))
    extremes = np.full((2, latent_dim), 3.0)
    z = np.concatenate([rng.standard_normal((64, latent_dim)), extremes, -extremes])
    (x,) = _run(decoder, paths[1], z.astype(np.float32))
    if x.min() < 0 or x.max() > 1:
        raise ExportError(
            f"{paths[1]}: 'x' takes values from {x.min():.4g} to {x.max():.4g}; the contract is "
            "pixel values in [0, 1] (end the decoder with a sigmoid)"
        )
    return input_dim, latent_dim


# --- The card -----------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size}
        for name in sorted(GRAPH_FILES)
    }


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def _card_text(card: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(f"model card: not JSON ({exc}); NaN and infinities are not JSON either") from None
    if len(text.encode()) > MAX_CARD_BYTES:
        size = len(text.encode())
        raise ExportError(f"model card: {size} bytes, above the {MAX_CARD_BYTES} a server reads")
    return text


def write_card(
    folder: Path,
    *,
    image_shape: Sequence[int] | None = None,
    arch: str | None = None,
    extra: Mapping[str, Any] | None = None,
    directions_rows: ImageRows | None = None,
) -> dict[str, Any]:
    """Check the graphs in `folder` (exported elsewhere) and write its model.json: the contract's
    fields, hashes and sizes, and `extra`. A card already there keeps its other fields as they
    are, and gives image_shape and arch when they are not passed. `directions_rows`: images
    (D values each) whose posterior means, from the encoder in ONNX Runtime, give the card's
    principal_directions. Returns the card."""
    card_path = folder / CARD_FILE
    previous: dict[str, Any] = {}
    if card_path.is_file():
        try:
            previous = json.loads(card_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ExportError(f"{card_path}: unreadable ({exc}); move it aside to write a new one") from None
        if not isinstance(previous, dict):
            raise ExportError(f"{card_path}: not a JSON object; move it aside to write a new one")
    shape = image_shape or previous.get("image_shape")
    if shape is None:
        raise ExportError(f"{folder}: no image shape; pass --image-shape HxW or HxWxC")
    shape = card_image_shape(shape)
    input_dim, latent_dim = check_graphs(folder, shape)
    if directions_rows is not None:
        extra = {**(extra or {}), "principal_directions": _onnx_directions(folder, directions_rows)}
    named = {}
    if VERSION_RULE.fullmatch(folder.resolve().name):  # a version of <repository>/<name>/
        named = {"name": folder.resolve().parent.name, "version": folder.resolve().name}
    card = {
        **previous,
        **(extra or {}),
        "input_dim": input_dim,
        "image_shape": shape,
        "latent_dim": latent_dim,
        "channels": _channels(shape),
        "arch": arch or previous.get("arch") or "custom",
        **named,
        "files": _files(folder),
        "card_written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    staging = folder / ".model.json.new"  # renamed into place: a watching server never reads half
    staging.write_text(_card_text(card))
    staging.replace(card_path)
    return card


def _onnx_directions(folder: Path, rows: ImageRows) -> dict[str, object]:
    from .directions import principal_directions

    session = ort.InferenceSession(str(folder / GRAPH_FILES[0]), providers=["CPUExecutionProvider"])
    means = [session.run(["mean"], {"x": x.cpu().numpy()})[0] for x in rows.batches(1000)]
    if sum(map(len, means)) < 2:
        raise ExportError("principal directions need at least 2 images")
    return principal_directions(np.concatenate(means))


def _contract_fields(image_shape: list[int], latent_dim: int, arch: str) -> dict[str, Any]:
    return {
        "input_dim": math.prod(image_shape),
        "image_shape": image_shape,
        "latent_dim": latent_dim,
        "channels": _channels(image_shape),
        "arch": arch,
    }


def _directions(encoder: nn.Module, images: np.ndarray | torch.Tensor, input_dim: int) -> dict[str, object]:
    from .directions import principal_directions  # numpy only; kept out of the import path

    rows = torch.as_tensor(np.asarray(images, dtype=np.float32)).reshape(len(images), -1)
    if rows.shape[1] != input_dim or len(rows) < 2:
        raise ExportError(f"directions_images: expected rows [N >= 2, {input_dim}], got {list(rows.shape)}")
    with torch.no_grad():
        means = torch.cat([encoder(rows[s : s + 500])[0] for s in range(0, len(rows), 500)])
    return principal_directions(means.numpy())


def export_vae(
    encoder: nn.Module,
    decoder: nn.Module,
    *,
    image_shape: Sequence[int],
    model_repository: Path | str,
    name: str,
    version: str | None = None,
    card: Mapping[str, Any] | None = None,
    arch: str = "custom",
    directions_images: np.ndarray | torch.Tensor | None = None,
    tolerance: float | None = None,
    seed: int = 0,
) -> Path:
    """Export a pair of torch modules as `<model_repository>/<name>/<version>/`, published
    atomically; returns its path.

    The modules must meet the contract: `encoder(x [N, D]) -> (mean, logvar)`, each [N, L], and
    `decoder(z [N, L]) -> x [N, D]` with values in [0, 1], float32, D = prod(image_shape), where
    image_shape is [H, W] or [H, W, C] (channel-last: rows are pictures [H, W, C] flattened). They
    are copied to the CPU in eval mode (the caller's stay as they are), exported with a dynamic
    batch axis, and checked: ONNX Runtime must agree with PyTorch within `tolerance` (default
    PARITY_TOLERANCE) at batch sizes 1, 7 and 256, and the graphs must pass `check_graphs`.

    `version`: default one past the highest present; an existing one is refused. `card`: more
    fields for model.json (figures, recipe; it may not contradict the computed ones). `arch`: what
    the card calls the architecture. `directions_images`: rows [N, D] whose posterior means give
    the card's principal_directions (the playground's latent pad axes).
    """
    repository = Path(model_repository)
    shape = card_image_shape(image_shape)
    input_dim = math.prod(shape)
    target = claim_version(repository, name, version)
    encoder, decoder = (copy.deepcopy(module).cpu().eval() for module in (encoder, decoder))
    graphs = [_EncoderGraph(encoder).eval(), _DecoderGraph(decoder).eval()]
    latent_dim = _probe(encoder, decoder, input_dim)  # the caller's, unwrapped: their outputs as they are
    computed = _contract_fields(shape, latent_dim, arch)
    for key, value in (card or {}).items():
        if key in computed and value != computed[key]:
            raise ExportError(f"card[{key!r}] = {value!r} contradicts the modules' {computed[key]!r}")
    extra = dict(card or {})
    if directions_images is not None:
        extra["principal_directions"] = _directions(graphs[0], directions_images, input_dim)
    with staged_version(target) as staging:
        tolerance = PARITY_TOLERANCE if tolerance is None else tolerance
        parity = {}
        specs = zip(GRAPH_FILES, graphs, (input_dim, latent_dim), (_ENCODER, _DECODER), strict=True)
        for filename, module, width, (input_name, outputs) in specs:
            _export_graph(module, width, staging / filename, input_name, outputs)
            parity[filename] = _parity(module, staging / filename, width, seed, tolerance)
        try:
            check_graphs(staging, shape)
        except ExportError as exc:  # named as the caller knows them, not by the staging directory
            raise ExportError(str(exc).replace(f"{staging}{os.sep}", "")) from None
        published = {
            **computed,
            **extra,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
            "versions": _versions(),
            "name": name,
            "version": target.name,
            "opset": OPSET,
            "parity_max_abs_diff": parity,
            "files": _files(staging),
        }
        (staging / CARD_FILE).write_text(_card_text(published))
    return target


@contextlib.contextmanager
def staged_version(target: Path) -> Iterator[Path]:
    """A hidden sibling of `target` to assemble a version in, renamed to `target` when the block
    ends well and removed when it does not: a watching server sees the whole version or none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; a served repository must be readable
        if target.exists():
            raise ExportError(f"{target} appeared while exporting; pass another --version")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
