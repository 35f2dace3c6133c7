"""`vae-client`: the service for people at a terminal. A thin layer over `VaeClient`.

Exit codes: 0 success; 1 any failure (server down, deadline, bad input file), printed as one
line; 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from vae_serve.grid import image_grid, save_png
from vae_serve.images import InputFileError, load_array, load_images

from . import _quiet  # noqa: F401  before grpc is imported: its own log lines stay off the terminal
from ._requests import chunk_seeds
from ._transport import DEFAULT_TARGET, VaeServeError
from .sync import VaeClient

__all__ = ["main"]

T = TypeVar("T")

_PROGRESS_ROWS = 512  # rows per step of the progress bar on long runs
# `info` prints a card entry on one line this wide; a wider object opens up, the rest is cut short.
_CARD_WIDTH = 100
_OUTPUT_FILE = click.Path(path_type=Path, dir_okay=False)
_SEED = click.IntRange(0, 2**64 - 1)
_IMAGE_INPUTS = click.option(
    "-i",
    "--input",
    "inputs",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="An IDX file, a .npy [N, D] array, or PNG/JPEG images (repeat -i).",
)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected failure into one line and exit code 1."""
    try:
        yield
    except (VaeServeError, InputFileError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    except MemoryError:  # the input checks should make this unreachable; still one line, not a traceback
        raise click.ClickException("out of memory; use smaller inputs (or --limit)") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal once symlinks are resolved, or the same inode."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compare as written, then by inode
        if a.absolute() == b.absolute():
            return True
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_outputs(inputs: list[tuple[str, Path]], outputs: list[tuple[str, Path | None]]) -> None:
    """Refuse, before any work, an output that would overwrite an input or another output."""
    named = [(option, path) for option, path in outputs if path is not None]
    for i, (option, path) in enumerate(named):
        for source, source_path in inputs:
            if _same_file(path, source_path):
                raise click.ClickException(
                    f"{option} {path}: is the input {source} {source_path}; refusing to overwrite it"
                )
        for other, other_path in named[:i]:
            if _same_file(path, other_path):
                raise click.ClickException(f"{option} {path}: is also {other}; give each output its own file")


def _client(ctx: click.Context) -> VaeClient:
    client = ctx.find_object(VaeClient)
    assert client is not None  # main() puts it there before any subcommand runs
    return client


def _with_progress(
    label: str, total: int, step: Callable[[int, int, int | None], T], seed: int | None
) -> list[T]:
    """step(start, stop, seed) over slices of `total` rows, each with its own derived seed,
    with a progress bar on a terminal when there is more than one slice."""
    starts = range(0, total, _PROGRESS_ROWS)
    slices = [
        (i, min(i + _PROGRESS_ROWS, total), s)
        for i, s in zip(starts, chunk_seeds(seed, len(starts)), strict=True)
    ]
    if len(slices) == 1 or not sys.stderr.isatty():  # a bar only where a person watches
        return [step(*part) for part in slices]
    with click.progressbar(slices, label=label, file=sys.stderr) as bar:
        return [step(*part) for part in bar]


def _save_npy(array: np.ndarray, output: Path) -> None:
    """Exactly at `output` (np.save would append .npy to other names)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as f:
        np.save(f, array, allow_pickle=False)


def _save_grid(images: np.ndarray, image_shape: tuple[int, ...], output: Path, columns: int | None) -> None:
    save_png(image_grid(images.reshape(-1, *image_shape), columns), output)
    click.echo(f"wrote {output} ({len(images)} images)", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--target", envvar="VAE_TARGET", default=DEFAULT_TARGET, help="host:port of vae-serve [env VAE_TARGET]."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, help="Seconds per call."
)
@click.option(
    "--ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="PEM CA: use TLS."
)
@click.option("--tls/--no-tls", default=False, help="TLS with the system trust store.")
@click.option(
    "--cert-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM client cert (mTLS).",
)
@click.option(
    "--key-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="PEM client key (mTLS)."
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=5, help="Retries while the server is unavailable."
)
# An empty string is how these options say "not given"; each shows what that means instead of "".
@click.option("--model", default="", show_default="the server's default", help="The model to use, by name.")
@click.option("--model-version", default="", show_default="the latest", help="Pin a loaded model version.")
@click.option(
    "--traceparent",
    envvar="TRACEPARENT",
    default="",
    show_default="none",
    help="W3C trace context the calls continue (OpenTelemetry's variable) [env TRACEPARENT].",
)
@click.pass_context
def main(
    ctx: click.Context,
    target: str,
    timeout: float,
    ca_file: Path | None,
    tls: bool,
    cert_file: Path | None,
    key_file: Path | None,
    retries: int,
    model: str,
    model_version: str,
    traceparent: str,
) -> None:
    """Encode, sample and decode with a vae-serve server; pictures are written as PNG grids."""
    with _errors():
        client = VaeClient(
            target,
            timeout=timeout,
            root_certificates=ca_file,
            tls=tls,
            retries=retries,
            certificate_chain=cert_file,
            private_key=key_file,
            model=model,
            model_version=model_version,
            traceparent=traceparent,
        )
    ctx.obj = ctx.with_resource(client)


@main.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Model name, version, dimensions, execution provider, card and health."""
    with _errors():
        client = _client(ctx)
        m, status = client.model_info(), client.health()
    click.echo(f"model:     {m.name} version {m.version}")
    click.echo(
        f"shapes:    x [N, {m.input_dim}] (images {'x'.join(map(str, m.image_shape))}), z [N, {m.latent_dim}]"
    )
    click.echo(f"provider:  {m.execution_provider}")
    click.echo(f"health:    {status}")
    click.echo(f"limits:    {m.max_request_rows} rows, {m.max_samples} samples, {m.max_message_bytes} B/msg")
    click.echo("card:")
    for line in _card_lines(m.card, "  "):
        click.echo(line)


def _card_lines(card: dict[str, Any], indent: str) -> Iterator[str]:
    """One line per entry, by key: a value as JSON writes it (a string bare); an object too wide
    for a line, one line per entry below its key; a long list or string in brief, with its length."""
    for key, value in sorted(card.items()):
        head = f"{indent}{_inline(key)}: "
        text = _inline(value)
        if len(head) + len(text) <= _CARD_WIDTH:
            yield head + text
        elif isinstance(value, dict):
            yield head.rstrip()
            yield from _card_lines(value, indent + "  ")
        elif isinstance(value, list):
            yield head + _brief_list(value, _CARD_WIDTH - len(head))
        else:
            room = max(_CARD_WIDTH - len(head) - 20, 10)
            yield f"{head}{text[:room]}... ({len(text)} characters)"


def _inline(value: Any) -> str:
    """A card key or value on one line: JSON, with a string bare unless it holds a line break or
    another control character (which could also drive the terminal)."""
    if isinstance(value, str) and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)


