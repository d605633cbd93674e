"""box_iou on degenerate boxes (the golden comparison uses it): 0, never nan or garbage."""

from __future__ import annotations

import warnings

import numpy as np

from yolov5face.pipeline.nms import box_iou


def test_iou_of_empty_boxes_is_zero():
    points = np.array([[5.0, 5.0, 5.0, 5.0], [7.0, 7.0, 7.0, 7.0]])
    real = np.array([[0.0, 0.0, 10.0, 10.0]])
    for _ in range(3):  # uninitialised output memory would show up as varying garbage
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns on `where` without `out`
            iou = box_iou(points, points)
        assert iou.tolist() == [[0.0, 0.0], [0.0, 0.0]]
        assert box_iou(points, real).tolist() == [[0.0], [0.0]]
    assert box_iou(real, real).tolist() == [[1.0]]
