"""Principal directions of the latent space, for the model card.

The test set's posterior means spread along a few directions far more than along the rest; the
playground's latent pad moves along the top two by default. The card records the top `COUNT` as
unit vectors, with the centre of the means and the standard deviation along each, so a pad can
span a meaningful range (a few standard deviations around the centre).

`python -m vae_serve.training.directions models/fashion-vae/1` adds them to a published version's
card from its own encoder.onnx, leaving the graphs (and the hashes the card records) unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from .data import DEFAULT_DATA_DIR, DatasetError, load_images

__all__ = ["COUNT", "SIGNIFICANT_DIGITS", "card_with_directions", "encoder_means", "principal_directions"]

COUNT = 8
SIGNIFICANT_DIGITS = 5  # the card stays small: 8 x 32 floats of about ten characters
_BATCH = 1000


def _rounded(values: np.ndarray) -> list:
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in values.ravel()]


def principal_directions(means: np.ndarray, count: int = COUNT) -> dict[str, object]:
    """The top `count` principal directions of `means` [N, L]: unit rows, largest variance first,
    each signed so that its largest component is positive (SVD's sign is arbitrary)."""
    count = min(count, means.shape[1])
    means = means.astype(np.float64)
    centre = means.mean(axis=0)
    _, singular, vt = np.linalg.svd(means - centre, full_matrices=False)
    vectors = vt[:count]
    flip = np.sign(vectors[np.arange(count), np.abs(vectors).argmax(axis=1)])
    vectors = vectors * flip[:, None]
    return {
        "source": "test-set posterior means",
        "mean": _rounded(centre),
        "std": _rounded(singular[:count] / np.sqrt(max(len(means) - 1, 1))),
        "vectors": [_rounded(v) for v in vectors],
    }


def encoder_means(encoder: Path, images: np.ndarray) -> np.ndarray:
    """Posterior means of `images` [N, D] from an exported encoder.onnx, in ONNX Runtime on CPU."""
    import onnxruntime as ort  # the trainer's extra, imported only when a graph is run

    session = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    batches = [
        session.run(["mean"], {"x": images[start : start + _BATCH]})[0]
        for start in range(0, len(images), _BATCH)
    ]
    return np.concatenate(batches)


def card_with_directions(
    version_dir: Path, data_dir: Path = DEFAULT_DATA_DIR, limit: int | None = None
) -> dict[str, object]:
    """The card of `version_dir` with `principal_directions` from its encoder over the test set
    (its first `limit` images, as `vae-train --limit` uses)."""
    card = json.loads((version_dir / "model.json").read_text())
    images = load_images(data_dir, "t10k", limit)
    means = encoder_means(version_dir / "encoder.onnx", images.reshape(len(images), -1))
    return {**card, "principal_directions": principal_directions(means)}


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("version_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data",
    "--data-dir",
    "data_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="IDX files.",
)
def main(version_dir: Path, data_dir: Path) -> None:
    """Record the principal latent directions in VERSION_DIR/model.json (graphs unchanged)."""
    try:
        card = card_with_directions(version_dir, data_dir)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    staging = version_dir / ".model.json.new"  # renamed into place: a watching server never reads half
    staging.write_text(json.dumps(card, indent=2) + "\n")
    staging.replace(version_dir / "model.json")
    click.echo(f"{version_dir / 'model.json'}: principal_directions of {data_dir} (t10k)")


if __name__ == "__main__":
    sys.exit(main())
