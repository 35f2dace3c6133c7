"""`vae-train`: train, evaluate on the test set and publish a model version, in one command."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from vae_serve import require_extra

# `vae-train` is installed with the package, torch and ONNX only with the train extra: without
# them, one line that says what to install instead of an ImportError from the imports below.
require_extra("vae-train", "train", ("torch", "onnx", "onnxscript", "onnxruntime", "tqdm"))

import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from .data import DEFAULT_DATA_DIR, DatasetError, load_images  # noqa: E402
from .directions import principal_directions  # noqa: E402
from .evaluate import Evaluation, evaluate, posterior_means  # noqa: E402
from .export import VERSION_RULE, ExportError, claim_version, write_version  # noqa: E402
from .model import VAE, VAEConfig  # noqa: E402
from .train import (  # noqa: E402
    Checkpoint,
    DistContext,
    TrainingDiverged,
    launched_distributed,
    parameter_digest,
    setup_distributed,
    train,
)

__all__ = ["entry", "main"]

log = logging.getLogger("vae_serve.training")

T = TypeVar("T")


def _hidden(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer widths, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"layer widths must be positive, got {value!r}")
    return sizes


def _version(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None or VERSION_RULE.fullmatch(value):
        return value
    raise click.BadParameter(
        f"{value!r}: a version is ASCII digits without a leading zero, at most 18 (what the server serves)"
    )


def _on_main_rank(ctx: DistContext, work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 only; every rank then learns whether it failed, and fails with it.

    Without this a rank 0 that raised would never reach the collective its peers wait at: under
    torchrun they would hang (nccl) or die with a traceback about a closed socket (gloo).
    """
    failure: list[str | None] = [None]
    result: T | None = None
    error: Exception | None = None
    if ctx.is_main:
        try:
            result = work()
        except Exception as exc:  # every failure, expected or not: the peers must hear of it
            error = exc
            failure[0] = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            failure[0] = failure[0] or type(exc).__name__
    if ctx.world_size > 1:
        dist.broadcast_object_list(failure, src=0)
        dist.barrier()  # every rank has the news before any tears the group down
    if error is not None:
        raise error
    if failure[0] is not None:
        raise click.ClickException(f"rank 0 failed, so this rank stops too: {failure[0]}")
    return result


def _check_ranks_agree(model: VAE, ctx: DistContext) -> None:
    digest = parameter_digest(model)
    log.info("rank %d/%d: parameter digest %s", ctx.rank, ctx.world_size, digest)
    if ctx.world_size == 1:
        return
    digests: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise click.ClickException(f"ranks disagree after training: {digests}")


@dataclass(frozen=True)
class Recipe:
    """How the model was trained, as the card records it."""

    epochs: int
    batch_size: int  # images per optimizer step, all ranks together
    lr: float
    seed: int
    world_size: int


