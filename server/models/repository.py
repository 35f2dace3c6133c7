"""The model repository on disk, Triton style: `<root>/<name>/<version>/` with two graphs and a card.

Nothing here runs a model: it finds a version, reads its card and proves the graphs are the ones
the card describes, so a corrupt, half-copied or hostile version never reaches ORT. The rules:

- Versions are directory names of ASCII digits (at most 18, no leading zero). Any other entry is
  skipped with a reason logged once, never the whole listing; hidden (`.`) entries silently.
- No symbolic links below the model directory, wherever they point: versions are opened with
  O_NOFOLLOW and their files relative to that directory's descriptor, so nothing can be swapped
  in between a check and a read. (The repository root and model directory may be links.)
- Cards and graphs are regular files (a FIFO must not block), bounded before they are read: a card
  to `MAX_CARD_BYTES`, a graph to the size its card records or else `MAX_GRAPH_BYTES`.
- A card is typed (`Card`); a wrong one is one line naming the field.
- Each graph is read once; those bytes are hashed and are the bytes ONNX Runtime gets
  (`VersionFiles.take_graph`), and they must hold every weight: external data is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vae_serve.errors import ModelLoadError, ModelNotFound

from .onnx_wire import MalformedProtobuf, has_external_data

__all__ = [
    "GRAPH_FILES",
    "MAX_CARD_BYTES",
    "MAX_GRAPH_BYTES",
    "Card",
    "VersionFiles",
    "list_versions",
    "resolve",
]

log = logging.getLogger(__name__)

GRAPH_FILES = ("encoder.onnx", "decoder.onnx")
MAX_CARD_BYTES = 1 << 20
# protobuf cannot serialise a message of 2 GiB or more, so no ONNX file with its weights inline is
# larger; a card that records the size (`files.<graph>.bytes`, as vae-train writes) bounds it exactly.
MAX_GRAPH_BYTES = (2 << 30) - 1
MAX_WIDTH = 1 << 24  # input or latent width: 64 MiB of float32 per row
MAX_ENTRIES = 10_000  # entries in a model directory, or in a version directory
_VERSION = re.compile(r"0|[1-9][0-9]{0,17}")  # fits an int64; ASCII only (str.isdigit takes "²")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 30

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class GraphFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    bytes: int | None = Field(None, ge=0, le=MAX_GRAPH_BYTES)


class PrincipalDirections(BaseModel):
    """Directions of the latent space the card records (training/directions.py); the playground's
    latent pad moves along them. Checked against latent_dim, as the page relies on their widths."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)
    mean: list[float] = Field(max_length=MAX_WIDTH)
    std: list[Annotated[float, Field(ge=0)]] = Field(min_length=1, max_length=64)
    vectors: list[list[float]] = Field(min_length=1, max_length=64)


class Card(BaseModel):
    """The fields of model.json the server relies on, strictly typed; the rest is metadata."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    input_dim: Width
    latent_dim: Width
    image_shape: list[Width] = Field(min_length=1, max_length=8)
    files: dict[str, GraphFile] = Field(max_length=64)
    principal_directions: PrincipalDirections | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Card:
        for name in GRAPH_FILES:
            if name not in self.files:
                raise ValueError(f"no sha256 for {name}")
        if math.prod(self.image_shape) != self.input_dim:
            raise ValueError(f"image_shape {self.image_shape} != input_dim {self.input_dim}")
        directions = self.principal_directions
        if directions is not None:
            widths = {len(directions.mean), *(len(v) for v in directions.vectors)}
            if widths != {self.latent_dim} or len(directions.std) != len(directions.vectors):
                raise ValueError(
                    "principal_directions: mean and vectors need latent_dim values, std one per vector"
                )
        return self


@dataclass(frozen=True)
class VersionFiles:
    name: str
    version: str
    path: Path
    card: dict[str, Any]
    spec: Card
    # The verified bytes of each graph, until `take_graph` hands them to ONNX Runtime.
    _graphs: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def graph(self, filename: str) -> Path:
        return self.path / filename

    def take_graph(self, filename: str) -> bytes:
        """The graph's verified bytes, kept no longer than this; read and verified again if asked
        a second time (the files may have changed since)."""
        data = self._graphs.pop(filename, None)
        if data is None:
            with _open_version_dir(self.path) as dir_fd:
                data = _read_graph(dir_fd, self.path, filename, self.spec)
        return data


def _report_once(reported: set[tuple[str, str]], key: tuple[str, str], message: str) -> None:
    if key not in reported:
        if len(reported) >= MAX_ENTRIES:
            reported.clear()
        reported.add(key)
        log.warning("%s", message)


_reported: set[tuple[str, str]] = set()


def list_versions(root: Path, name: str) -> list[str]:
    """Version directories (and links named like one, refused when resolved), oldest first. Other
    entries are skipped, each with its reason logged once; hidden (staging) entries silently."""
    model_dir = root / name
    try:
        scan = os.scandir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ModelLoadError(f"{model_dir}: cannot list ({exc.strerror})") from None
    versions = []
    with scan:
        for count, entry in enumerate(scan):
            if count >= MAX_ENTRIES:
                raise ModelLoadError(f"{model_dir}: more than {MAX_ENTRIES} entries; clean it up")
            if entry.name.startswith("."):
                continue
            try:
                is_link = entry.is_symlink()
                is_dir = is_link or entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not _VERSION.fullmatch(entry.name):
                reason = "a version is a number in ASCII digits, at most 18, without leading zeros"
            elif not is_dir:
                reason = "not a directory"
            else:
                versions.append(entry.name)
                continue
            shown = repr(entry.name)[:60]  # control characters escaped
            _report_once(
                _reported,
                (str(model_dir), entry.name),
                f"{model_dir}/{shown}: not a model version ({reason})",
            )
    return sorted(versions, key=int)


class _open_version_dir:
    """The version directory's descriptor; refuses a link (O_NOFOLLOW) or anything not a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ModelLoadError(f"{self.path}: {_describe(exc, 'version directory')}") from None
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _describe(exc: OSError, what: str) -> str:
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and what == "version directory"):
        return "is a symbolic link or not a directory; links are refused below the model directory"
    if exc.errno == errno.ENOENT:
        return "missing"
    return f"cannot read ({exc.strerror})"


