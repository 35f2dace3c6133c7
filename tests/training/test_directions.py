"""Principal directions for the card: the top spreads of the posterior means, as unit vectors."""

import numpy as np

from vae_serve.training.directions import principal_directions


def test_finds_the_directions_the_data_spreads_along():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((6, 6)))[0]  # orthonormal columns
    spreads = np.array([5.0, 2.0, 0.5, 0.1, 0.05, 0.01])
    means = 3.0 + (rng.standard_normal((20_000, 6)) * spreads) @ basis.T
    found = principal_directions(means.astype(np.float32), count=3)
    vectors = np.array(found["vectors"])
    assert vectors.shape == (3, 6)
    assert np.allclose(vectors @ vectors.T, np.eye(3), atol=1e-4)
    assert np.allclose(np.abs(vectors @ basis[:, :3]), np.eye(3), atol=0.02)  # the same axes, any sign
    assert np.allclose(found["std"], spreads[:3], rtol=0.03)
    assert np.allclose(found["mean"], 3.0, atol=0.05)
    assert all(v[np.abs(v).argmax()] > 0 for v in vectors)  # one sign, chosen the same way every time


def test_never_more_directions_than_dimensions_and_five_significant_digits():
    found = principal_directions(np.random.default_rng(1).standard_normal((100, 2)), count=8)
    assert len(found["vectors"]) == 2
    assert all(len(f"{abs(v):.15g}".replace(".", "").lstrip("0")) <= 5 for v in found["mean"])
