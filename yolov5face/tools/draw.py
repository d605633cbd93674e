"""Annotate an image with its faces: boxes, confidence and the five landmarks."""

from __future__ import annotations

import numpy as np

from yolov5face.pipeline.detector import Detection
from yolov5face.pipeline.heads import to_pixels

_LANDMARK_COLOURS = ((255, 0, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 128, 255))


def draw_detection(image: np.ndarray, detection: Detection) -> np.ndarray:
    """Return a copy of the BGR image with the detection drawn on it."""
    import cv2

    out = image.copy()
    boxes, marks = to_pixels(detection.faces, detection.geometry)
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for box, score, points in zip(boxes.round().astype(int), detection.faces.scores, marks):
        x1, y1, x2, y2 = box.tolist()
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        cv2.putText(
            out,
            f"{score:.2f}",
            (x1, max(y1 - 4, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            (0, 255, 0),
            thickness,
        )
        for (px, py), colour in zip(
            points.reshape(5, 2).round().astype(int).tolist(), _LANDMARK_COLOURS
        ):
            cv2.circle(out, (px, py), thickness + 1, colour, -1)
    return out
