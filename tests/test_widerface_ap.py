"""Tests of the WIDER FACE AP protocol on hand-made cases and the shared ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from yolov5face.tools.widerface import (
    LEVELS,
    GroundTruth,
    box_overlaps,
    evaluate,
    load_ground_truth,
)

DATA = Path(os.environ.get("YOLOV5FACE_DATA", Path(__file__).resolve().parents[2] / "shared"))
GT_JSON = DATA / "widerface" / "gt.json"


def truth(xywh: list[list[float]], counted: list[int] | None = None) -> GroundTruth:
    """One image whose faces ``counted`` (default: all) count at every level."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    idx = np.arange(len(b)) if counted is None else np.asarray(counted, dtype=np.intp)
    return GroundTruth(
        np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1), dict.fromkeys(LEVELS, idx)
    )


def dets(*rows: tuple[float, float, float, float, float]) -> np.ndarray:
    """(N, 5) detections [x1, y1, x2, y2, score]."""
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def at_all_levels(ap: float) -> dict[str, float]:
    """The same AP at every level."""
    return dict.fromkeys(LEVELS, pytest.approx(ap, abs=1e-12))


A, B, C = [10, 10, 20, 20], [100, 50, 30, 40], [300, 300, 8, 10]  # xywh faces


def test_load_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    rec = {"boxes_xywh": [A, B], "easy": [1], "medium": [0, 1], "hard": [0, 1]}
    path.write_text(json.dumps({"ev/a.jpg": rec}))
    gt = load_ground_truth(path)["ev/a.jpg"]
    np.testing.assert_array_equal(gt.boxes, [[10, 10, 30, 30], [100, 50, 130, 90]])
    np.testing.assert_array_equal(gt.counted("easy"), [False, True])
    path.write_text(json.dumps({"ev/a.jpg": {**rec, "hard": [2]}}))
    with pytest.raises(ValueError, match="out of range"):
        load_ground_truth(path)


def test_perfect_detections() -> None:
    gt = {
        "ev/a.jpg": GroundTruth(
            truth([A, B, C]).boxes, {"easy": [0], "medium": [0, 1], "hard": [0, 1, 2]}
        ),
        "ev/b.jpg": truth([B, C]),
    }
    scores = iter(np.linspace(0.9, 0.1, 5))
    found = {k: np.column_stack([g.boxes, [next(scores) for _ in g.boxes]]) for k, g in gt.items()}
    assert evaluate(found, gt) == at_all_levels(1.0)


def test_no_detections() -> None:
    gt = {"ev/a.jpg": truth([A, B]), "ev/b.jpg": truth([C])}
    assert evaluate({}, gt) == at_all_levels(0.0)
    assert evaluate({"ev/a.jpg": dets()}, gt) == at_all_levels(0.0)


def test_partial_hand_computed() -> None:
    # Faces A, B counted; detections (scores normalise to exactly 1, 0.5, 0): FP, A, FP.
    # t < 499 (thresh > 0.5): 1 proposal, 0 recalled -> P 0, R 0.
    # 499 <= t < 999 (thresh 0.5 .. 0.001): 2 proposals, 1 recalled -> P 1/2, R 1/2.
    # t = 999 (thresh 0): 3 proposals, 1 recalled -> P 1/3, R 1/2.
    # Envelope: P = 1/2 up to R = 1/2, then nothing -> AP = 1/2 * 1/2 = 0.25.
    gt = {"ev/a.jpg": truth([A, B])}
    found = {
        "ev/a.jpg": dets((500, 500, 540, 540, 1.0), (10, 10, 30, 30, 0.5), (0, 400, 9, 409, 0.0))
    }
    assert evaluate(found, gt) == at_all_levels(0.25)


def test_faces_of_images_without_detections_still_count() -> None:
    # Official: count_face grows before the "no detections -> skip" check, so the missed face of
    # b.jpg halves recall: P = 1 up to R = 1/2 -> AP = 0.5.
    gt = {"ev/a.jpg": truth([A]), "ev/b.jpg": truth([B])}
    assert evaluate({"ev/a.jpg": dets((10, 10, 30, 30, 0.9))}, gt) == at_all_levels(0.5)


