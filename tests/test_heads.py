"""Head decoding against a direct per-prediction reference (x, y, w, h and landmarks distinct).

Written against the survivors of `make mutants` (docs/mutation.md): the older single-prediction
test used equal x/y and w/h logits of 0, so swapped columns or a wrong exponent passed.
"""

from __future__ import annotations

import math

import numpy as np

from yolov5face.pipeline.heads import Faces, anchor_table, decode_predictions, to_pixels, to_ratios

SIZE, STRIDES = 64, (8, 16, 32)
ANCHORS = tuple(float(a) for a in range(1, 19))


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _reference(row: np.ndarray, k: int) -> tuple[list[float], float, list[float]]:
    """Box xyxy, score and landmarks of prediction k, one formula at a time (float64)."""
    grid, stride, anchor = (t[k].astype(np.float64) for t in anchor_table(SIZE, STRIDES, ANCHORS))
    s = float(stride[0])
    cx = (2 * _sig(row[0]) - 0.5 + grid[0]) * s
    cy = (2 * _sig(row[1]) - 0.5 + grid[1]) * s
    w = (2 * _sig(row[2])) ** 2 * anchor[0]
    h = (2 * _sig(row[3])) ** 2 * anchor[1]
    marks = []
    for j in range(5):
        marks += [
            row[5 + 2 * j] * anchor[0] + grid[0] * s,
            row[6 + 2 * j] * anchor[1] + grid[1] * s,
        ]
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], _sig(row[4]) * _sig(row[15]), marks


def test_decode_matches_the_formulas_for_several_faces():
    rng = np.random.default_rng(0)
    n = len(anchor_table(SIZE, STRIDES, ANCHORS)[0])
    pred = np.full((n, 16), -30.0, np.float32)
    chosen = [10, 3 * 64 + 7, 3 * 64 + 3 * 16 + 5]  # one per level, far apart
    for rank, k in enumerate(chosen):
        pred[k, :4] = rng.uniform(-2, 2, 4)  # x, y, w, h all different
        pred[k, 4], pred[k, 15] = 3.0 - rank, 4.0  # distinct scores, descending in `chosen`
        pred[k, 5:15] = rng.uniform(-3, 3, 10)
    faces = decode_predictions(pred, SIZE, STRIDES, ANCHORS, 0.3, 0.99)
    assert len(faces) == len(chosen)
    for i, k in enumerate(chosen):  # sorted by descending score
        box, score, marks = _reference(pred[k].astype(np.float64), k)
        np.testing.assert_allclose(faces.boxes[i], box, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(faces.scores[i], score, rtol=1e-6)
        np.testing.assert_allclose(faces.landmarks[i], marks, rtol=1e-5, atol=1e-4)


def test_a_score_exactly_at_the_threshold_is_dropped():
    pred = np.full((len(anchor_table(SIZE, STRIDES, ANCHORS)[0]), 16), -30.0, np.float32)
    pred[0, 4], pred[0, 15] = 0.0, 30.0  # 0.5 * 1.0: exactly 0.5 in float32
    assert len(decode_predictions(pred, SIZE, STRIDES, ANCHORS, 0.5, 0.5)) == 0
    assert len(decode_predictions(pred, SIZE, STRIDES, ANCHORS, 0.4999, 0.5)) == 1


def test_ratios_and_pixels_by_hand():
    """A 640x480 photo letterboxed to 320x240 content at top padding 40 (w0, h0, w1, h1, padw,
    padh): letterbox pixels map back through the padding and the two scales separately."""
    faces = Faces(
        boxes=np.array([[10, 50, 30, 100], [100, 60, 200, 280]], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
        landmarks=(np.arange(20, dtype=np.float32) * 10 + 40).reshape(2, 10),
    )
    geometry = np.array([640, 480, 320, 240, 0, 40], np.float64)
    boxes, marks = to_ratios(faces, geometry)
    assert boxes.dtype == np.float64 and boxes.shape == (2, 4) and marks.shape == (2, 10)
    np.testing.assert_allclose(
        boxes, [[10, 10, 30, 60], [100, 20, 200, 240]] / np.array([320, 240] * 2)
    )
    xs = faces.landmarks[:, 0::2].astype(np.float64)
    ys = faces.landmarks[:, 1::2].astype(np.float64)
    np.testing.assert_allclose(marks[:, 0::2], xs / 320)
    np.testing.assert_allclose(marks[:, 1::2], (ys - 40) / 240)
    px_boxes, px_marks = to_pixels(faces, geometry)
    assert px_boxes.shape == (2, 4) and px_marks.shape == (2, 10)
    np.testing.assert_allclose(px_boxes, [[20, 20, 60, 120], [200, 40, 400, 480]])
    np.testing.assert_allclose(px_marks[:, 0::2], xs * 2)
    np.testing.assert_allclose(px_marks[:, 1::2], (ys - 40) * 2)
