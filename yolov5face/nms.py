"""Greedy non-maximum suppression in vectorised numpy."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) corner boxes -> (N, M); areas without the +1."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    inter = np.clip(wh, 0, None).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, in descending score order.

    A box is suppressed when its IoU with a kept, higher-scoring box is > `iou_threshold`.
    Instead of a Python loop over boxes, iterate the whole keep-mask to its fixed point: box i
    is kept iff no kept box before it overlaps it, so after t rounds every box whose
    suppression chain is shorter than t is final. Chains are short, so this ends in a few
    vectorised rounds and gives exactly the greedy result.
    """
    order = np.argsort(-scores, kind="stable")
    if order.size <= 1:
        return order
    sorted_boxes = boxes[order]
    overlaps = np.triu(box_iou(sorted_boxes, sorted_boxes) > iou_threshold, k=1)
    keep = np.ones(order.size, bool)
    while True:
        new_keep = ~(overlaps & keep[:, None]).any(axis=0)
        if np.array_equal(new_keep, keep):
            return order[keep]
        keep = new_keep
