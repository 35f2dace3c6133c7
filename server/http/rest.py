"""The REST API for people (`/v1`): the native API's calls as JSON, and pictures in and out.

Bodies mirror the native proto (vae.proto), with arrays as nested lists: `{"z": [[...], ...]}`.
Every route that returns images returns a PNG grid instead when the client sends
`Accept: image/png` (the grid `vae-client sample -o` writes, byte for byte). Encode and
reconstruct also take pictures: a PNG or JPEG body, or a multipart form of up to
`MAX_UPLOADS` files.

Each route serves the default model at `/v1/<route>` and any model served at
`/v1/models/{model}/<route>` (the same handler: the path's `model` is what it resolves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, overload

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from vae_serve.errors import InvalidInput
from vae_serve.grid import image_grid, is_picture_shape, png_bytes
from vae_serve.images import InputFileError, read_picture
from vae_serve.server.models.versions import ServedModel
from vae_serve.server.protocol.model_info import model_info, models_served

from .call import OFF_LOOP_BYTES, deadline_from
from .endpoint import JSON, Front, body_type, check_json_reply, endpoint, json_response, read_body, wants_png
from .forms import form_files
from .limits import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, check_json_cost

__all__ = [
    "MAX_UPLOADS",
    "MAX_UPLOAD_PIXELS",
    "DecodeBody",
    "DecodeReply",
    "EncodeReply",
    "ImagesBody",
    "ModelReply",
    "ModelsReply",
    "ReconstructReply",
    "SampleBody",
    "SampleQuery",
    "SampleReply",
    "StatsReply",
    "Version",
    "decode",
    "encode",
    "model",
    "models",
    "reconstruct",
    "sample",
    "sample_link",
    "stats",
]

MAX_UPLOADS = 64  # pictures in one multipart upload
MAX_UPLOAD_PIXELS = 1024 * 1024  # one picture's width x height, checked before it is decoded
PICTURE_TYPES = ("image/png", "image/jpeg")
PICTURE_BODIES = (JSON, *PICTURE_TYPES, "multipart/form-data")  # what encode and reconstruct take

# Fail fast: a body of many wrong values would otherwise make one validation error for each.
Rows = Annotated[list[Annotated[list[float], Field(fail_fast=True)]], Field(fail_fast=True)]
Seed = Annotated[
    int | None, Field(ge=0, lt=2**64, description="Same seed, same draws (gRPC and client alike).")
]
Version = Annotated[str | None, Field(description="Pin a loaded version; default: the latest.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    model_version: Version = None


class ImagesBody(_Body):
    """What encode and reconstruct take as JSON."""

    x: Rows = Field(description="Images as rows of input_dim values in [0, 1].")


class DecodeBody(_Body):
    z: Rows = Field(description="Latent vectors as rows of latent_dim values.")


class SampleBody(_Body):
    num_samples: int = Field(16, ge=1, description="Draws (per row of mean, for posterior draws).")
    seed: Seed = None
    mean: Rows | None = Field(
        None, description="Posterior means [N, latent_dim]: draw from N(mean, exp(logvar))."
    )
    logvar: Rows | None = Field(None, description="Posterior log-variances, the shape of mean.")
    decode: bool = Field(True, description="Also decode the draws into images.")


class SampleQuery(BaseModel):
    """GET /v1/sample's query: prior draws, SampleBody's fields under the names a link uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(16, ge=1, description="Draws from the prior (at most the server's max_samples).")
    seed: Seed = None
    decode: bool = Field(True, description="Also decode the draws into images.")
    model_version: Version = None


class EncodeReply(BaseModel):
    mean: Rows
    logvar: Rows
    model_version: str


class DecodeReply(BaseModel):
    x: Rows
    model_version: str


class SampleReply(BaseModel):
    z: list[Any] = Field(description="[K, L] prior draws, or [N, K, L] posterior draws.")
    x: list[Any] | None = Field(description="Their images ([K, D] or [N, K, D]) when decoded.")
    model_version: str


class ReconstructReply(BaseModel):
    mean: Rows
    logvar: Rows
    x: Rows = Field(description="The decoded posterior means: one reconstruction per image.")
    model_version: str


class MethodStats(BaseModel):
    requests: float
    per_second: float | None
    errors: float
    p50_ms: float | None
    p99_ms: float | None


class StatsReply(BaseModel):
    window_s: float = Field(description="The span the figures cover (up to the last minute).")
    methods: dict[str, MethodStats] = Field(description="By method: gRPC RPCs, and http.* routes.")


class ModelReply(BaseModel):
    name: str
    version: str
    input_dim: int
    latent_dim: int
    image_shape: list[int]
    execution_provider: str
    loaded_versions: list[str]
    card: dict[str, Any] = Field(
        description="The model card (the version's model.json) with its values' own types: numbers, "
        "strings, booleans, lists, objects. An integer beyond 2^53 comes as its decimal string, as "
        "over gRPC (GetModelInfo's model_card)."
    )
    server_id: str
    limits: dict[str, int]


