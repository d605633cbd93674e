"""Post-processing: NMS equals the greedy definition; decoding and JSON follow the convention."""

import json

import numpy as np
import pytest

from yolov5face.pipeline.heads import Faces, anchor_table, decode_predictions, to_json_faces
from yolov5face.pipeline.nms import box_iou, nms
from yolov5face.tools.compare import compare_faces, face_shifts


def _greedy(boxes, scores, thr):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thr]
    return keep


@pytest.mark.parametrize("seed", range(20))
def test_nms_matches_greedy_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    boxes = np.concatenate((xy, xy + wh), 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    assert nms(boxes, scores, 0.5).tolist() == _greedy(boxes, scores, 0.5)


def test_anchor_table_order():
    grid, stride, wh = anchor_table(64, (8, 16, 32), tuple(float(i) for i in range(1, 19)))
    assert len(grid) == 3 * (64 + 16 + 4)
    # anchor-major within a level, then rows, then columns
    assert grid[1].tolist() == [1, 0] and grid[8].tolist() == [0, 1]
    assert wh[0].tolist() == [1, 2] and wh[64].tolist() == [3, 4]
    assert stride[3 * 64].item() == 16 and wh[3 * 64].tolist() == [7, 8]


def test_decode_single_prediction():
    size, strides, anchors = 64, (8, 16, 32), tuple(float(a) for a in range(1, 19))
    pred = np.full((3 * 84, 16), -10.0, np.float32)
    k = 8 + 2  # level 0, anchor 0, row 1, column 2
    pred[k, 4] = pred[k, 15] = 10.0  # score ~1
    pred[k, :4] = 0.0  # sigmoid 0.5 -> xy = (0.5 + grid) * 8, wh = anchor
    pred[k, 5:15] = 1.0
    faces = decode_predictions(pred, size, strides, anchors, 0.3, 0.5)
    assert len(faces) == 1
    np.testing.assert_allclose(faces.boxes[0], [20 - 0.5, 12 - 1, 20 + 0.5, 12 + 1])
    np.testing.assert_allclose(faces.landmarks[0, :2], [16 + 1, 8 + 2])


def test_threshold_is_strict():
    pred = np.full((3 * 84, 16), -10.0, np.float32)
    pred[0, 4], pred[0, 15] = 0.0, 10.0  # score = 0.5 * ~1
    at = decode_predictions(pred, 64, (8, 16, 32), tuple(range(1, 19)), 0.5, 0.5)
    below = decode_predictions(pred, 64, (8, 16, 32), tuple(range(1, 19)), 0.49, 0.5)
    assert len(at) == 0 and len(below) == 1


def test_json_format_and_rounding():
    faces = Faces(
        boxes=np.array([[10, 20, 30, 60]], np.float32),
        scores=np.array([0.87654321], np.float32),
        landmarks=np.arange(10, dtype=np.float32).reshape(1, 10) + 10,
    )
    geometry = np.array([1000, 500, 320, 160, 0, 80], np.float64)
    out = to_json_faces(faces, geometry)
    assert list(out[0]) == ["xywh_ratio", "conf", "landmarks_ratio"]
    assert out[0]["xywh_ratio"] == [0.062, -0.25, 0.062, 0.25]
    assert out[0]["conf"] == float(np.float32(0.87654321))
    assert out[0]["landmarks_ratio"][:2] == [0.031, -0.431]
    json.dumps(out)
    assert to_json_faces(Faces(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 10))), geometry) == []


def test_compare_rule():
    face = {"xywh_ratio": [0.5, 0.5, 0.2, 0.2], "conf": 0.9, "landmarks_ratio": [0.5] * 10}
    near = {**face, "xywh_ratio": [0.501, 0.5, 0.2, 0.2], "conf": 0.897}
    far = {**face, "xywh_ratio": [0.504, 0.5, 0.2, 0.2]}
    edge = {"xywh_ratio": [0.1, 0.1, 0.05, 0.05], "conf": 0.302, "landmarks_ratio": [0.1] * 10}
    assert compare_faces([face], [near]) == []
    assert compare_faces([face], [far])
    assert compare_faces([face], []) and compare_faces([], [face])
    assert compare_faces([face, edge], [face]) == []  # within 0.005 of the threshold


def test_compare_rule_passes_a_difference_of_exactly_the_tolerance():
    """0.125 - 0.123 is 0.0020000000000000018 in float64: two rounding steps still pass."""
    face = {"xywh_ratio": [0.123, 0.5, 0.2, 0.2], "conf": 0.9, "landmarks_ratio": [0.5] * 10}
    two_steps = {
        "xywh_ratio": [0.125, 0.5, 0.2, 0.2],
        "conf": 0.895,
        "landmarks_ratio": [0.495] + [0.5] * 9,
    }
    assert compare_faces([face], [two_steps]) == []
    three_steps = {**two_steps, "xywh_ratio": [0.126, 0.5, 0.2, 0.2]}
    assert compare_faces([face], [three_steps]) == [
        "face 0: xywh_ratio differs by 0.0030 (> 0.002)"
    ]
    low = {**face, "conf": 0.305}  # exactly CONF_TOL from the threshold: may flip, not a problem
    assert compare_faces([low], []) == [] and compare_faces([], [low]) == []


def test_face_shifts():
    face = {"xywh_ratio": [0.5, 0.5, 0.2, 0.2], "conf": 0.9, "landmarks_ratio": [0.5] * 10}
    moved = {"xywh_ratio": [0.503, 0.5, 0.2, 0.2], "conf": 0.88, "landmarks_ratio": [0.51] * 10}
    other = {"xywh_ratio": [0.1, 0.1, 0.05, 0.05], "conf": 0.6, "landmarks_ratio": [0.1] * 10}
    edge = {**other, "xywh_ratio": [0.8, 0.8, 0.05, 0.05], "conf": 0.303}
    shifts = face_shifts([face, other], [moved, edge])
    assert shifts == pytest.approx(
        {
            "pairs": 1,
            "xywh_ratio": 0.003,
            "conf": 0.02,
            "landmarks_ratio": 0.01,
            "missing": 1,
            "extra": 0,
        }
    )
    assert face_shifts([], []) == {
        "pairs": 0,
        "xywh_ratio": 0.0,
        "conf": 0.0,
        "landmarks_ratio": 0.0,
        "missing": 0,
        "extra": 0,
    }
