"""`vae-train`: train, evaluate on the test set and publish a model version, in one command."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import click
from click.core import ParameterSource

from vae_serve import require_extra

# `vae-train` is installed with the package, torch and ONNX only with the train extra: without
# them, one line that says what to install instead of an ImportError from the imports below.
require_extra("vae-train", "train", ("torch", "onnx", "onnxscript", "onnxruntime", "tqdm"))

import torch.distributed as dist  # noqa: E402

from .data import (  # noqa: E402
    CHANNELS,
    DEFAULT_DATA_DIR,
    DEFAULT_TEST_FRACTION,
    DataOptions,
    DatasetError,
    DataSplits,
    open_data,
)
from .directions import principal_directions  # noqa: E402
from .evaluate import Evaluation, evaluate, posterior_means  # noqa: E402
from .export import VERSION_RULE, ExportError, card_image_shape, claim_version, export_vae, write_card  # noqa: E402
from .model import (  # noqa: E402
    ARCHITECTURES,
    VAE,
    ConvVAE,
    ConvVAEConfig,
    Decoder,
    Encoder,
    ModelConfig,
    VAEConfig,
)
from .prior import MIN_COMPONENT_WEIGHT, PRIORS, MixturePrior  # noqa: E402
from .quantize import DEFAULT_MAX_LOSS_NATS, quantize_version, read_card  # noqa: E402
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


def _dims(value: str, count: tuple[int, ...], what: str) -> tuple[int, ...]:
    """'32x48' -> (32, 48): `count` numbers (one of them) of at least 1, separated by x."""
    try:
        dims = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in count or min(dims) < 1:
        raise click.BadParameter(f"expected {what} of positive integers, got {value!r}")
    return dims


def _image_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    dims = _dims(value, (1, 2), "HxW (or one number for a square)")
    return (dims[0], dims[-1])


def _image_shape(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    return None if value is None else _dims(value, (2, 3), "HxW or HxWxC")


def _hidden(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer widths, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"layer widths must be positive, got {value!r}")
    return sizes


def _encoder_hidden(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    return () if value is None else _hidden(ctx, param, value)


def _version(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None or VERSION_RULE.fullmatch(value):
        return value
    raise click.BadParameter(
        f"{value!r}: a version is ASCII digits without a leading zero, at most 18 (what the server serves)"
    )


def _say_why(error: Exception) -> None:
    """What the command's exit would print for `error`: click's one line, or a traceback."""
    if isinstance(error, click.ClickException):
        error.show()
    else:
        traceback.print_exception(error)
    sys.stderr.flush()


def _on_main_rank(ctx: DistContext, work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 only; every rank then learns whether it failed, and fails with it.

    Without this a rank 0 that raised would never reach the collective its peers wait at: under
    torchrun they would hang (nccl) or die with a traceback about a closed socket (gloo). Rank 0
    says why before its peers hear of it: once one of them has stopped, torchrun stops rank 0 too,
    which could be before its own exit had said anything.
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
        if error is not None:
            _say_why(error)
        dist.broadcast_object_list(failure, src=0)
        dist.barrier()  # every rank has the news before any tears the group down
        if error is not None:
            raise SystemExit(error.exit_code if isinstance(error, click.ClickException) else 1)
    if error is not None:
        raise error
    if failure[0] is not None:
        raise click.ClickException(f"rank 0 failed, so this rank stops too: {failure[0]}")
    return result


def _check_ranks_agree(model: VAE | ConvVAE, ctx: DistContext) -> None:
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
    lr_warmup_epochs: int
    kl_warmup_epochs: int


def _load(data: Path, options: DataOptions, ctx: DistContext) -> DataSplits:
    """Train and test rows on the training device (or read there batch by batch), and their shape."""
    splits = open_data(data, **options)
    splits.train, splits.test = splits.train.to(ctx.device), splits.test.to(ctx.device)
    return splits


@dataclass(frozen=True)
class Shape:
    """The model's shape as the flags give it (the data gives the rest)."""

    arch: str
    hidden: tuple[int, ...]
    encoder_hidden: tuple[int, ...]
    conv_widths: tuple[int, ...]
    latent_dim: int
    prior_components: int  # 0: N(0, I)


