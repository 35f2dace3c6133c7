"""exporter_internals.py against the installed torch and onnxscript."""

from __future__ import annotations

import importlib

import torch
from version_pins import check_written_for

from vae_serve.training import exporter_internals as internals


def test_the_installed_version_is_one_the_adapter_was_written_for() -> None:
    check_written_for("onnxscript", internals.WRITTEN_FOR, "training/exporter_internals.py")


def test_exports_after_the_first_take_torchlibs_op_list_as_made_then(tmp_path) -> None:
    """torch asks `APIS` for the list on every export, and gets the one made first."""
    internals.make_torchlib_ops_once()
    internals.make_torchlib_ops_once()  # a second call changes nothing
    ops = importlib.import_module(internals.APIS).get_torchlib_ops
    before = ops.cache_info()
    for name in ("a", "b"):
        torch.onnx.export(
            torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), str(tmp_path / f"{name}.onnx"), dynamo=True
        )
    after = ops.cache_info()
    assert after.hits + after.misses - before.hits - before.misses == 2, "torch no longer asks APIS"
    assert after.misses == 1
    assert ops() is not ops() and ops() == ops()  # each caller a list of its own, the same ops
