"""Checks on request arrays, each failing with a message that says what was expected."""

from __future__ import annotations

import numpy as np

from vae_serve.errors import InvalidInput

__all__ = ["check_finite", "check_matrix", "check_unit_interval"]


def check_matrix(a: np.ndarray, field: str, width: int, max_rows: int) -> None:
    if a.ndim != 2 or a.shape[1] != width:
        raise InvalidInput(f"{field}: expected shape [N, {width}], got {list(a.shape)}")
    if a.shape[0] == 0:
        raise InvalidInput(f"{field}: empty batch (N = 0); send at least one row")
    if a.shape[0] > max_rows:
        raise InvalidInput(f"{field}: {a.shape[0]} rows exceed the limit of {max_rows} per request")


def check_finite(a: np.ndarray, field: str) -> None:
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a))[0][0])
        raise InvalidInput(f"{field}: row {row} holds NaN or infinity; values must be finite")


def check_unit_interval(a: np.ndarray, field: str) -> None:
    check_finite(a, field)
    if a.min() < 0.0 or a.max() > 1.0:
        row = int(np.argwhere((a < 0.0) | (a > 1.0))[0][0])
        raise InvalidInput(f"{field}: row {row} has values outside [0, 1]; pixels are intensities in [0, 1]")
