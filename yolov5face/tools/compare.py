"""The golden comparison rule: pair faces by IoU, then check tolerances; the answer form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolov5face.pipeline.nms import box_iou

BOX_TOL, CONF_TOL, LANDMARK_TOL = 0.002, 0.005, 0.005


def _corners(faces: Sequence[dict]) -> np.ndarray:
    xywh = np.asarray([f["xywh_ratio"] for f in faces], np.float64).reshape(-1, 4)
    return np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), axis=1)


def compare_faces(
    expected: Sequence[dict], actual: Sequence[dict], threshold: float = 0.3
) -> list[str]:
    """Problems found comparing two face lists (empty list = they match).

    Each expected face is paired with the unpaired actual face of highest IoU (>= 0.5); paired
    values must agree within the tolerances; an unpaired face on either side is a problem unless
    its conf is within CONF_TOL of the threshold (its score may flip with float noise).
    """
    problems: list[str] = []
    iou = box_iou(_corners(expected), _corners(actual)) if expected and actual else None
    used: set[int] = set()
    for i, exp in enumerate(expected):
        j = -1
        if iou is not None:
            candidates = [k for k in np.argsort(-iou[i]) if k not in used and iou[i, k] >= 0.5]
            j = int(candidates[0]) if candidates else -1
        if j < 0:
            if abs(exp["conf"] - threshold) > CONF_TOL:
                problems.append(f"missing face {i} (conf {exp['conf']:.3f})")
            continue
        used.add(j)
        act = actual[j]
        checks = (("xywh_ratio", BOX_TOL), ("landmarks_ratio", LANDMARK_TOL))
        for key, tol in checks:
            diff = np.abs(np.subtract(exp[key], act[key])).max()
            if diff > tol:
                problems.append(f"face {i}: {key} differs by {diff:.4f} (> {tol})")
        if abs(exp["conf"] - act["conf"]) > CONF_TOL:
            problems.append(f"face {i}: conf {exp['conf']:.4f} vs {act['conf']:.4f}")
    for j, act in enumerate(actual):
        if j not in used and abs(act["conf"] - threshold) > CONF_TOL:
            problems.append(f"extra face {j} (conf {act['conf']:.3f})")
    return problems


def faces_match(expected: Sequence[dict], actual: Sequence[dict], threshold: float = 0.3) -> bool:
    """True when the two face lists agree by the golden comparison rule."""
    return not compare_faces(expected, actual, threshold)


FACE_KEYS = ("xywh_ratio", "conf", "landmarks_ratio")


def convention_problems(faces: Any) -> list[str]:
    """Problems with an answer's form: a list of faces, keys in order, descending conf."""
    if not isinstance(faces, list):
        return [f"not a list of faces: {type(faces).__name__}"]
    problems: list[str] = []
    for i, face in enumerate(faces):
        keys = tuple(face) if isinstance(face, dict) else type(face).__name__
        if keys != FACE_KEYS:
            problems.append(f"face {i}: keys {keys} (want {FACE_KEYS} in this order)")
            continue
        lengths = len(face["xywh_ratio"]), len(face["landmarks_ratio"])
        if lengths != (4, 10):
            problems.append(f"face {i}: {lengths[0]} box and {lengths[1]} landmark values")
    if problems:
        return problems
    for i in range(len(faces) - 1):
        if faces[i]["conf"] < faces[i + 1]["conf"]:
            a, b = faces[i]["conf"], faces[i + 1]["conf"]
            problems.append(f"faces {i} and {i + 1} not in descending conf order ({a} < {b})")
    return problems


def golden_problems(golden: Sequence[dict], actual: Any, threshold: float = 0.3) -> list[str]:
    """Problems of `actual` against a golden answer: its form, then the golden pairing rule."""
    problems = convention_problems(actual)
    if problems:
        return problems
    return compare_faces(golden, actual, threshold)


def matches_golden(golden: Sequence[dict], actual: Any, threshold: float = 0.3) -> bool:
    """True when `actual` has the golden form (key and score order) and pairs with `golden`."""
    return not golden_problems(golden, actual, threshold)
