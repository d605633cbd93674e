"""The pre-start step: build (or find) the TensorRT engine before TorchServe starts.

A worker that built its engine in `initialize` would be killed by TorchServe's startupTimeout
on a first start (minutes on a T4), and the next worker would wait on the build lock under the
same clock. So `yolovface serve` (and through it the container entrypoint) builds the engine for
the archive's exact ONNX file first, and the workers only load it from the cache: both compute
the key with yolov5face.convert.tensorrt.prepare_engine from the same bytes and batch size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from yolov5face import settings

logger = logging.getLogger(__name__)

ARCHIVED_ONNX = "fd1.onnx"


def served_backend(requested: str | None = None) -> str:
    """The backend the workers will be asked for, refused early when they cannot serve it."""
    from yolov5face.backends import BACKENDS, SERVED_BACKENDS

    name = requested or settings.text("YOLOV5FACE_BACKEND") or "auto"
    if name not in SERVED_BACKENDS:
        known = "" if name in BACKENDS else " (unknown backend)"
        raise ValueError(
            f"YOLOV5FACE_BACKEND={name}{known} cannot be served: the archive holds ONNX models; "
            f"choose one of {', '.join(SERVED_BACKENDS)} (torch is for `yolov5face detect`)"
        )
    return name


def served_batch(config: dict[str, Any]) -> int:
    """The largest batch a worker gets: TorchServe's batchSize, capped by the handler's max."""
    handler = config.get("handler") or {}
    return max(1, min(int(config.get("batchSize", 1)), int(handler.get("max_batch", 32))))


def archived_onnx(mar: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Copy the archive's ONNX model (byte for byte what the workers load) into `directory`."""
    with zipfile.ZipFile(mar) as archive:
        data = archive.read(ARCHIVED_ONNX)
    target = Path(directory) / f"fd1-{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def prepare_served_engine(
    mar: str | os.PathLike,
    config: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    backend: str | None = None,
    **standin: Any,
) -> dict[str, Any] | None:
    """Build or find the engine the workers of `mar` will load; None when they run no engine.

    `standin` (target=, builder=) lets a test run this step with another runtime where a GPU
    and TensorRT are needed; serving never passes it.
    """
    from yolov5face.backends import choose_backend
    from yolov5face.convert.engine_cache import default_cache_dir
    from yolov5face.convert.tensorrt import prepare_engine

    name, reason = choose_backend(served_backend(backend))
    if name != "tensorrt" and not standin:
        logger.info("backend %s (%s): no engine to build", name, reason)
        return None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    onnx_path = archived_onnx(mar, cache / "sources")
    batch = served_batch(config)
    start = time.monotonic()
    logger.warning("TensorRT engine for batch size %d: looking in %s", batch, cache)
    path, key = prepare_engine(onnx_path, batch, cache_dir=cache, **standin)
    seconds = time.monotonic() - start
    logger.warning("TensorRT engine ready in %.1f s: %s", seconds, path)
    return {"engine": str(path), "key": key.to_json(), "seconds": round(seconds, 1)}


def pre_start(mar: str | os.PathLike, config: dict[str, Any]) -> dict[str, str]:
    """Run the pre-start step for `serve`; returns environment overrides for TorchServe.

    Raises (with the cause) when the engine cannot be built, unless YOLOV5FACE_GPU_FALLBACK
    is on: then the failure is logged and the workers are told to run ONNX Runtime.
    """
    served_backend()  # a backend the workers cannot serve stops here, not in every worker
    try:
        prepare_served_engine(mar, config)
    except Exception as exc:
        if not settings.flag("YOLOV5FACE_GPU_FALLBACK"):
            raise RuntimeError(
                f"TensorRT engine build failed: {exc} (set YOLOV5FACE_GPU_FALLBACK=1 to serve "
                "with ONNX Runtime instead, or YOLOV5FACE_BACKEND=onnxruntime)"
            ) from exc
        logger.exception("TENSORRT ENGINE BUILD FAILED: serving with ONNX Runtime (slower)")
        return {"YOLOV5FACE_BACKEND": "onnxruntime"}
    return {}
