"""Convert once, with torch: checkpoint -> ONNX (dynamic batch) with its facts in metadata."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from yolov5face.backends.base import ModelInfo

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "predictions"
METADATA_KEY = "yolov5face"
# Bumped whenever the exported graph changes for the same weights, so caches re-export.
# 2: static shapes except the batch axis (no run-time shape arithmetic in the graph).
# 3: the ShuffleNet channel shuffle as one stacked Concat (model.interleave_channels).
# 4: the banded CPU model written beside it (yolov5face/convert/band.py).
EXPORT_FORMAT = 4


def export_onnx(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    img_size: int = 320,
    opset: int = 17,
    band: bool = True,
) -> ModelInfo:
    """Export a checkpoint to ONNX with a dynamic batch axis; returns the recorded ModelInfo.

    With `band` (and ONNX Runtime installed) the banded CPU model is written beside it as
    `<out stem>.band.onnx`. Files are written atomically (temp file + rename), so a crash leaves
    no half model.
    """
    import onnx
    import torch

    from yolov5face.backends.torch import model_info
    from yolov5face.model.checkpoint import load_model, sha256_file

    if img_size % 32:
        raise ValueError(f"img size must be a multiple of 32, got {img_size}")
    model = load_model(weights)
    info = model_info(model, img_size, sha256_file(weights))
    info = ModelInfo(
        img_size=info.img_size,
        strides=info.strides,
        anchors=info.anchors,
        sha256=info.sha256,
        extra={
            "opset": opset,
            "format": EXPORT_FORMAT,
            "weights": Path(weights).name,
            "torch": torch.__version__,
        },
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, img_size, img_size)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The trace turns C/H/W into constants on purpose (model._static_chw).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, info.to_json()
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("exported %s -> %s (img size %d, opset %d)", weights, out, img_size, opset)
    from yolov5face.backends.band import band_path

    band_path(out).unlink(missing_ok=True)  # made from the previous file, if any
    if band:
        _export_band(out)
    return info


def _export_band(plain: Path) -> None:
    """Write the banded model of `plain` when ONNX Runtime is here to check it."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.info("onnxruntime is not installed: no banded model for %s", plain)
        return
    from yolov5face.convert.band import export_banded

    try:
        export_banded(plain)
    except Exception:  # an optimisation: the plain model serves the same answers without it
        logger.exception("building the banded model of %s failed; serving the plain one", plain)


def cached_onnx(
    weights: str | os.PathLike, img_size: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """ONNX for `weights`: the file itself if it is one, else an export made once into the cache.

    The cache defaults to <$YOLOV5FACE_CACHE>/onnx; torch is imported only to export.
    """
    from yolov5face.model.checkpoint import sha256_file
    from yolov5face.paths import cache_dir as default_cache

    weights = Path(weights)
    if weights.suffix == ".onnx":
        return weights
    directory = Path(cache_dir) if cache_dir is not None else default_cache() / "onnx"
    path = directory / f"{sha256_file(weights)[:16]}-{img_size}-f{EXPORT_FORMAT}.onnx"
    if not path.exists():
        export_onnx(weights, path, img_size)
    return path


def read_onnx_info(path: str | os.PathLike) -> ModelInfo:
    """The ModelInfo recorded in an exported model's metadata (reads the file with onnx)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return ModelInfo.from_json(entry.value)
    raise ValueError(f"{path} has no yolov5face metadata: export it with `yolov5face export onnx`")