def _brief_list(items: list[Any], room: int) -> str:
    """As many whole items as fit in `room`, then how many there are: `[0.1, 0.2, ...] (32 items)`."""
    count = f" ({len(items)} items)"
    shown: list[str] = []
    for item in items:
        text = _inline(item)
        if len(", ".join([*shown, text])) + len("[, ...]") + len(count) > room:
            break
        shown.append(text)
    return "[" + ", ".join([*shown, "..."]) + "]" + count


@main.command()
@click.option("--service", default="", show_default="the whole server", help="Service name to check.")
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    """Print the health status; exit 0 only when SERVING (for container health checks)."""
    with _errors():
        status = _client(ctx).health(service)
    click.echo(status)
    ctx.exit(0 if status == "SERVING" else 1)


@main.command()
@click.option("-n", "--num-samples", type=click.IntRange(min=1), default=64, help="Images to draw.")
@click.option("--seed", type=_SEED, default=None, help="Seed for reproducible draws.")
@click.option("-o", "--output", type=_OUTPUT_FILE, default=Path("samples.png"), help="PNG grid to write.")
@click.option(
    "--columns", type=click.IntRange(min=1), default=None, show_default="square", help="Grid columns."
)
@click.pass_context
def sample(ctx: click.Context, num_samples: int, seed: int | None, output: Path, columns: int | None) -> None:
    """Decode draws from the model's prior (its card's, N(0, I) by default) into a PNG grid."""
    with _errors():
        client = _client(ctx)
        parts = _with_progress(
            "sampling",
            num_samples,
            lambda start, stop, s: client.sample(stop - start, seed=s, decode=True)[1],
            seed,
        )
        _save_grid(np.concatenate(parts), client.model_info().image_shape, output, columns)


