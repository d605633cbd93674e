"""The golden comparison rule: pair faces by IoU, then check tolerances; the answer form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolov5face.pipeline.nms import box_iou

BOX_TOL, CONF_TOL, LANDMARK_TOL = 0.002, 0.005, 0.005
# A difference of exactly a tolerance (two 3-decimal steps: 0.125 - 0.123) must pass, and in
# float64 it comes out a few ulps above it (0.0020000000000000018).
_SLACK = 1e-9
FACE_KEYS = ("xywh_ratio", "conf", "landmarks_ratio")


def _corners(faces: Sequence[dict]) -> np.ndarray:
    xywh = np.asarray([f["xywh_ratio"] for f in faces], np.float64).reshape(-1, 4)
    return np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), axis=1)


def pair_faces(expected: Sequence[dict], actual: Sequence[dict]) -> list[tuple[int, int]]:
    """(i, j) pairs: each expected face with the unpaired actual face of highest IoU (>= 0.5)."""
    if not expected or not actual:
        return []
    iou = box_iou(_corners(expected), _corners(actual))
    used: set[int] = set()
    pairs = []
    for i in range(len(expected)):
        candidates = [k for k in np.argsort(-iou[i]) if k not in used and iou[i, k] >= 0.5]
        if candidates:
            used.add(int(candidates[0]))
            pairs.append((i, int(candidates[0])))
    return pairs


def _unpaired(faces: Sequence[dict], paired: set[int], threshold: float) -> list[int]:
    """Faces left unpaired whose conf is not within CONF_TOL of the threshold."""
    return [
        k
        for k, face in enumerate(faces)
        if k not in paired and abs(face["conf"] - threshold) > CONF_TOL + _SLACK
    ]


def compare_faces(
    expected: Sequence[dict], actual: Sequence[dict], threshold: float = 0.3
) -> list[str]:
    """Problems found comparing two face lists (empty list = they match).

    Faces are paired by `pair_faces`; paired values must agree within the tolerances; an
    unpaired face on either side is a problem unless its conf is within CONF_TOL of the
    threshold (its score may flip with float noise).
    """
    pairs = pair_faces(expected, actual)
    problems = [
        f"missing face {i} (conf {expected[i]['conf']:.3f})"
        for i in _unpaired(expected, {i for i, _ in pairs}, threshold)
    ]
    for i, j in pairs:
        exp, act = expected[i], actual[j]
        for key, tol in (("xywh_ratio", BOX_TOL), ("landmarks_ratio", LANDMARK_TOL)):
            diff = np.abs(np.subtract(exp[key], act[key])).max()
            if diff > tol + _SLACK:
                problems.append(f"face {i}: {key} differs by {diff:.4f} (> {tol})")
        if abs(exp["conf"] - act["conf"]) > CONF_TOL + _SLACK:
            problems.append(f"face {i}: conf {exp['conf']:.4f} vs {act['conf']:.4f}")
    problems += [
        f"extra face {j} (conf {actual[j]['conf']:.3f})"
        for j in _unpaired(actual, {j for _, j in pairs}, threshold)
    ]
    return problems


def face_shifts(
    expected: Sequence[dict], actual: Sequence[dict], threshold: float = 0.3
) -> dict[str, float | int]:
    """How far `actual` moved from `expected`: the largest difference of each value over the
    paired faces, and the faces left unpaired (outside the threshold band) on either side."""
    pairs = pair_faces(expected, actual)
    shifts: dict[str, float | int] = {"pairs": len(pairs)}
    for key in FACE_KEYS:
        diffs = [np.abs(np.subtract(expected[i][key], actual[j][key])).max() for i, j in pairs]
        shifts[key] = float(max(diffs, default=0.0))
    shifts["missing"] = len(_unpaired(expected, {i for i, _ in pairs}, threshold))
    shifts["extra"] = len(_unpaired(actual, {j for _, j in pairs}, threshold))
    return shifts


def faces_match(expected: Sequence[dict], actual: Sequence[dict], threshold: float = 0.3) -> bool:
    """True when the two face lists agree by the golden comparison rule."""
    return not compare_faces(expected, actual, threshold)


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
