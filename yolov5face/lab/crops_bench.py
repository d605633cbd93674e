"""What per-request options cost: CPU time per request with and without aligned crops.

    yolov5face bench crops [--rounds 40]

In process, one request at a time (the handler's work without TorchServe), on zidane.jpg (2
faces) and test.jpg (67 faces); the variants interleave round by round so drift hits them
alike. CPU time of this process (time.process_time) per request; JSON on stdout.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

VARIANTS = {
    "default": {},
    "pre-options path": None,  # detect_raw + to_json_faces: what `detect` did before options
    "max_faces=5": {"max_faces": "5"},
    "crops=112": {"crops": "112"},
    "crops=112&max_faces=5": {"crops": "112", "max_faces": "5"},
}


def measure(rounds: int = 40) -> dict:
    """CPU ms per request for each variant on zidane.jpg and test.jpg, interleaved rounds."""
    from yolov5face.paths import shared_dir
    from yolov5face.pipeline.detector import Detector
    from yolov5face.pipeline.heads import to_json_faces
    from yolov5face.pipeline.options import parse_options

    shared = shared_dir() or Path("../shared")
    detector = Detector(threads=1)
    detector.warmup()

    def before(blob: bytes) -> list:
        return [to_json_faces(d.faces, d.geometry) for d in detector.detect_raw([blob])]

    report: dict = {"rounds": rounds, "images": {}}
    for name in ("zidane.jpg", "test.jpg"):
        blob = (shared / "images" / name).read_bytes()
        options = {v: parse_options(p) for v, p in VARIANTS.items() if p is not None}
        faces = {v: len(detector.detect([blob], options=o)[0]) for v, o in options.items()}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                start = time.process_time()
                if variant in options:
                    detector.detect([blob], options=options[variant])
                else:
                    before(blob)
                cpu[variant].append(time.process_time() - start)
        base = statistics.median(cpu["default"])
        crop_extra = statistics.median(cpu["crops=112"]) - base
        report["images"][name] = {
            "faces": faces,
            "cpu_ms": {v: round(statistics.median(t) * 1e3, 2) for v, t in cpu.items()},
            "ratio_to_default": {v: round(statistics.median(t) / base, 3) for v, t in cpu.items()},
            "crop_ms_per_face": round(crop_extra * 1e3 / max(faces["crops=112"], 1), 3),
        }
    return report


def options_section(result: dict) -> list[str]:
    """The benchmark report's section on per-request options."""
    lines = [
        "## 7. Per-request options and aligned crops",
        "",
        "CPU time of one request in process (what a worker spends: decode, network, options,",
        f"crops and JSON), median of {result['rounds']} interleaved rounds, 1 thread. "
        "`pre-options path` is `detect_raw` + the JSON writer, what `detect` did before options "
        "existed: the default path must cost the same.",
        "",
        "| image | faces | variant | CPU ms | ratio to default |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["images"].items():
        for variant, ms in row["cpu_ms"].items():
            faces = row["faces"].get(variant, row["faces"]["default"])
            ratio = row["ratio_to_default"][variant]
            lines.append(f"| {name} | {faces} | {variant} | {ms} | {ratio} |")
    per_face = ", ".join(f"{n}: {r['crop_ms_per_face']} ms" for n, r in result["images"].items())
    lines += ["", f"A 112x112 crop (warp + JPEG + base64) costs per face: {per_face}.", ""]
    return lines
