"""Float or uint8 model input on the CPU: letterbox + ONNX Runtime per batch, side by side.

    yolov5face bench input-layout [--rounds 30] [--batch 4]

The uint8-input graph (yolov5face/convert/uint8_input.py) moves the float conversion from the
host into the model. On a GPU that saves bytes over PCIe; on the CPU both run on the same core,
so this measures whether it is worth using there too.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def measure(rounds: int = 30, batch_size: int = 4) -> dict:
    """Median ms per batch of each input variant, and each one's ratio to float/plain."""
    from yolov5face.convert.onnx import cached_onnx
    from yolov5face.convert.uint8_input import write_uint8_model
    from yolov5face.paths import default_weights, shared_dir
    from yolov5face.pipeline.decode import decode_image
    from yolov5face.pipeline.detector import Detector

    shared = shared_dir() or Path("../shared")
    photos = sorted(p for p in (shared / "images").glob("*.jpg") if p.stat().st_size > 100)
    images = [decode_image(p.read_bytes()) for p in photos]
    batch = [images[k % len(images)] for k in range(batch_size)]
    plain = cached_onnx(default_weights(), 320)
    with tempfile.TemporaryDirectory() as tmp:
        u8 = write_uint8_model(plain, Path(tmp) / "u8.onnx")
        detectors = {
            "float32 input (plain)": Detector(plain, backend="onnxruntime", band=False),
            "uint8 input (plain)": Detector(u8, backend="onnxruntime", band=False),
            "float32 input (banded, served default)": Detector(plain, backend="onnxruntime"),
        }
        times: dict[str, list[float]] = {name: [] for name in detectors}
        for _ in range(rounds):  # interleaved, so drift hits every variant alike
            for name, detector in detectors.items():
                start = time.perf_counter()
                detector.detect_images(batch)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["float32 input (plain)"])
    return {
        "batch": batch_size,
        "rounds": rounds,
        "median_ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
        "ratio_to_float_plain": {
            n: round(statistics.median(t) / base, 3) for n, t in times.items()
        },
    }
