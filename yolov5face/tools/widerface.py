"""WIDER FACE evaluation: the official per-level AP protocol on a JSON ground truth."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

LEVELS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class GroundTruth:
    """Faces of one image: (N, 4) float64 xyxy pixel boxes and per-level counted indices."""

    boxes: np.ndarray  # [x1, y1, x2, y2] with x2 = x + w, y2 = y + h (official conversion)
    levels: Mapping[str, np.ndarray]  # level -> 0-based indices of the faces counted there

    def counted(self, level: str) -> np.ndarray:
        """Boolean mask of the faces that count at ``level`` (the rest are ignored)."""
        mask = np.zeros(len(self.boxes), dtype=bool)
        mask[self.levels[level]] = True
        return mask


def load_ground_truth(path: str | os.PathLike) -> dict[str, GroundTruth]:
    """Read ``gt.json`` ("<event>/<file>.jpg" -> boxes_xywh, easy, medium, hard) by image key."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    truth: dict[str, GroundTruth] = {}
    for key, rec in raw.items():
        xywh = np.asarray(rec["boxes_xywh"], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        levels = {lvl: np.asarray(rec[lvl], dtype=np.intp).reshape(-1) for lvl in LEVELS}
        for lvl, idx in levels.items():
            if idx.size and (idx.min() < 0 or idx.max() >= len(boxes)):
                raise ValueError(f"{path}: {key}: {lvl} index out of range for {len(boxes)} boxes")
        truth[key] = GroundTruth(boxes, levels)
    logger.debug("loaded %d images of WIDER FACE ground truth from %s", len(truth), path)
    return truth


def box_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, K) IoU of xyxy boxes with the official inclusive-pixel "+1" widths and heights."""
    b, q = boxes[:, None, :], query[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_q = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    union = area_b + area_q - inter  # same operation order as the official code
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _voc_ap(pr_curve: np.ndarray, count_face: int) -> float:
    """VOC area under the monotone precision envelope of summed (proposals, recalled) counts."""
    proposals, recalled = pr_curve[:, 0], pr_curve[:, 1]
    # Official 0/0 is NaN; it only occurs on a leading run of thresholds with zero recall, which
    # adds no area, so defining it as 0 gives the same AP without NaN warnings.
    precision = np.divide(recalled, proposals, out=np.zeros_like(recalled), where=proposals > 0)
    if count_face == 0:
        return 0.0
    mrec = np.concatenate(([0.0], recalled / count_face, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate(
    detections: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, GroundTruth],
    iou_threshold: float = 0.5,
    num_thresholds: int = 1000,
) -> dict[str, float]:
    """Per-level AP in [0, 1] of (N, 5) [x1, y1, x2, y2, score] pixel detections by image key."""
    dets = {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in detections.items()}
    extra = sorted(set(dets) - set(ground_truth))
    if extra:
        logger.warning(
            "%d detection keys are not in the ground truth, e.g. %s", len(extra), extra[0]
        )
    scores = [d[:, 4] for d in dets.values() if len(d)]
    lo = min((float(s.min()) for s in scores), default=0.0)
    hi = max((float(s.max()) for s in scores), default=1.0)
    thresholds = 1 - (np.arange(num_thresholds) + 1) / num_thresholds

    # Level-independent work per image: score order, best gt per detection, threshold cut-offs.
    prepared: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for key, gt in ground_truth.items():
        d = dets.get(key)
        if d is None or not len(d) or not len(gt.boxes):
            continue  # official: skipped entirely, not even false positives
        # Min-max over every detection of every image; a constant score ranks nothing, so it
        # maps to 1 (kept at every threshold) instead of the official 0/0.
        s = (d[:, 4] - lo) / (hi - lo) if hi > lo else np.ones(len(d))
        order = np.argsort(-s, kind="stable")
        overlaps = box_overlaps(d[order, :4], gt.boxes)
        best = overlaps.argmax(axis=1)  # first maximum on ties, as the official argmax
        matched = overlaps[np.arange(len(d)), best] >= iou_threshold
        # Last sorted index with score >= thresh is count(score >= thresh) - 1.
        cut = np.searchsorted(-s[order], -thresholds, side="right")
        prepared[key] = (best, matched, cut)

    result: dict[str, float] = {}
    for level in LEVELS:
        pr_curve = np.zeros((num_thresholds, 2))
        count_face = 0
        for key, gt in ground_truth.items():
            # Official order: count_face += len(keep_index) comes BEFORE the "no gt boxes or no
            # detections -> continue" check, so faces of images without detections still count
            # (as misses) in the recall denominator.
            count_face += len(gt.levels[level])
            if key not in prepared:
                continue
            best, matched, cut = prepared[key]
            counted = gt.counted(level)[best]
            # A match to an ignored face discards the detection (neither TP nor FP); the first
            # match to a counted face recalls it; later matches to it stay proposals (FP).
            proposal = ~(matched & ~counted)
            hit = np.flatnonzero(matched & counted)
            _, first = np.unique(best[hit], return_index=True)
            newly = np.zeros(len(best), dtype=np.intp)
            newly[hit[first]] = 1
            pred_recall, cum_proposals = np.cumsum(newly), np.cumsum(proposal)
            has = cut > 0
            pr_curve[:, 0] += np.where(has, cum_proposals[cut - 1], 0)
            pr_curve[:, 1] += np.where(has, pred_recall[cut - 1], 0)
        result[level] = _voc_ap(pr_curve, count_face)
    logger.info(
        "WIDER FACE AP over %d images: %s",
        len(ground_truth),
        " ".join(f"{lvl}={ap:.4f}" for lvl, ap in result.items()),
    )
    return result
