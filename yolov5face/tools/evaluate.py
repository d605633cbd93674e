"""Run a Detector over an evaluation set and score it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def progress(iterable, total: int, desc: str, unit: str = "img"):
    """A tqdm progress bar on stderr (plain iteration when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr)


def pixel_detections(
    detect: Callable[[list[bytes]], list], images: Path, keys: Sequence[str], batch: int = 8
) -> dict[str, np.ndarray]:
    """{key: (N, 5) [x1, y1, x2, y2, score] in original pixels} from `detect(blobs)`.

    `detect` returns one Detection (or the ImageError it raised) per blob.
    """
    from yolov5face.pipeline.heads import to_pixels

    detections: dict[str, np.ndarray] = {}
    chunks = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    for chunk in progress(chunks, total=len(chunks), desc="widerface", unit="batch"):
        for key, det in zip(chunk, detect([(images / k).read_bytes() for k in chunk])):
            if isinstance(det, Exception):
                raise det
            boxes, _ = to_pixels(det.faces, det.geometry)
            detections[key] = np.concatenate((boxes, det.faces.scores[:, None]), axis=1)
    return detections


def run_widerface(detector, images: Path, gt_path: Path, batch: int = 8) -> dict[str, float]:
    """Detect on every ground-truth image and return easy/medium/hard AP (fractions)."""
    from yolov5face.tools.widerface import evaluate, load_ground_truth

    truth = load_ground_truth(gt_path)
    keys = sorted(truth)
    missing = [k for k in keys if not (images / k).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ground-truth images missing under {images}, e.g. {missing[0]}"
        )
    return evaluate(pixel_detections(detector.detect_raw, images, keys, batch), truth)
