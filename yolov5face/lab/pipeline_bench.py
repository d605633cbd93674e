"""`bench pipeline`: JPEG bytes -> JSON, ours (Detector) against the reference design."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.convert.onnx import cached_onnx
from yolov5face.lab.common import (
    Case,
    md_table,
    resolve_image,
    text_table,
    timed_rounds,
    torch_threads_keeper,
)

DEFAULT_IMAGES = ("zidane.jpg", "test.jpg")
PIPELINE_STAGES = ("decode", "preprocess", "infer", "postprocess", "json")


def _per_image_row(
    image: str, threads: int, pipeline: str, batch: int, durations: list[float], timings: dict
) -> dict:
    images = batch * len(durations)
    total = float(np.sum(durations))
    stages = {s: round(timings.get(s, 0.0) * 1e3 / images, 3) for s in PIPELINE_STAGES}
    return {
        "image": image,
        "threads": threads,
        "pipeline": pipeline,
        "batch": batch,
        "images_per_s": round(images / total, 2),
        "ms_per_image": round(total * 1e3 / images, 3),
        "stages_ms": stages,
        "calls": len(durations),
    }


def bench_postprocess(
    detector: Any, reference: Any, blob: bytes, seconds: float = 1.0, rounds: int = 5
) -> dict:
    """Post-processing + JSON of one image: ours (numpy) vs the reference (torch loops), in ms."""
    import cv2

    from yolov5face.pipeline.heads import decode_predictions, to_json_faces
    from yolov5face.pipeline.letterbox import letterbox_batch

    image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    batch, geometry = letterbox_batch([image], detector.img_size)
    raw = detector.backend.infer(batch)[0]
    info = detector.info
    canvas, ref_geometry = reference.letterbox(image)
    ref_raw = reference.forward(reference.to_tensor(canvas))[0]

    def ours() -> str:
        faces = decode_predictions(
            raw, detector.img_size, info.strides, info.anchors, detector.conf, detector.iou
        )
        return json.dumps(to_json_faces(faces, geometry[0]))

    def baseline() -> str:
        return json.dumps(reference.postprocess(ref_raw, ref_geometry))

    cases = [Case("ours", ours), Case("baseline", baseline)]
    times = timed_rounds(cases, seconds, rounds, warmup=3, desc="postprocess")
    ours_ms = float(np.median(times["ours"])) * 1e3
    base_ms = float(np.median(times["baseline"])) * 1e3
    return {
        "faces_ours": len(json.loads(ours())),
        "faces_baseline": len(json.loads(baseline())),
        "ours_ms": round(ours_ms, 3),
        "baseline_ms": round(base_ms, 3),
        "speedup": round(base_ms / ours_ms, 2),
    }


def _json_each(results: list, timings: dict) -> None:
    """json.dumps every image's answer, adding the time to timings["json"]."""
    t0 = time.perf_counter()
    for faces in results:
        json.dumps(faces)
    timings["json"] = timings.get("json", 0.0) + time.perf_counter() - t0


def _pipeline_cases(
    detector: Any,
    reference: Any,
    blob: bytes,
    batches: Sequence[int],
    reference_setup: Callable[[], None],
    plain: Any = None,
) -> list[Case]:
    """Ours at each batch size (B copies per call), the same with the plain model when `plain`
    is given (ours runs the banded one), and the baseline (one image per call)."""

    def case(name: str, detect: Callable[[dict], list], setup: Any = None) -> Case:
        timings: dict = {}
        return Case(name, lambda: _json_each(detect(timings), timings), setup, timings)

    cases = [
        case(f"ours b{b}", lambda tm, blobs=[blob] * b: detector.detect(blobs, tm)) for b in batches
    ]
    if plain is not None:
        cases += [
            case(f"plain b{b}", lambda tm, blobs=[blob] * b: plain.detect(blobs, tm))
            for b in batches
        ]
    cases.append(case("baseline", lambda tm: [reference.detect_one(blob, tm)], reference_setup))
    return cases


