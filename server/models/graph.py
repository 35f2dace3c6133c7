"""ONNX Runtime sessions: which execution provider, honestly reported.

onnxruntime-gpu lists CUDA as available even on hosts where it cannot load, then falls back to
the CPU with a screen of errors. So CUDA is only asked for when the NVIDIA driver library loads,
and the provider reported is the one each session really got (`session.get_providers()`).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vae_serve.errors import ModelLoadError

__all__ = ["CPU", "CUDA", "Graph", "choose_providers"]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _nvidia_driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(device: str) -> list[str]:
    """Providers to ask for: CPU alone, or CUDA first when it can really load."""
    if device == "cpu":
        return [CPU]
    if CUDA not in ort.get_available_providers():
        reason = f"this onnxruntime build ({ort.get_device()}) has no CUDA execution provider"
    elif not _nvidia_driver_loads():
        reason = "no NVIDIA driver on this host (libcuda.so.1 does not load)"
    else:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when installed
        return [CUDA, CPU]
    if device == "cuda":
        raise ModelLoadError(f"--device cuda: {reason}; use --device auto or --device cpu")
    log.info("CUDA not used: %s; running on CPU", reason)
    return [CPU]


class Graph:
    """One ONNX graph in one session, with its single input and its outputs by name.

    The session is built from `data`, the bytes already verified against the model card, never by
    opening `path` again (which only names the graph in messages): a file swapped on disk after its
    check cannot be what runs. ORT keeps its own reference to `data` (to rebuild the session if an
    execution provider fails at run time); nothing here keeps another."""

    def __init__(
        self, path: Path, providers: list[str], intra_op_threads: int, device: str, data: bytes
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle servers should not burn a core spinning in the thread pool.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(
                f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})"
            ) from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise ModelLoadError(f"{path}: --device cuda, but ONNX Runtime fell back to {self.provider}")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        self.path = path
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self._output_names = list(self.outputs)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self._output_names, {self.input_name: x})
