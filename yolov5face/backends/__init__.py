"""Backend registry and the `auto` choice."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from yolov5face import settings
from yolov5face.backends.base import Backend, ModelInfo

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
# What TorchServe's workers run: the archive holds ONNX models, which the torch backend cannot
# load (it is a library and benchmark backend: `yolov5face detect --backend torch`).
SERVED_BACKENDS = ("auto", "onnxruntime", "tensorrt")

__all__ = [
    "BACKENDS",
    "SERVED_BACKENDS",
    "Backend",
    "ModelInfo",
    "choose_backend",
    "create_backend",
]


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_available() -> bool:
    # The driver, not torch: importing CUDA torch loads ~2 GB into every worker.
    from yolov5face.backends.cuda_driver import cuda_available

    return cuda_available()


def choose_backend(requested: str | None = None) -> tuple[str, str]:
    """Resolve a backend name (flag, else $YOLOV5FACE_BACKEND, else auto) -> (name, reason)."""
    name = requested or settings.text("YOLOV5FACE_BACKEND") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name != "auto":
        return name, "requested explicitly"
    if _importable("tensorrt") and _cuda_available():
        return "tensorrt", "auto: TensorRT and a CUDA device are available"
    if _importable("onnxruntime"):
        return "onnxruntime", "auto: no TensorRT+CUDA; ONNX Runtime is installed"
    return "torch", "auto: neither TensorRT+CUDA nor ONNX Runtime is installed"


def create_backend(
    name: str | None,
    weights: str | os.PathLike,
    img_size: int = 320,
    threads: int | None = None,
    device: str | None = None,
    max_batch: int = 32,
    band: bool | None = None,
    build_engine: bool = True,
) -> Backend:
    """Build the backend for `weights` (.pt/.safetensors checkpoint or exported .onnx).

    `band`: ONNX Runtime on the CPU runs the banded model when there is one (default: yes,
    unless YOLOV5FACE_BAND is off; yolov5face/backends/band.py). TensorRT: the engine's batch
    profile is 1..`max_batch`; without `build_engine` it must already be in the cache.
    """
    resolved, reason = choose_backend(name)
    logger.info("backend %s (%s)", resolved, reason)
    weights = Path(weights)
    is_onnx = weights.suffix == ".onnx"
    if resolved == "torch":
        if is_onnx:
            raise ValueError("the torch backend needs a checkpoint (.pt/.safetensors), not ONNX")
        from yolov5face.backends.torch import TorchBackend

        return TorchBackend(str(weights), img_size=img_size, device=device, threads=threads)
    if resolved == "onnxruntime":
        from yolov5face.backends.onnxruntime import OnnxRuntimeBackend
        from yolov5face.convert.onnx import cached_onnx

        return OnnxRuntimeBackend(cached_onnx(weights, img_size), threads=threads, band=band)
    from yolov5face.backends.tensorrt import TensorRTBackend

    try:
        return TensorRTBackend.from_weights(
            weights, img_size=img_size, batch_size=max_batch, build=build_engine
        )
    except Exception:
        if reason == "requested explicitly":
            raise
        logger.exception("TENSORRT ENGINE FAILED: falling back to ONNX Runtime (slower)")
        return create_backend("onnxruntime", weights, img_size, threads, device, max_batch, band)
