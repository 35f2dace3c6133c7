"""torch.onnx's exporter beyond its documented API: torchlib's op list made once a process.

Each `torch.onnx.export(dynamo=True)` builds its registry of ATen decompositions afresh
(`ONNXRegistry.from_torchlib`) from the op list onnxscript offers torch
(`get_torchlib_ops`, in the module named for torch's version), and onnxscript makes that list by
parsing the source of every torchlib function (about 500) to read one field of each: about a
third of a second of CPU per graph here, the same list every time (torchlib's functions are
registered once, when its module is imported). `make_torchlib_ops_once()` keeps the first list;
each export still builds its own registry from a copy of it, so what one export registers never
reaches the next.

What this relies on: torch reaches the op list through `torch.onnx._internal._lazy_import`'s
`onnxscript_apis`, a lazy module named `APIS` here, by attribute on each export, and only reads it.
`WRITTEN_FOR` holds the versions this was written for, the range pyproject.toml allows;
tests/training/test_exporter_internals.py checks both points against the installed packages: run
it before raising the cap.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["APIS", "WRITTEN_FOR", "make_torchlib_ops_once"]

WRITTEN_FOR = {"onnxscript": ("0.5", "0.8")}
APIS = "onnxscript._framework_apis.torch_2_11"  # the module torch 2.13 names


class _MadeOnce:
    """torchlib's op list as first made, a copy to each caller (as a fresh list was before)."""

    def __init__(self, make: Callable[[], list[Any]]) -> None:
        self._first = functools.cache(make)
        self.cache_info = self._first.cache_info

    def __call__(self) -> list[Any]:
        return list(self._first())


def make_torchlib_ops_once() -> None:
    """From now on in this process, torchlib's op list is made on the first export only."""
    apis = importlib.import_module(APIS)
    if not isinstance(apis.get_torchlib_ops, _MadeOnce):
        setattr(apis, "get_torchlib_ops", _MadeOnce(apis.get_torchlib_ops))  # noqa: B010 (mypy knows no such name)