def bench_pipeline(
    weights: Path,
    images: Sequence[str] = DEFAULT_IMAGES,
    batches: Sequence[int] = (1, 8),
    threads: Sequence[int] = (1,),
    img_size: int = 320,
    seconds: float = 3.0,
    backend: str = "onnxruntime",
    rounds: int = 5,
    warmup: int = 2,
    postprocess_seconds: float = 1.0,
) -> dict:
    """JPEG bytes -> JSON images/s and stages: ours (Detector) vs the reference design."""
    import torch

    from yolov5face.lab.reference_pipeline import ReferencePipeline
    from yolov5face.pipeline.detector import Detector

    model = cached_onnx(weights, img_size) if backend == "onnxruntime" else weights
    rows, comparisons, post, band = [], [], {}, []
    restore = torch_threads_keeper()
    for t in threads:
        detector = Detector(model, backend=backend, img_size=img_size, threads=t)
        reference = ReferencePipeline(weights, img_size=img_size, threads=t)
        plain = None
        if getattr(detector.backend, "band", None) is not None:
            plain = Detector(model, backend=backend, img_size=img_size, threads=t, band=False)

        def torch_threads(t: int = t) -> None:
            torch.set_num_threads(t)

        for name in images:
            path = resolve_image(name)
            blob = path.read_bytes()
            cases = _pipeline_cases(detector, reference, blob, batches, torch_threads, plain)
            times = timed_rounds(cases, seconds, rounds, warmup, desc=f"pipeline {path.name} t{t}")
            for b in batches if plain is not None else ():
                ours_ms, plain_ms = (
                    float(np.sum(times[f"{k} b{b}"])) * 1e3 / (b * len(times[f"{k} b{b}"]))
                    for k in ("ours", "plain")
                )
                band.append(
                    {
                        "image": path.name,
                        "threads": t,
                        "batch": b,
                        "banded_ms": round(ours_ms, 3),
                        "plain_ms": round(plain_ms, 3),
                        "banded_over_plain": round(ours_ms / plain_ms, 3),
                    }
                )
            image_rows = []
            for case in cases:
                if case.name.startswith("plain"):
                    continue  # only in the band table
                b = int(case.name.split(" b")[1]) if case.name.startswith("ours") else 1
                pipeline = "ours" if case.name.startswith("ours") else "baseline"
                image_rows.append(
                    _per_image_row(path.name, t, pipeline, b, times[case.name], case.timings or {})
                )
            rows += image_rows
            base = image_rows[-1]
            for row in image_rows[:-1]:
                decode_model = row["stages_ms"]["decode"] + row["stages_ms"]["infer"]
                comparisons.append(
                    {
                        "image": path.name,
                        "threads": t,
                        "batch": row["batch"],
                        "ours_over_baseline": round(row["images_per_s"] / base["images_per_s"], 3),
                        "ours_over_decode_plus_model": round(row["ms_per_image"] / decode_model, 3),
                    }
                )
            if t == threads[0]:
                post[path.name] = bench_postprocess(
                    detector, reference, blob, postprocess_seconds, rounds
                )
        del detector, reference, plain
    restore()
    return {
        "backend": backend,
        "img_size": img_size,
        "seconds_per_case": seconds,
        "rows": rows,
        "comparisons": comparisons,
        "postprocess": post,
        "band": band,
    }


def pipeline_tables(result: dict, md: bool = False) -> list[str]:
    """Throughput rows with stage breakdown, the ratios and the post-processing micro-bench."""
    table = md_table if md else text_table
    rows = [
        [r["image"], r["threads"], f"{r['pipeline']} b{r['batch']}", r["images_per_s"]]
        + [r["ms_per_image"]]
        + [r["stages_ms"][s] for s in PIPELINE_STAGES]
        for r in result["rows"]
    ]
    header = ["image", "threads", "pipeline", "images/s", "ms/image"]
    header += [f"{s} ms" for s in PIPELINE_STAGES]
    out = [table(header, rows)]
    comp = [
        [c["image"], c["threads"], f"ours b{c['batch']}"]
        + [f"{c['ours_over_baseline']:.2f}x", f"{c['ours_over_decode_plus_model']:.3f}x"]
        for c in result["comparisons"]
    ]
    out.append(
        table(["image", "threads", "pipeline", "ours / baseline", "ours / (decode+model)"], comp)
    )
    post = [
        [name, p["faces_ours"], p["ours_ms"], p["baseline_ms"], f"{p['speedup']:.1f}x"]
        for name, p in result["postprocess"].items()
    ]
    if post:
        out.append(table(["image", "faces", "ours ms", "baseline ms", "speed-up"], post))
    band = [
        [b["image"], b["threads"], b["batch"], b["banded_ms"], b["plain_ms"]]
        + [f"{b['banded_over_plain']:.3f}"]
        for b in result.get("band", [])
    ]
    if band:
        header = ["image", "threads", "batch", "banded ms", "plain model ms", "banded / plain"]
        out.append(table(header, band))
    return out
