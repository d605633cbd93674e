"""How far fp16 moves the answers from fp32: boxes, scores, landmarks and WIDER AP.

    yolov5face bench fp16 [--device cpu|cuda] [--limit N] [--no-ap]

The reference is the served fp32 path (ONNX Runtime on the CPU, the goldens' arithmetic). The
fp16 side is the PyTorch module in half precision: with `--device cuda` the real torch CUDA fp16
path; on the CPU, torch's CPU half kernels, an emulation of fp16 storage and arithmetic (a
TensorRT engine picks its own kernels and fusions, so `make gpu-check` measures it there).
`scripts/gpu_check.py` runs `contract()` on every fp16 path the GPU machine has.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The fp16 contract: every image's answer meets the golden rule against the fp32 answer
# (tools/compare.py: boxes 0.002, conf and landmarks 0.005), and WIDER AP moves by at most this.
AP_TOLERANCE = 0.005
# WIDER AP is scored at the evaluation threshold (`yolov5face eval widerface`, README), not the
# serving one.
WIDER_CONF = 0.02


def photos(shared: Path, limit: int | None = None) -> list[Path]:
    """The shared photos, then the WIDER subset's images (the bad-input file left out)."""
    paths = sorted((shared / "images").glob("*.jpg")) + sorted(
        (shared / "widerface" / "images").rglob("*.jpg")
    )
    paths = [p for p in paths if p.stat().st_size > 100]
    return paths[:limit] if limit else paths


def half_detector(weights: Path, device: str) -> Any:
    """A Detector running the PyTorch module in fp16 on `device`."""
    from yolov5face.backends.torch import TorchBackend
    from yolov5face.pipeline.detector import Detector

    detector = Detector(weights, backend="torch", device=device)
    detector.backend = TorchBackend(str(weights), device=device, half=True)
    return detector


def contract(detector: Any, reference: Any, paths: list[Path], wider: Path | None) -> dict:
    """Largest shift of each answer value from `reference` over `paths`, the images whose
    answers break the golden rule, and WIDER AP of both (when `wider` is given)."""
    from yolov5face.tools.compare import FACE_KEYS, compare_faces, face_shifts
    from yolov5face.tools.evaluate import progress, run_widerface

    worst = dict.fromkeys(FACE_KEYS, 0.0)
    counts = {"pairs": 0, "missing": 0, "extra": 0}
    broken: dict[str, list[str]] = {}
    for path in progress(paths, total=len(paths), desc="fp16"):
        blob = path.read_bytes()
        (expected,), (actual,) = reference.detect([blob]), detector.detect([blob])
        shifts = face_shifts(expected, actual)
        for key in FACE_KEYS:
            worst[key] = max(worst[key], round(shifts[key], 6))
        for key in counts:
            counts[key] += int(shifts[key])
        problems = compare_faces(expected, actual)
        if problems:
            broken[path.name] = problems
    report: dict[str, Any] = {
        "images": len(paths),
        **counts,
        "max_shift": worst,
        "images_off_golden_rule": broken,
    }
    if wider is not None:
        base = run_widerface(_scoring(reference), wider / "images", wider / "gt.json")
        ap = run_widerface(_scoring(detector), wider / "images", wider / "gt.json")
        report["ap_fp32"] = {k: round(v, 5) for k, v in base.items()}
        report["ap"] = {k: round(v, 5) for k, v in ap.items()}
        report["ap_shift"] = {k: round(ap[k] - base[k], 5) + 0.0 for k in base}  # no -0.0
    return report


def _scoring(detector: Any) -> Any:
    """The same detector (backend shared) at the WIDER evaluation threshold."""
    scoring = copy.copy(detector)
    scoring.conf = WIDER_CONF
    return scoring


def breaches(report: dict) -> list[str]:
    """Where a `contract()` report breaks the fp16 contract (empty: it holds)."""
    off = report["images_off_golden_rule"]
    found = [f"{name}: {problems[0]}" for name, problems in off.items()]
    found += [
        f"WIDER {subset} AP moved by {shift:+.4f} (> {AP_TOLERANCE})"
        for subset, shift in report.get("ap_shift", {}).items()
        if abs(shift) > AP_TOLERANCE
    ]
    return found


def measure(
    device: str = "cpu", limit: int | None = None, ap: bool = True, weights: Path | None = None
) -> dict:
    """`contract()` of torch fp16 on `device` against ONNX Runtime fp32 on the CPU."""
    from yolov5face.convert.onnx import cached_onnx
    from yolov5face.paths import default_weights, shared_dir
    from yolov5face.pipeline.detector import Detector

    weights = weights or default_weights()
    shared = shared_dir() or Path("../shared")
    reference = Detector(cached_onnx(weights, 320), backend="onnxruntime", band=False)
    detector = half_detector(weights, device)
    wider = shared / "widerface" if ap and (shared / "widerface" / "gt.json").is_file() else None
    report = contract(detector, reference, photos(shared, limit), wider)
    return {
        "fp16": detector.backend.describe(),
        "fp32": reference.backend.describe(),
        **report,
        "breaches": breaches(report),
    }


def fp16_section(result: dict) -> list[str]:
    """The benchmark report's section on the fp16 contract."""
    from yolov5face.tools.compare import BOX_TOL, CONF_TOL, LANDMARK_TOL

    fp16 = result["fp16"]
    lines = [
        "## 8. fp16 against fp32",
        "",
        f"The PyTorch module in fp16 on `{fp16['device']}` against the served fp32 path (ONNX "
        f"Runtime, CPU) on {result['images']} images (the shared photos and the WIDER subset): "
        f"{result['pairs']} faces paired, {result['missing']} missing and {result['extra']} "
        "extra outside the threshold band. The contract (`yolov5face/lab/fp16_study.py`): every "
        "answer keeps the golden rule against fp32, and WIDER AP moves by at most "
        f"{AP_TOLERANCE}. On the CPU, torch's half kernels emulate fp16 storage and arithmetic; "
        "`make gpu-check` measures torch CUDA and TensorRT fp16 the same way on a GPU.",
        "",
        "| value | largest shift from fp32 | tolerance |",
        "|---|---|---|",
    ]
    tolerance = {"xywh_ratio": BOX_TOL, "conf": CONF_TOL, "landmarks_ratio": LANDMARK_TOL}
    lines += [f"| {k} | {v} | {tolerance[k]} |" for k, v in result["max_shift"].items()]
    if "ap" in result:
        lines += ["", f"WIDER AP at conf {WIDER_CONF}, the evaluation threshold:", ""]
        lines += ["| WIDER subset | AP fp32 | AP fp16 | shift |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {result['ap_fp32'][k]} | {result['ap'][k]} | {result['ap_shift'][k]:+} |"
            for k in result["ap"]
        ]
    verdict = "; ".join(result["breaches"]) or "none: the contract holds"
    return [*lines, "", f"Breaches: {verdict}.", ""]