def _config(shape: Shape, splits: DataSplits) -> ModelConfig:
    if shape.arch == "conv":
        try:
            return ConvVAEConfig(
                splits.image_shape, shape.conv_widths, shape.latent_dim, shape.prior_components
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    return VAEConfig(
        math.prod(splits.image_shape),
        shape.hidden,
        shape.latent_dim,
        shape.encoder_hidden,
        shape.prior_components,
    )


def _card(
    evaluation: Evaluation,
    directions: dict[str, object],
    recipe: Recipe,
    model: VAE | ConvVAE,
    splits: DataSplits,
    seconds: float,
) -> dict[str, object]:
    """What the trainer adds to the card; export_vae writes the contract's fields and provenance."""
    return {
        "architecture": model.config.to_dict(),
        "dataset": splits.description,
        "train_images": len(splits.train),
        "test_images": len(splits.test),
        **asdict(recipe),
        "training_seconds": round(seconds, 1),
        "test_neg_elbo_nats": round(evaluation.neg_elbo, 3),
        # null when skipped (--iwae-k 0): NaN is not JSON, and a browser's JSON.parse refuses it
        "test_iwae_nll_nats": round(evaluation.iwae_nll, 3) if evaluation.iwae_k else None,
        "iwae_k": evaluation.iwae_k,
        # the test images binarized once (Bernoulli of each value, seeded by the run's seed)
        "test_iwae_nll_binarized_nats": (
            round(evaluation.iwae_binarized_nll, 3) if evaluation.iwae_binarized_k else None
        ),
        "iwae_binarized_k": evaluation.iwae_binarized_k,
        "prior": model.prior.to_card(),
        "principal_directions": directions,
    }


@click.group(
    invoke_without_command=True,
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="Training data: a directory of IDX files (train-/t10k-images-idx3-ubyte[.gz]); a .npy or "
    ".npz file of images [N, H, W] or [N, H, W, C], uint8 or float in [0, 1] (.npz: arrays train "
    "and test, or one array); a directory with train.npy and test.npy; or a directory of PNG, JPEG "
    "or WebP pictures, in train/ and test/ folders or not.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    deprecated="use --data",
    help="The old name of --data.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=DEFAULT_TEST_FRACTION,
    help="Share of the images held out for test, when the data has no test split (seeded by --seed).",
)
@click.option(
    "--image-size",
    default=None,
    callback=_image_size,
    metavar="HxW",
    help="Resize every image to H rows by W columns (bilinear) "
    "[default: the data's own size; mixed sizes need it].",
)
@click.option(
    "--channels",
    type=click.Choice([str(c) for c in CHANNELS]),
    default=None,
    help="Convert to 1 (grey) or 3 (RGB) channels [default: the data's; pictures: 3 if any is in colour].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader processes reading pictures or arrays [default: up to 4 for pictures, 0 for arrays].",
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
    help="Peak Adam learning rate (cosine decay to 0 after the warm-up).",
)
@click.option(
    "--lr-warmup-epochs",
    type=click.IntRange(min=0),
    default=0,
    help="Epochs over which the learning rate rises linearly to --lr before its cosine decay.",
)
@click.option(
    "--kl-warmup-epochs",
    type=click.IntRange(min=0),
    default=0,
    help="Epochs over which the KL term's weight rises linearly from 0 to 1 (KL annealing); "
    "the reported -ELBO always counts it whole.",
)
@click.option(
    "--arch",
    type=click.Choice(sorted(ARCHITECTURES)),
    default="mlp",
    help="mlp: the default model's MLP; conv: strided convolutions, for colour and larger pictures.",
)
@click.option(
    "--hidden",
    default=",".join(map(str, VAEConfig.hidden)),
    callback=_hidden,
    help="--arch mlp: hidden widths, encoder order; the decoder mirrors them.",
)
@click.option(
    "--encoder-hidden",
    default=None,
    callback=_encoder_hidden,
    help="--arch mlp: the encoder's hidden widths, when it should differ from --hidden; the decoder "
    "(what Sample and Decode run) keeps --hidden [default: --hidden].",
)
@click.option(
    "--conv-widths",
    default=",".join(map(str, ConvVAEConfig.widths)),
    callback=_hidden,
    help="--arch conv: channels of each strided convolution (each halves the picture), encoder order.",
)
@click.option(
    "--latent-dim", type=click.IntRange(min=1), default=VAEConfig.latent_dim, help="Latent dimensions L."
)
@click.option(
    "--prior",
    type=click.Choice(PRIORS),
    default="standard",
    help="The latents' prior: standard = N(0, I); mog = a mixture of --prior-components Gaussians "
    "learned with the model, recorded on the card, from which the server's Sample draws.",
)
@click.option(
    "--prior-components",
    type=click.IntRange(min=1),
    default=10,
    help="--prior mog: how many Gaussians.",
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
    "--iwae-binarized-k",
    type=click.IntRange(min=0),
    default=0,
    help="Importance samples for the IWAE bound on the test images binarized once (each value v "
    "becomes 1 with probability v, seeded by --seed), as published density models report it "
    "(5000 is their usual k; it costs 50 times the k=100 bound). 0 skips it.",
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
@click.pass_context
def main(
    click_ctx: click.Context,
    data: Path,
    data_dir: Path | None,
    test_fraction: float,
    image_size: tuple[int, int] | None,
    channels: str | None,
    workers: int | None,
    model_repository: Path,
    name: str,
    version: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_warmup_epochs: int,
    kl_warmup_epochs: int,
    arch: str,
    hidden: tuple[int, ...],
    encoder_hidden: tuple[int, ...],
    conv_widths: tuple[int, ...],
    latent_dim: int,
    prior: str,
    prior_components: int,
    seed: int,
    device: str,
    limit: int | None,
    iwae_k: int,
    iwae_binarized_k: int,
    checkpoint: Path,
    resume: Path | None,
    export: bool,
) -> None:
    """Train a VAE (Fashion-MNIST by default), evaluate it on the test set and publish its encoder
    and decoder (ONNX) with a model card as a new model version."""
    if click_ctx.invoked_subcommand is not None:  # `vae-train card ...`: nothing to train
        given = [
            p.opts[0]
            for p in click_ctx.command.params
            if click_ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)
        ]
        if given:  # they would be ignored
            raise click.UsageError(f"{', '.join(given)}: training options, not for a command")
        return
    if arch == "conv" and encoder_hidden:
        raise click.UsageError("--encoder-hidden is for --arch mlp; --conv-widths shapes a conv encoder")
    if data_dir is not None:
        if click_ctx.get_parameter_source("data") != ParameterSource.DEFAULT:
            raise click.UsageError("--data-dir is the old name of --data: pass one of them")
        data = data_dir
    options: DataOptions = {
        "image_size": image_size,
        "channels": int(channels) if channels else None,
        "test_fraction": test_fraction,
        "seed": seed,
        "limit": limit,
        "workers": workers,
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript"):  # the exporter's pass-by-pass chatter
        logging.getLogger(chatty).setLevel(logging.WARNING)
    ctx = setup_distributed(device)
    recipe = Recipe(
        epochs, batch_size * ctx.world_size, lr, seed, ctx.world_size, lr_warmup_epochs, kl_warmup_epochs
    )
    shape = Shape(
        arch, hidden, encoder_hidden, conv_widths, latent_dim, prior_components if prior == "mog" else 0
    )
    try:
        target: Path | None = None
        if export:  # before any data is read: a taken version must not cost a training run
            target = _on_main_rank(ctx, lambda: claim_version(model_repository, name, version))
            if target is not None:
                log.info("will publish %s (%s version %s)", target, name, target.name)
        splits = _load(data, options, ctx)
        state = Checkpoint.load(resume) if resume else None
        config = state.config if state else _config(shape, splits)
        if config.input_dim != math.prod(splits.image_shape):
            raise click.ClickException(
                f"{resume}: a model of {config.input_dim} values an image, but the data has "
                f"{math.prod(splits.image_shape)} ({'x'.join(map(str, splits.image_shape))})"
            )
        log.info(
            "rank %d/%d on %s: %d train / %d test images, %s",
            ctx.rank,
            ctx.world_size,
            ctx.device,
            len(splits.train),
            len(splits.test),
            config,
        )
        model, seconds = train(
            config,
            splits.train,
            ctx=ctx,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            checkpoint_path=checkpoint if ctx.is_main else None,
            resume=state,
            lr_warmup_epochs=lr_warmup_epochs,
            kl_warmup_epochs=kl_warmup_epochs,
        )
        _check_ranks_agree(model, ctx)
        if isinstance(model.prior, MixturePrior):  # before evaluation: the figures are the card's model's
            trained = len(model.prior.logits)
            kept = model.prior.prune()
            log.info(
                "prior: %d of %d components weigh at least %g; kept those",
                kept,
                trained,
                MIN_COMPONENT_WEIGHT,
            )

        def evaluate_and_publish() -> None:
            result = evaluate(model, splits.test, iwae_k=iwae_k, seed=seed, iwae_binarized_k=iwae_binarized_k)
            log.info(
                "test -ELBO %.2f nats/image, IWAE(k=%d) bound on -log p(x) %.2f nats/image",
                result.neg_elbo,
                result.iwae_k,
                result.iwae_nll,
            )
            if result.iwae_binarized_k:
                log.info(
                    "binarized test images: IWAE(k=%d) bound on -log p(x) %.2f nats/image",
                    result.iwae_binarized_k,
                    result.iwae_binarized_nll,
                )
            if export and target is not None:
                directions = principal_directions(posterior_means(model, splits.test))
                path = export_vae(
                    Encoder(model),
                    Decoder(model),
                    image_shape=card_image_shape(splits.image_shape),
                    model_repository=model_repository,
                    name=name,
                    version=target.name,
                    card=_card(result, directions, recipe, model, splits, seconds),
                    arch=model.config.arch,
                    seed=seed,
                )
                log.info("wrote %s", path)

        # Every rank waits here for rank 0's evaluation and export, and hears if they failed.
        _on_main_rank(ctx, evaluate_and_publish)
    except (DatasetError, ExportError, TrainingDiverged, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@main.command("card")
@click.argument("version_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--image-shape",
    default=None,
    callback=_image_shape,
    metavar="HxW|HxWxC",
    help="The pictures' shape, channel-last (HxW for grey) [default: the card's, if there is one].",
)
@click.option(
    "--arch", default=None, help="What the card calls the architecture [default: the card's, or custom]."
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Data (as vae-train --data takes) whose test images' posterior means give the card's "
    "principal directions, resized and converted to the model's image shape [default: none].",
)
def card(version_dir: Path, image_shape: tuple[int, ...] | None, arch: str | None, data: Path | None) -> None:
    """Check VERSION_DIR's encoder.onnx and decoder.onnx, exported elsewhere, against the serving
    contract (names, shapes, dtypes, a dynamic batch axis, decoder values in [0, 1]), and write
    its model.json with their hashes. Fields of a card already there are kept."""
    try:
        rows = None
        if data is not None:
            shape = card_image_shape(image_shape or _card_shape(version_dir))
            channels = shape[2] if len(shape) == 3 else 1
            rows = open_data(data, image_size=(shape[0], shape[1]), channels=channels).test
        written = write_card(version_dir, image_shape=image_shape, arch=arch, directions_rows=rows)
    except (DatasetError, ExportError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    shown = "x".join(map(str, written["image_shape"]))
    click.echo(
        f"{version_dir / 'model.json'}: written; x [batch, {written['input_dim']}] ({shown} pictures) "
        f"-> mean, logvar [batch, {written['latent_dim']}]"
    )


@main.command("quantize")
@click.argument("version_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="The data the version was trained on (as vae-train --data takes): its test images, split "
    "by the card's seed and test fraction, give the figures.",
)
@click.option("--version", default=None, help="The version to publish [default: the next free one].")
@click.option(
    "--iwae-k",
    type=click.IntRange(min=0),
    default=100,
    help="Importance samples for the IWAE bound (0 skips it).",
)
@click.option(
    "--max-loss-nats",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_LOSS_NATS,
    help="Publish nothing if the test -ELBO grows by more than this many nats per image.",
)
def quantize(version_dir: Path, data: Path, version: str | None, iwae_k: int, max_loss_nats: float) -> None:
    """Publish VERSION_DIR's graphs quantized to 8 bits (ONNX Runtime's dynamic quantization) as a
    new version of the same model, its card stating the test -ELBO and IWAE bound beside the
    source's and the largest difference of each output. Smaller and faster on CPUs; on a GPU the
    float version is the one to serve."""
    try:
        card = read_card(version_dir)
        shape = card_image_shape(card["image_shape"])
        splits = open_data(
            data,
            image_size=(shape[0], shape[1]),
            channels=shape[2] if len(shape) == 3 else 1,
            test_fraction=card.get("test_fraction", DEFAULT_TEST_FRACTION),
            seed=card.get("seed", 0),
        )
        done = quantize_version(
            version_dir, splits.test, version=version, iwae_k=iwae_k, max_loss_nats=max_loss_nats
        )
    except (DatasetError, ExportError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sizes = {name: (version_dir / name).stat().st_size for name in ("encoder.onnx", "decoder.onnx")}
    lighter = sum((done.path / name).stat().st_size for name in sizes) / sum(sizes.values())
    click.echo(
        f"{done.path}: published; test -ELBO {done.quantized.neg_elbo:.3f} nats "
        f"({done.quantized.neg_elbo - done.source.neg_elbo:+.3f} on {version_dir.name}'s), "
        f"graphs {lighter:.0%} of the size"
    )


def _card_shape(version_dir: Path) -> list[int]:
    """The image shape an existing card records, for `card --data` without --image-shape."""
    try:
        shape = json.loads((version_dir / "model.json").read_text())["image_shape"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(f"{version_dir}: no image shape in a model.json; pass --image-shape") from None
    return shape


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