def test_detection_on_ignored_face_is_discarded() -> None:
    # A counted, B ignored. Detections: B (norm. score 1), A (norm. score 0).
    # Discarded: t < 999 -> 0 proposals (P 0/0 := 0, R 0); t = 999 -> P 1, R 1 -> AP 1.
    # Had B been a false positive: t = 999 -> P 1/2, R 1 -> AP 0.5.
    gt = {"ev/a.jpg": truth([A, B], counted=[0])}
    found = {"ev/a.jpg": dets((100, 50, 130, 90, 0.8), (10, 10, 30, 30, 0.2))}
    assert evaluate(found, gt) == at_all_levels(1.0)
    # An unmatched detection is still a false positive: P 1/2 at R 1.
    found["ev/a.jpg"][0, :4] = [600, 600, 630, 640]
    assert evaluate(found, gt) == at_all_levels(0.5)


def test_duplicate_detection_is_false_positive() -> None:
    # A, B counted. Detections A (1), A again (0.5), B (0):
    # t < 499: P 1, R 1/2; 499 <= t < 999: P 1/2, R 1/2; t = 999: P 2/3, R 1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6 (a discarded duplicate would give 1).
    gt = {"ev/a.jpg": truth([A, B])}
    found = {
        "ev/a.jpg": dets((10, 10, 30, 30, 1.0), (11, 10, 31, 30, 0.5), (100, 50, 130, 90, 0.0))
    }
    assert evaluate(found, gt) == at_all_levels(5 / 6)


def test_plus_one_iou_at_threshold() -> None:
    # Face [0, 0, 10, 10] xyxy; detection [0, 0, 10, 4.5]: with +1 IoU = 11 * 5.5 / 121 = 0.5
    # exactly (a match, since >= 0.5); without +1 it would be 45 / 100 = 0.45 (a miss).
    gt = {"ev/a.jpg": truth([[0, 0, 10, 10]])}
    iou = box_overlaps(np.array([[0, 0, 10, 4.5], [0, 0, 10, 4.4]]), gt["ev/a.jpg"].boxes)
    assert iou[0, 0] == 0.5 and iou[1, 0] < 0.5
    assert evaluate({"ev/a.jpg": dets((0, 0, 10, 4.5, 0.7))}, gt) == at_all_levels(1.0)
    assert evaluate({"ev/a.jpg": dets((0, 0, 10, 4.4, 0.7))}, gt) == at_all_levels(0.0)
    assert evaluate({"ev/a.jpg": dets((0, 0, 10, 4.5, 0.7))}, gt, iou_threshold=0.51) == (
        at_all_levels(0.0)
    )
    # Touching boxes overlap by one pixel row under the +1 rule.
    assert box_overlaps(np.array([[10.0, 0, 20, 10]]), np.array([[0.0, 0, 10, 10]]))[0, 0] > 0


def test_score_normalisation_invariance() -> None:
    rng = np.random.default_rng(7)
    gt, found = {}, {}
    for i in range(6):
        xy = rng.uniform(0, 500, (8, 2))
        xywh = np.concatenate([xy, rng.uniform(6, 80, (8, 2))], axis=1)
        g = GroundTruth(
            truth(xywh.tolist()).boxes, {"easy": [0, 1], "medium": [0, 1, 2, 3], "hard": range(8)}
        )
        gt[f"ev/{i}.jpg"] = g
        noisy = g.boxes[:6] + rng.normal(0, 3, (6, 4))
        fp = np.concatenate([xy[:2] + 200, xy[:2] + 230], axis=1)
        found[f"ev/{i}.jpg"] = np.column_stack([np.concatenate([noisy, fp]), rng.random(8)])
    base = evaluate(found, gt)
    assert min(base.values()) > 0 and max(base.values()) < 1
    for scale, offset in ((7.0, 0.0), (1.0, -0.3), (3.7, 12.5)):
        moved = {k: np.column_stack([d[:, :4], d[:, 4] * scale + offset]) for k, d in found.items()}
        assert evaluate(moved, gt) == {k: pytest.approx(v, abs=1e-12) for k, v in base.items()}


@pytest.mark.skipif(
    not GT_JSON.is_file(), reason=f"shared WIDER FACE ground truth not found: {GT_JSON}"
)
def test_shared_ground_truth() -> None:
    gt = load_ground_truth(GT_JSON)
    assert len(gt) == 122
    assert [sum(len(g.levels[lvl]) for g in gt.values()) for lvl in LEVELS] == [241, 470, 984]
    rng = np.random.default_rng(0)
    found = {k: np.column_stack([g.boxes, rng.random(len(g.boxes))]) for k, g in gt.items()}
    assert evaluate(found, gt) == at_all_levels(1.0)