def _read_regular(dir_fd: int, path: Path, limit: int, limit_reason: str, exact: int | None = None) -> bytes:
    """The whole of one regular file in the version directory, read from one descriptor, checked
    against its bound (or exact recorded size) before a byte is read."""
    try:
        fd = os.open(path.name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelLoadError(f"{path}: is a symbolic link; links are refused") from None
        raise ModelLoadError(f"{path}: {_describe(exc, 'file')}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{path}: not a regular file")
        if exact is not None and st.st_size != exact:
            raise ModelLoadError(f"{path}: {st.st_size} bytes, the card says {exact}")
        if st.st_size > limit:
            raise ModelLoadError(f"{path}: {st.st_size} bytes, more than {limit_reason}")
        try:
            data = os.read(fd, st.st_size) if st.st_size else b""  # one buffer; the GIL is released
            if len(data) < st.st_size:  # a short read (network file systems): gather the rest
                parts = [data]
                while sum(map(len, parts)) < st.st_size and (more := os.read(fd, _CHUNK)):
                    parts.append(more)
                data = b"".join(parts)
            grew = os.read(fd, 1)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
        if len(data) != st.st_size or grew:
            raise ModelLoadError(f"{path}: changed while it was read; publish versions atomically")
        return data
    finally:
        os.close(fd)


def _field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += "[" + json.dumps(part)[:40] + "]"
    return text


def _describe_validation(card_path: Path, exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    where = _field(err["loc"])
    if err["type"] == "missing":
        line = f"field {where!r} missing"
    elif not where:
        line = err["msg"].removeprefix("Value error, ")
    else:
        got = repr(err["input"])
        got = got if len(got) <= 40 else got[:37] + "..."
        line = f"field {where!r}: {err['msg']} (got {got})"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{card_path}: {line}{more}"


def _read_card(dir_fd: int, path: Path) -> tuple[dict[str, Any], Card]:
    card_path = path / "model.json"
    raw = _read_regular(dir_fd, card_path, MAX_CARD_BYTES, "the 1 MiB a model card may be")
    try:
        card = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, int() digits
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{card_path}: unreadable model card ({reason})") from None
    if not isinstance(card, dict):
        raise ModelLoadError(f"{card_path}: model card must be a JSON object")
    try:
        spec = Card.model_validate(card)
    except ValidationError as exc:
        raise ModelLoadError(_describe_validation(card_path, exc)) from None
    return card, spec


def _read_graph(dir_fd: int, path: Path, filename: str, spec: Card) -> bytes:
    """The graph's bytes, read once, proven to be the card's (sha256) and to hold every weight."""
    file, expected = path / filename, spec.files[filename]
    limit = "the 2 GiB protobuf limit (an ONNX file with inline weights is never larger)"
    data = _read_regular(dir_fd, file, MAX_GRAPH_BYTES, limit, exact=expected.bytes)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256.lower():
        raise ModelLoadError(
            f"{file}: sha256 {digest[:12]}... does not match the card's {expected.sha256[:12]}..."
        )
    try:
        external = has_external_data(data)
    except MalformedProtobuf as exc:
        raise ModelLoadError(f"{file}: not an ONNX model (malformed protobuf: {exc})") from None
    if external:
        raise ModelLoadError(
            f"{file}: external data is not supported (its weights would escape the card's sha256); "
            "save the graph with its weights inline"
        )
    return data


def resolve(root: Path, name: str, version: str | None = None) -> VersionFiles:
    """The requested (or highest) version, its card read and its graphs read and verified."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} not found; pass --model-repository")
    versions = list_versions(root, name)
    if not versions:
        available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:20]
        raise ModelNotFound(f"no versions of model {name!r} in {root} (models there: {available or 'none'})")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        shown = ", ".join(versions[-20:])
        raise ModelNotFound(f"model {name!r} has no version {chosen!r} (versions: {shown})")
    path = root / name / chosen
    with _open_version_dir(path) as dir_fd:
        card, spec = _read_card(dir_fd, path)
        graphs = {filename: _read_graph(dir_fd, path, filename, spec) for filename in GRAPH_FILES}
    return VersionFiles(name, chosen, path, card, spec, graphs)