def _load(
    data_dir: Path, limit: int | None, ctx: DistContext
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Train and test images as flat rows on the training device, and the image shape."""
    train_images, test_images = (load_images(data_dir, split)[:limit] for split in ("train", "t10k"))
    rows = (torch.from_numpy(i.reshape(len(i), -1)).to(ctx.device) for i in (train_images, test_images))
    return *rows, list(train_images.shape[1:])


def _card(
    evaluation: Evaluation,
    directions: dict[str, object],
    recipe: Recipe,
    model: VAE,
    image_shape: list[int],
    data_dir: Path,
    train_images: int,
    test_images: int,
    seconds: float,
) -> dict[str, object]:
    return {
        "input_dim": model.config.input_dim,
        "image_shape": image_shape,
        "latent_dim": model.config.latent_dim,
        "architecture": model.config.to_dict(),
        "dataset": f"Fashion-MNIST IDX files in {data_dir}",
        "train_images": train_images,
        "test_images": test_images,
        **asdict(recipe),
        "training_seconds": round(seconds, 1),
        "test_neg_elbo_nats": round(evaluation.neg_elbo, 3),
        "test_iwae_nll_nats": round(evaluation.iwae_nll, 3),
        "iwae_k": evaluation.iwae_k,
        "principal_directions": directions,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="Directory of IDX files (train-/t10k-images-idx3-ubyte[.gz]).",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path),
    default=Path("models"),
    help="Repository root; the version is written to <root>/<name>/<version>/.",
)
@click.option("--name", default="fashion-vae", help="Model name in the repository.")
@click.option(
    "--version",
    "version",
    default=None,
    callback=_version,
    help="Version to publish, checked before training [default: one past the highest present].",
)
@click.option(
    "--epochs", type=click.IntRange(min=0), default=60, help="Total epochs (a resumed run continues to this)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, help="Images per step on each rank.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    help="Peak Adam learning rate (cosine decay).",
)
@click.option(
    "--hidden",
    default=",".join(map(str, VAEConfig.hidden)),
    callback=_hidden,
    help="Hidden widths, encoder order.",
)
@click.option(
    "--latent-dim", type=click.IntRange(min=1), default=VAEConfig.latent_dim, help="Latent dimensions L."
)
@click.option("--seed", type=int, default=0, help="Seed for weights, shuffling and noise.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto = CUDA when present."
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Use only the first N train and test images."
)
@click.option(
    "--iwae-k",
    type=click.IntRange(min=0),
    default=100,
    help="Importance samples for the IWAE bound (0 skips it).",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=Path("checkpoints/last.pt"),
    help="Written after every epoch.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Continue from this checkpoint (with --epochs equal to its epoch: evaluate and export only).",
)
@click.option("--export/--no-export", default=True, help="Publish the model version after evaluation.")
def main(
    data_dir: Path,
    model_repository: Path,
    name: str,
    version: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    hidden: tuple[int, ...],
    latent_dim: int,
    seed: int,
    device: str,
    limit: int | None,
    iwae_k: int,
    checkpoint: Path,
    resume: Path | None,
    export: bool,
) -> None:
    """Train a VAE on Fashion-MNIST, evaluate it and export encoder and decoder to ONNX."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's pass-by-pass chatter
    ctx = setup_distributed(device)
    recipe = Recipe(epochs, batch_size * ctx.world_size, lr, seed, ctx.world_size)
    try:
        target: Path | None = None
        if export:  # before any data is read: a taken version must not cost a training run
            target = _on_main_rank(ctx, lambda: claim_version(model_repository, name, version))
            if target is not None:
                log.info("will publish %s (%s version %s)", target, name, target.name)
        train_x, test_x, image_shape = _load(data_dir, limit, ctx)
        state = Checkpoint.load(resume) if resume else None
        config = state.config if state else VAEConfig(train_x.shape[1], hidden, latent_dim)
        log.info(
            "rank %d/%d on %s: %d train / %d test images, %s",
            ctx.rank,
            ctx.world_size,
            ctx.device,
            len(train_x),
            len(test_x),
            config,
        )
        model, seconds = train(
            config,
            train_x,
            ctx=ctx,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            checkpoint_path=checkpoint if ctx.is_main else None,
            resume=state,
        )
        _check_ranks_agree(model, ctx)

        def evaluate_and_publish() -> None:
            result = evaluate(model, test_x, iwae_k=iwae_k, seed=seed)
            log.info(
                "test -ELBO %.2f nats/image, IWAE(k=%d) bound on -log p(x) %.2f nats/image",
                result.neg_elbo,
                result.iwae_k,
                result.iwae_nll,
            )
            if export and target is not None:
                directions = principal_directions(posterior_means(model, test_x))
                card = _card(
                    result,
                    directions,
                    recipe,
                    model,
                    image_shape,
                    data_dir,
                    len(train_x),
                    len(test_x),
                    seconds,
                )
                path = write_version(model, model_repository, name, target.name, card, seed)
                log.info("wrote %s", path)

        # Every rank waits here for rank 0's evaluation and export, and hears if they failed.
        _on_main_rank(ctx, evaluate_and_publish)
    except (DatasetError, ExportError, TrainingDiverged, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def entry() -> None:
    """What `vae-train` and `python -m vae_serve.training.cli` run: `main`, and under torchrun an
    exit that skips the interpreter's teardown once the command is done and its output flushed.

    gloo's worker thread may still hold the last collective's work (the closing barrier holds the
    broadcast before it, whose tensors were made in Python) when the interpreter finalizes; it
    then needs the GIL to free them, is ended by the finalizing interpreter inside a destructor,
    and std::terminate kills the rank with SIGABRT after a successful run: 7 of ~680 two-rank
    trainings here, seen in the core dumps (pytorch/pytorch#179291 describes the same).
    """
    if not launched_distributed():
        main()
        return
    status: int | str | None = 0
    try:
        main()
    except SystemExit as done:  # click ends every run so, errors included
        status = done.code
    if isinstance(status, str):  # as the interpreter would: printed, and status 1
        print(status, file=sys.stderr)
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


if __name__ == "__main__":
    entry()