@main.command()
@_IMAGE_INPUTS
@click.option("-o", "--output", type=_OUTPUT_FILE, default=Path("reconstructions.png"), help="PNG to write.")
@click.option("--limit", type=click.IntRange(min=1), default=32, help="Use the first N images.")
@click.option("--seed", type=_SEED, default=None, help="Seed of the posterior draws.")
@click.pass_context
def reconstruct(
    ctx: click.Context, inputs: tuple[Path, ...], output: Path, limit: int, seed: int | None
) -> None:
    """Originals beside their reconstructions (encode, one posterior draw, decode)."""
    _check_outputs([("-i", p) for p in inputs], [("-o", output)])
    with _errors():
        client = _client(ctx)
        shape = client.model_info().image_shape
        x = load_images(list(inputs), shape, limit=limit)
        recon = np.concatenate(
            _with_progress("reconstructing", len(x), lambda i, j, s: client.reconstruct(x[i:j], seed=s), seed)
        )
        pairs = np.stack([x, recon], axis=1).reshape(-1, x.shape[1])  # original, reconstruction, ...
        _save_grid(pairs, shape, output, columns=2 * min(len(x), 8))


@main.command()
@click.option("--a", "first", type=click.Path(path_type=Path), required=True, help="Start image.")
@click.option("--b", "second", type=click.Path(path_type=Path), required=True, help="End image.")
@click.option("--steps", type=click.IntRange(min=2), default=10, help="Images along the path, ends included.")
@click.option("-o", "--output", type=_OUTPUT_FILE, default=Path("interpolation.png"), help="PNG to write.")
@click.pass_context
def interpolate(ctx: click.Context, first: Path, second: Path, steps: int, output: Path) -> None:
    """Decode the straight line between two images' posterior means."""
    _check_outputs([("--a", first), ("--b", second)], [("-o", output)])
    with _errors():
        client = _client(ctx)
        shape = client.model_info().image_shape
        x = np.concatenate([load_images([first], shape, limit=1), load_images([second], shape, limit=1)])
        mean, _ = client.encode(x)
        t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
        z = ((1 - t) * mean[0] + t * mean[1]).astype(np.float32)
        _save_grid(client.decode(z), shape, output, columns=steps)


@main.command()
@_IMAGE_INPUTS
@click.option(
    "-o", "--output", type=_OUTPUT_FILE, default=Path("mean.npy"), help="Posterior means [N, L] (.npy)."
)
@click.option("--logvar-output", type=_OUTPUT_FILE, default=None, help="Also write logvar [N, L] (.npy).")
@click.pass_context
def encode(ctx: click.Context, inputs: tuple[Path, ...], output: Path, logvar_output: Path | None) -> None:
    """Images to posterior means (and log-variances), as .npy files."""
    _check_outputs([("-i", p) for p in inputs], [("-o", output), ("--logvar-output", logvar_output)])
    with _errors():
        client = _client(ctx)
        x = load_images(list(inputs), client.model_info().image_shape)
        parts = _with_progress("encoding", len(x), lambda i, j, _: client.encode(x[i:j]), None)
        _save_npy(np.concatenate([m for m, _ in parts]), output)
        if logvar_output is not None:
            _save_npy(np.concatenate([lv for _, lv in parts]), logvar_output)
    click.echo(f"wrote {output} ({len(x)} rows)", err=True)


@main.command()
@click.option(
    "-i", "--input", "input_", type=click.Path(path_type=Path), required=True, help="z [N, L] (.npy)."
)
@click.option("-o", "--output", type=_OUTPUT_FILE, default=Path("decoded.npy"), help="x [N, D] (.npy).")
@click.option("--png", type=_OUTPUT_FILE, default=None, help="Also write the images as a PNG grid.")
@click.pass_context
def decode(ctx: click.Context, input_: Path, output: Path, png: Path | None) -> None:
    """Latents to images (Bernoulli means), as .npy and optionally PNG."""
    _check_outputs([("-i", input_)], [("-o", output), ("--png", png)])
    with _errors():
        client = _client(ctx)
        z = load_array(input_)
        x = np.concatenate(_with_progress("decoding", len(z), lambda i, j, _: client.decode(z[i:j]), None))
        _save_npy(x, output)
        click.echo(f"wrote {output} ({len(x)} rows)", err=True)
        if png is not None:
            _save_grid(x, client.model_info().image_shape, png, columns=None)


if __name__ == "__main__":
    main()
