"""Raw head outputs -> scored faces in original-image coordinates -> the JSON face list."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from yolov5face.pipeline.nms import nms


@dataclass
class Faces:
    """Detections of one image in letterbox-input pixels, sorted by descending score."""

    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 10) float32 x1, y1, ... x5, y5

    def __len__(self) -> int:
        return len(self.scores)


@lru_cache(maxsize=16)
def anchor_table(
    size: int, strides: tuple[int, ...], anchors: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prediction (grid_xy * stride, stride, anchor_wh) in the network's output order."""
    anchor_wh = np.asarray(anchors, np.float32).reshape(len(strides), -1, 2)
    offsets, step, wh = [], [], []
    for level, stride in enumerate(strides):
        ny, nx = size // stride, size // stride
        na = anchor_wh.shape[1]
        gy, gx = np.meshgrid(
            np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij"
        )
        grid = np.stack((gx, gy), -1).reshape(1, ny * nx, 2).repeat(na, 0).reshape(-1, 2)
        offsets.append(grid)
        step.append(np.full((na * ny * nx, 1), stride, np.float32))
        wh.append(np.repeat(anchor_wh[level], ny * nx, axis=0))
    return np.concatenate(offsets), np.concatenate(step), np.concatenate(wh)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_predictions(
    pred: np.ndarray,
    size: int,
    strides: tuple[int, ...],
    anchors: tuple[float, ...],
    conf: float,
    iou: float,
) -> Faces:
    """Score, threshold, decode and NMS the (N, 16) raw predictions of one image."""
    pred = np.asarray(pred, np.float32)
    scores = _sigmoid(pred[:, 4]) * _sigmoid(pred[:, 15])
    idx = np.flatnonzero(scores > conf)  # strict, as the convention says
    grid, stride, anchor_wh = (t[idx] for t in anchor_table(size, strides, anchors))
    p, scores = pred[idx], scores[idx]
    xy = (2.0 * _sigmoid(p[:, 0:2]) - 0.5 + grid) * stride
    wh = (2.0 * _sigmoid(p[:, 2:4])) ** 2 * anchor_wh
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    landmarks = p[:, 5:15].reshape(-1, 5, 2) * anchor_wh[:, None] + (grid * stride)[:, None]
    keep = nms(boxes, scores, iou)
    return Faces(boxes[keep], scores[keep], landmarks.reshape(-1, 10)[keep])


def to_ratios(faces: Faces, geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and landmarks as unrounded float64 ratios of the original image size.

    Returns (xyxy ratios (K, 4), landmark ratios (K, 10)); `geometry` is one letterbox row
    [w0, h0, w1, h1, padw, padh].
    """
    _, _, w1, h1, padw, padh = geometry
    offset = np.array([padw, padh], np.float64)
    scale = np.array([w1, h1], np.float64)
    boxes = (faces.boxes.reshape(-1, 2, 2).astype(np.float64) - offset) / scale
    marks = (faces.landmarks.reshape(-1, 5, 2).astype(np.float64) - offset) / scale
    return boxes.reshape(-1, 4), marks.reshape(-1, 10)


def to_pixels(faces: Faces, geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) and landmarks (K, 10) in original-image pixels (float64, unrounded)."""
    w0, h0 = geometry[:2]
    boxes, marks = to_ratios(faces, geometry)
    size = np.array([w0, h0], np.float64)
    return (boxes.reshape(-1, 2, 2) * size).reshape(-1, 4), (
        marks.reshape(-1, 5, 2) * size
    ).reshape(-1, 10)


def to_json_faces(faces: Faces, geometry: np.ndarray) -> list[dict]:
    """The reference response: xywh and landmark ratios rounded to 3 decimals, conf unrounded."""
    boxes, marks = to_ratios(faces, geometry)
    xywh = np.concatenate(
        ((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), axis=1
    ).round(3)
    return [
        {"xywh_ratio": b, "conf": c, "landmarks_ratio": m}
        for b, c, m in zip(xywh.tolist(), faces.scores.tolist(), marks.round(3).tolist())
    ]