class ModelSummaryReply(BaseModel):
    name: str
    version: str = Field(description="The latest version, which requests pinning none get.")
    loaded_versions: list[str]
    input_dim: int
    latent_dim: int
    image_shape: list[int]
    default: bool = Field(description="Whether it answers requests that name no model (/v1/<route>).")


class ModelsReply(BaseModel):
    default: str | None = Field(
        description="The model requests naming none get; null when several are served and none is "
        "the default."
    )
    models: list[ModelSummaryReply] = Field(description="Every model served, by name.")


B = TypeVar("B", bound=_Body)


def _parse(model: type[B], body: bytes) -> B:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][:3]) or "body"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidInput(f"{where}: {first['msg']}{more}") from None


async def _off_loop(work: Callable[[], Any], size: int) -> Any:
    return await asyncio.to_thread(work) if size > OFF_LOOP_BYTES else work()


@overload
def _rows(values: Rows, name: str) -> np.ndarray: ...
@overload
def _rows(values: Rows | None, name: str) -> np.ndarray | None: ...
def _rows(values: Rows | None, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput(f"{name}: needs at least one row")
    if len({len(row) for row in values}) > 1:
        raise InvalidInput(f"{name}: rows of different lengths")
    return np.asarray(values, dtype=np.float32).reshape(len(values), -1)


def _check_json_reply(front: Front, values: int, instead: str = "ask for Accept: image/png") -> None:
    check_json_reply(values, instead)


def _check_picturable(shape: tuple[int, ...]) -> None:
    """Refuse a PNG reply before any work for a model whose images have no picture form."""
    if not is_picture_shape(shape):
        raise InvalidInput(
            f"this model's images {list(shape)} have no PNG form (only [H, W] or [H, W, 3]); ask for JSON"
        )


async def _png(images: np.ndarray, shape: tuple[int, ...], columns: int | None = None) -> Response:
    """A PNG grid of `images` [N, prod(shape)], each drawn as `shape`: grey [H, W] or RGB [H, W, 3]
    (made on a thread: 4096 images take most of a second)."""
    grid = await asyncio.to_thread(lambda: png_bytes(image_grid(images.reshape(-1, *shape), columns)))
    return Response(grid, media_type="image/png")


async def _json_body(front: Front, request: Request, model: type[B]) -> B:
    body = await read_body(request, MAX_JSON_BYTES, "JSON limit")
    check_json_cost(body, front.dataplane.limits.max_request_rows)
    return await _off_loop(lambda: _parse(model, body), len(body))


async def _pictures(request: Request, served: ServedModel) -> np.ndarray:
    """The uploaded pictures as rows [N, input_dim] of `served`: one PNG or JPEG body, or a
    multipart form."""
    content_type = request.headers.get("content-type", "")
    body = await read_body(request, MAX_UPLOAD_BYTES, "picture upload limit")
    shape = served.model.image_shape
    single = content_type.split(";")[0].strip().lower() in PICTURE_TYPES

    def read_all() -> np.ndarray:
        files = [("upload", body)] if single else form_files(body, content_type, MAX_UPLOADS)
        try:
            return np.stack(
                [read_picture(io.BytesIO(data), shape, name, MAX_UPLOAD_PIXELS) for name, data in files]
            )
        except InputFileError as exc:
            raise InvalidInput(str(exc)) from None

    return await asyncio.to_thread(read_all)  # neither forms nor pictures are parsed on the loop


def _model(request: Request) -> str | None:
    """The model the path names (`/v1/models/{model}/...`); None for the default (`/v1/...`)."""
    return request.path_params.get("model")


def _is_json(request: Request) -> bool:
    return body_type(request) in (JSON, "")  # unlabelled: JSON, as endpoint.check_body_type reads it


async def _images_in(front: Front, request: Request) -> tuple[np.ndarray, ServedModel]:
    """The images of an encode or reconstruct request, and the version it resolved: the one its
    JSON rows pin, or the latest for uploaded pictures (which pin none)."""
    if _is_json(request):
        body = await _json_body(front, request, ImagesBody)
        return _rows(body.x, "x"), front.dataplane.admit(_model(request), body.model_version)
    served = front.dataplane.admit(_model(request))
    return await _pictures(request, served), served


@endpoint("Encode", work=True, bodies=PICTURE_BODIES)
async def encode(front: Front, request: Request) -> Response:
    """Posterior mean and log-variance of each image: JSON rows, or uploaded pictures."""
    x, served = await _images_in(front, request)
    _check_json_reply(front, 2 * len(x) * served.model.latent_dim, "encode in several requests")
    mean, logvar, used = await front.dataplane.encode(x, deadline_from(request), served)
    return json_response({"mean": mean, "logvar": logvar, "model_version": used})


@endpoint("Decode", work=True)
async def decode(front: Front, request: Request) -> Response:
    body = await _json_body(front, request, DecodeBody)
    z = _rows(body.z, "z")
    png = wants_png(request)
    served = front.dataplane.admit(_model(request), body.model_version)
    model = served.model
    if png:
        _check_picturable(model.image_shape)
    else:
        _check_json_reply(front, len(z) * model.input_dim)
    x, used = await front.dataplane.decode(z, deadline_from(request), served)
    return await _png(x, model.image_shape) if png else json_response({"x": x, "model_version": used})


async def _sample(front: Front, request: Request, body: SampleBody) -> Response:
    png = wants_png(request)
    if png and not body.decode:
        raise InvalidInput("a PNG needs decoded draws: decode must be true")
    served = front.dataplane.admit(_model(request), body.model_version)
    model = served.model
    if png:
        _check_picturable(model.image_shape)
    rows = body.num_samples * (1 if body.mean is None else len(body.mean))
    if not png and rows <= front.dataplane.limits.max_request_rows:  # else the data plane says why
        _check_json_reply(front, rows * (model.latent_dim + (model.input_dim if body.decode else 0)))
    z, x, used = await front.dataplane.sample(
        body.num_samples,
        seed=body.seed,
        mean=_rows(body.mean, "mean"),
        logvar=_rows(body.logvar, "logvar"),
        decode=body.decode,
        deadline=deadline_from(request),
        served=served,
    )
    if png:
        assert x is not None  # a PNG needs decode (refused above otherwise), and decoding returns x
        return await _png(x, model.image_shape)
    return json_response({"z": z, "x": x, "model_version": used})


@endpoint("Sample", work=True)
async def sample(front: Front, request: Request) -> Response:
    """Draws from the prior (or, given mean and logvar, the posterior), decoded by default."""
    return await _sample(front, request, await _json_body(front, request, SampleBody))


@endpoint("Sample", work=True)
async def sample_link(front: Front, request: Request) -> Response:
    """GET /v1/sample?n=64&seed=7: prior draws for links and curl (add Accept: image/png)."""
    query, known = request.query_params, SampleQuery.model_fields
    unknown = set(query) - set(known)
    if unknown:
        raise InvalidInput(f"unknown query parameter {sorted(unknown)[0][:32]!r}; use {', '.join(known)}")
    try:
        asked = SampleQuery.model_validate_strings({name: query[name] for name in known if name in query})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    most = front.dataplane.limits.max_samples
    if asked.n > most:  # checked here too so that the refusal names n, not the data plane's num_samples
        raise InvalidInput(f"n: must be between 1 and {most}, got {asked.n}")
    body = SampleBody(
        num_samples=asked.n, seed=asked.seed, decode=asked.decode, model_version=asked.model_version
    )
    return await _sample(front, request, body)


@endpoint("Reconstruct", work=True, bodies=PICTURE_BODIES)
async def reconstruct(front: Front, request: Request) -> Response:
    """Encode, then decode the posterior means: each image as the model sees it."""
    x, served = await _images_in(front, request)
    png = wants_png(request)
    model = served.model
    if png:
        _check_picturable(model.image_shape)
    else:
        _check_json_reply(front, len(x) * (2 * model.latent_dim + model.input_dim))
    deadline = deadline_from(request)
    mean, logvar, used = await front.dataplane.encode(x, deadline, served)
    decoded, _ = await front.dataplane.decode(mean, deadline, served)
    if png:  # originals beside their reconstructions, as `vae-client reconstruct` writes them
        pairs = np.stack([x, decoded], axis=1).reshape(-1, x.shape[1])
        return await _png(pairs, model.image_shape, columns=2 * min(len(x), 8))
    return json_response({"mean": mean, "logvar": logvar, "x": decoded, "model_version": used})


@endpoint("GetModelInfo")
async def model(front: Front, request: Request) -> Response:
    """What the model is and the limits a request must keep (the native GetModelInfo)."""
    served = front.dataplane.admit(_model(request), request.query_params.get("model_version"))
    info = model_info(front.dataplane, served)
    model = info.model
    return json_response(
        {
            "name": model.name,
            "version": model.version,
            "input_dim": model.input_dim,
            "latent_dim": model.latent_dim,
            "image_shape": list(model.image_shape),
            "execution_provider": model.execution_provider,
            "loaded_versions": info.loaded_versions,
            "card": model.card,
            "server_id": info.server_id,
            "limits": dataclasses.asdict(info.limits),
        }
    )


@endpoint("ListModels")
async def models(front: Front, request: Request) -> Response:
    """Every model served, and which one answers requests that name none."""
    summaries = [dataclasses.asdict(summary) for summary in models_served(front.dataplane)]
    return json_response({"default": front.dataplane.models.default, "models": summaries})


@endpoint("Stats")
async def stats(front: Front, request: Request) -> Response:
    """Request rate, errors and p50 / p99 per method over the last minute, from the server's own
    histograms (every worker's, with --workers)."""
    return json_response(await front.stats.report())
