#!/usr/bin/env python3
"""`make gpu-check`: what this machine's GPU path does, as one JSON summary.

Runs from a plain copy of the working tree (PYTHONPATH=.) on a machine that has torch, ONNX
Runtime, onnx, numpy and OpenCV, with no network and no TorchServe. Each part runs when the
machine can run it and is otherwise recorded as skipped with the reason:

  stack            numpy, ONNX Runtime, torch, CUDA, TensorRT, pycuda, torch2trt, GPU and capability
  torch_cuda       torch CUDA fp16, eager and CUDA graphs, against ONNX Runtime fp32 on the CPU
                   (raw outputs and faces, batches 1, 2, 7, 8, 32, 33), with times
  tensorrt         engine build cold and warm, parity for the same batches, a call from a
                   second thread
  two_processes    two pre-start steps on an empty cache: exactly one build
  torch2trt        the torch2trt route: one dynamic-batch engine, parity
  fp16_contract    the fp16 contract (yolov5face/lab/fp16_study.py) for torch CUDA and TensorRT:
                   largest box/score/landmark shifts from fp32 and WIDER AP
  pytest_gpu       tests/test_gpu.py

Examples:
  make gpu-check                                   # writes gpu-check.json, prints it
  PYTHONPATH=. python3 scripts/gpu_check.py --out /tmp/gpu.json --budget-s 420
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
logger = logging.getLogger("gpu-check")

BATCHES = (1, 2, 7, 8, 32, 33)
ENGINE_BATCH = 8  # the GPU compose file's batch size: batches above it run in chunks


class Skip(Exception):
    """This part cannot run on this machine; the message says why."""


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        return f"import failed: {exc}"


def _cuda_torch():
    if importlib.util.find_spec("torch") is None:
        raise Skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    return torch


def _tensorrt():
    _cuda_torch()
    for module in ("tensorrt", "pycuda"):
        if importlib.util.find_spec(module) is None:
            raise Skip(f"{module} is not installed (it comes with NVIDIA's TensorRT image)")


class Check:
    """Shared inputs: weights, images, the ONNX model and its fp32 CPU reference."""

    def __init__(self, weights: Path, shared: Path, work: Path):
        self.weights, self.shared, self.work = weights, shared, work
        self._reference: dict[int, np.ndarray] | None = None
        self._onnx: Path | None = None

    def blobs(self, n: int) -> list[bytes]:
        photos = sorted(p for p in (self.shared / "images").glob("*.jpg") if p.stat().st_size > 100)
        return [photos[k % len(photos)].read_bytes() for k in range(n)]

    def onnx(self) -> Path:
        if self._onnx is None:
            from yolov5face.convert.onnx import export_onnx

            self._onnx = self.work / "fd1.onnx"
            export_onnx(self.weights, self._onnx, band=False)
        return self._onnx

    def reference_detector(self):
        from yolov5face.pipeline.detector import Detector

        return Detector(self.onnx(), backend="onnxruntime", band=False)

    def compare(self, detector, label: str) -> dict:
        """Raw and face differences of `detector` against ONNX Runtime fp32, per batch size."""
        from yolov5face.pipeline.decode import decode_image
        from yolov5face.pipeline.letterbox import letterbox_batch
        from yolov5face.tools.compare import compare_faces

        reference = self.reference_detector()
        rows = {}
        for n in BATCHES:
            blobs = self.blobs(n)
            expected = reference.detect(blobs)
            start = time.perf_counter()
            got = detector.detect(blobs)
            seconds = time.perf_counter() - start
            problems = [p for e, g in zip(expected, got) for p in compare_faces(e, g)]
            images = [decode_image(b) for b in blobs]
            floats, _ = letterbox_batch(images, 320)
            raw_ref = reference.backend.infer(floats)
            raw = _raw(detector, images)
            rows[str(n)] = {
                "max_abs_raw_diff": float(np.abs(raw - raw_ref).max()),
                "face_problems": problems[:5],
                "faces_match": not problems,
                "detect_ms": round(seconds * 1e3, 2),
            }
        ok = all(r["faces_match"] for r in rows.values())
        logger.info("%s: faces match ONNX Runtime fp32 for every batch: %s", label, ok)
        return {"status": "ok" if ok else "failed", "batches": rows}


def _raw(detector, images) -> np.ndarray:
    from yolov5face.backends.base import UINT8_LAYOUT, input_layout
    from yolov5face.pipeline.letterbox import letterbox_batch, letterbox_batch_uint8

    if input_layout(detector.backend) == UINT8_LAYOUT:
        batch, _ = letterbox_batch_uint8(images, 320)
    else:
        batch, _ = letterbox_batch(images, 320)
    return detector.backend.infer(batch)


def part_stack(check: Check) -> dict:
    from yolov5face.backends.cuda_driver import gpus

    stack = {
        m: _version(m)
        for m in ("numpy", "cv2", "onnx", "onnxruntime", "torch", "tensorrt", "pycuda", "torch2trt")
    }
    if stack["torch"] and not stack["torch"].startswith("import failed"):
        import torch

        stack["torch_cuda"] = torch.version.cuda
        stack["torch_sees_cuda"] = torch.cuda.is_available()
    stack["gpus"] = [vars(g) for g in gpus()]
    stack["python"] = sys.version.split()[0]
    return {"status": "ok", **stack}


def part_torch_cuda(check: Check) -> dict:
    _cuda_torch()
    from yolov5face.backends.torch import TorchBackend
    from yolov5face.pipeline.detector import Detector

    out = {}
    for graphs in (False, True):
        detector = Detector(check.weights, backend="torch", device="cuda")
        detector.backend = TorchBackend(str(check.weights), device="cuda", cuda_graphs=graphs)
        detector.chunk = 64
        out["cuda_graphs" if graphs else "eager"] = check.compare(detector, f"torch fp16 {graphs=}")
    failed = any(v["status"] != "ok" for v in out.values())
    return {"status": "failed" if failed else "ok", "precision": "fp16", **out}


def _prepare(onnx: Path, cache: Path) -> tuple[Path, float, int]:
    from yolov5face.convert.tensorrt import prepare_engine

    start = time.monotonic()
    path, _ = prepare_engine(onnx, ENGINE_BATCH, cache_dir=cache)
    meta = json.loads(path.with_suffix(".json").read_text())
    return path, time.monotonic() - start, int(meta["built_by_pid"] == os.getpid())


def part_tensorrt(check: Check) -> dict:
    _tensorrt()
    from yolov5face.backends.base import ModelInfo  # noqa: F401
    from yolov5face.backends.tensorrt import TensorRTBackend
    from yolov5face.convert.onnx import read_onnx_info
    from yolov5face.pipeline.detector import Detector

    cache = check.work / "engines"
    path, cold, built = _prepare(check.onnx(), cache)
    _, warm, rebuilt = _prepare(check.onnx(), cache)
    detector = Detector(check.onnx(), backend="onnxruntime", band=False)
    detector.backend = TensorRTBackend(path, read_onnx_info(check.onnx()))
    detector.chunk = 64
    detector._uint8 = True
    parity = check.compare(detector, "tensorrt fp16")
    errors: list[str] = []

    def other_thread():
        try:
            detector.detect(check.blobs(3))
        except Exception as exc:  # the point of the check: report, do not crash
            errors.append(repr(exc))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    ok = parity["status"] == "ok" and not errors and built == 1 and rebuilt == 0
    return {
        "status": "ok" if ok else "failed",
        "engine": path.name,
        "build_cold_s": round(cold, 1),
        "build_warm_s": round(warm, 2),
        "second_thread_errors": errors,
        **parity,
    }


def part_two_processes(check: Check) -> dict:
    _tensorrt()
    cache = check.work / "engines-race"
    code = (
        "import json, os, sys\n"
        "from yolov5face.convert.tensorrt import prepare_engine\n"
        f"p, _ = prepare_engine(sys.argv[1], {ENGINE_BATCH}, cache_dir=sys.argv[2])\n"
        "m = json.loads(p.with_suffix('.json').read_text())\n"
        "print(int(m['built_by_pid'] == os.getpid()))\n"
    )
    cmd = [sys.executable, "-c", code, str(check.onnx()), str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    builds = [int(p.communicate(timeout=600)[0].strip() or -1) for p in procs]
    ok = sorted(builds) == [0, 1] and len(list(cache.glob("*.engine"))) == 1
    return {"status": "ok" if ok else "failed", "builds_per_process": builds}


def part_torch2trt(check: Check) -> dict:
    _tensorrt()
    if importlib.util.find_spec("torch2trt") is None:
        raise Skip("torch2trt is not installed")
    from yolov5face.backends.tensorrt import TensorRTBackend
    from yolov5face.convert.onnx import read_onnx_info
    from yolov5face.convert.tensorrt import prepare_engine
    from yolov5face.pipeline.detector import Detector

    start = time.monotonic()
    path, _ = prepare_engine(
        check.weights, ENGINE_BATCH, method="torch2trt", cache_dir=check.work / "t2t"
    )
    detector = Detector(check.onnx(), backend="onnxruntime", band=False)
    detector.backend = TensorRTBackend(path, read_onnx_info(check.onnx()))
    detector.chunk = 64
    detector._uint8 = False
    return {"build_s": round(time.monotonic() - start, 1), **check.compare(detector, "torch2trt")}


def part_fp16_contract(check: Check) -> dict:
    torch = _cuda_torch()  # noqa: F841
    from yolov5face.lab.fp16_study import breaches, contract, half_detector, photos
    from yolov5face.pipeline.detector import Detector

    wider = check.shared / "widerface"
    if not (wider / "gt.json").is_file():
        raise Skip(f"no WIDER subset at {wider}")
    reference, paths = check.reference_detector(), photos(check.shared)
    candidates = {"torch_cuda_fp16": lambda: half_detector(check.weights, "cuda")}
    if importlib.util.find_spec("tensorrt") is not None:
        candidates["tensorrt_fp16"] = lambda: Detector(check.onnx(), backend="tensorrt")
    out, failed = {}, False
    for name, make in candidates.items():
        report = contract(make(), reference, paths, wider)
        report["breaches"] = breaches(report)
        failed = failed or bool(report["breaches"])
        out[name] = report
    return {"status": "failed" if failed else "ok", **out}


def part_pytest_gpu(check: Check) -> dict:
    _cuda_torch()
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return {
        "status": "ok" if proc.returncode == 0 else "failed",
        "rc": proc.returncode,
        "tail": proc.stdout[-1500:],
    }


PARTS = {
    "stack": part_stack,
    "torch_cuda": part_torch_cuda,
    "tensorrt": part_tensorrt,
    "two_processes": part_two_processes,
    "torch2trt": part_torch2trt,
    "fp16_contract": part_fp16_contract,
    "pytest_gpu": part_pytest_gpu,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu-check.json", help="summary file (also printed)")
    parser.add_argument("--weights", help="checkpoint (default: $YOLOV5FACE_WEIGHTS or ../shared)")
    parser.add_argument(
        "--shared", help="images, goldens, WIDER (default: $YOLOV5FACE_DATA or ../shared)"
    )
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip parts started later")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    from yolov5face.paths import default_weights, shared_dir

    weights = Path(args.weights) if args.weights else Path(default_weights())
    shared = Path(args.shared) if args.shared else Path(shared_dir() or "../shared")
    start = time.monotonic()
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(weights, shared, Path(tmp))
        for name in args.parts.split(","):
            if time.monotonic() - start > args.budget_s:
                summary["parts"][name] = {"status": "skipped", "reason": "time budget spent"}
                continue
            t0 = time.monotonic()
            try:
                result = PARTS[name](check)
            except Skip as exc:
                result = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:  # recorded, and the other parts still run
                logger.exception("part %s failed", name)
                result = {"status": "failed", "error": repr(exc)}
            result["seconds"] = round(time.monotonic() - t0, 1)
            summary["parts"][name] = result
            logger.info("%s: %s", name, result["status"])
    summary["seconds"] = round(time.monotonic() - start, 1)
    text = json.dumps(summary, indent=1)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 1 if any(p["status"] == "failed" for p in summary["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
