"""JPEG decode study: decoders and DCT-scaled decoding, on speed and on accuracy."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolov5face.pipeline.decode import decode_image, image_size, reduction_factor

logger = logging.getLogger(__name__)

SPEED_IMAGES = ("zidane.jpg", "test.jpg", "bus.jpg", "mask.jpg")


def decoders(min_side: int = 320) -> dict[str, Callable[[bytes], np.ndarray]]:
    """The decoders compared: ours, plain OpenCV, and DCT-scaled decoding through each library."""
    import cv2

    out: dict[str, Callable[[bytes], np.ndarray]] = {
        "ours": lambda data: decode_image(data),
        "opencv": lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
        "opencv-scaled": lambda data: decode_image(data, min_side=min_side),
    }
    try:
        import simplejpeg
    except ImportError:
        logger.warning("simplejpeg not installed: only OpenCV is compared")
        return out

    def scaled(data: bytes) -> np.ndarray:
        _, w, h = image_size(data)
        f = reduction_factor(w, h, min_side)
        return simplejpeg.decode_jpeg(
            data, colorspace="BGR", min_width=-(-w // f), min_height=-(-h // f)
        )

    out["simplejpeg-scaled"] = scaled
    return out


def _time_ms(fn: Callable[[], object], seconds: float) -> float:
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_study(detector, shared: Path, seconds: float = 1.0, widerface: bool = True) -> dict:
    """Speed per decoder and image; golden parity and WIDER AP (320, conf 0.02) per decoder.

    Sets the serving processes' allocator thresholds for the whole process first (without them
    every full-size decode page-faults its output buffer in again, which would dominate the
    timings); `bench report` runs this section after its in-process pipeline comparison.
    """
    from yolov5face.serving.malloc_tuning import keep_freed_buffers
    from yolov5face.tools.compare import compare_faces
    from yolov5face.tools.widerface import evaluate, load_ground_truth

    keep_freed_buffers()

    images = shared / "images"
    result: dict = {"speed_ms": {}, "golden_ok": {}, "widerface": {}}
    methods = decoders(detector.img_size)
    rounds = 5  # decoders take turns, so drifting background load hits them alike
    for name in SPEED_IMAGES:
        data = (images / name).read_bytes()
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(rounds):
            for m, f in methods.items():
                times[m].append(_time_ms(lambda f=f, d=data: f(d), seconds / rounds))
        result["speed_ms"][name] = {m: float(np.median(v)) for m, v in times.items()}
    goldens = sorted((shared / "golden" / "seed320").glob("*.json"))
    for method, decode in methods.items():
        ok = 0
        for path in goldens:
            data = (images / path.stem).read_bytes()
            det = detector.detect_images([decode(data)], sizes=[image_size(data)[1:]])[0]
            ok += not compare_faces(json.loads(path.read_text()), det.to_json())
        result["golden_ok"][method] = f"{ok}/{len(goldens)}"
    if widerface:
        from yolov5face.tools.evaluate import pixel_detections

        truth = load_ground_truth(shared / "widerface" / "gt.json")
        conf = detector.conf
        detector.conf = 0.02
        try:
            for method, decode in methods.items():

                def detect(blobs: list[bytes], decode=decode) -> list:
                    sizes = [image_size(b)[1:] for b in blobs]
                    return detector.detect_images([decode(b) for b in blobs], sizes=sizes)

                dets = pixel_detections(detect, shared / "widerface" / "images", sorted(truth))
                ap = evaluate(dets, truth)
                result["widerface"][method] = {k: round(v * 100, 2) for k, v in ap.items()}
        finally:
            detector.conf = conf
    return result


def to_markdown(result: dict) -> str:
    """Tables of the study for docs/benchmarks.md."""
    methods = list(next(iter(result["speed_ms"].values())))
    lines = ["| image | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, row in result["speed_ms"].items():
        base = row["opencv"]
        cells = [f"{row[m]:.1f} ms ({base / row[m]:.2f}x)" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| decoder | golden parity | WIDER easy | medium | hard |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        ap = result["widerface"].get(m, {})
        lines.append(
            f"| {m} | {result['golden_ok'][m]} | {ap.get('easy', '-')} | "
            f"{ap.get('medium', '-')} | {ap.get('hard', '-')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from yolov5face.paths import shared_dir
    from yolov5face.pipeline.detector import Detector

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    study = run_study(Detector(backend="onnxruntime", threads=1), shared_dir())
    sys.stderr.write(to_markdown(study) + "\n")
    sys.stdout.write(json.dumps(study) + "\n")
