"""`yolov5face bench`: model, pipeline, memory and server benchmarks, and docs/benchmarks.md.

Every section measures what it compares in one run (interleaved where it can), because the
machine is shared and noisy: ratios within a run mean something, absolute numbers across runs
do not. The last stdout line of each command is a JSON summary; tables and progress go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from yolov5face.convert.onnx import cached_onnx

if TYPE_CHECKING:
    from yolov5face.serving.launcher import ServerProcess

logger = logging.getLogger(__name__)

MB = 1024.0 * 1024.0
DEFAULT_IMAGES = ("zidane.jpg", "test.jpg")
MEMORY_FILES = ("zidane.jpg", "test.jpg", "bus.jpg", "mask.jpg", "head.jpg", "head_small.jpg")
PIPELINE_STAGES = ("decode", "preprocess", "infer", "postprocess", "json")
DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
REFERENCE_MODEL = "ref"
REFERENCE_HANDLER = Path(__file__).resolve().parent / "reference_handler.py"

TARGETS = {
    "model_ratio": 2.5,  # onnxruntime b8 t2 / torch b8 t2
    "pipeline_ratio": 2.0,  # ours / baseline images/s
    "pipeline_overhead": 1.2,  # ours time per image / (decode + model)
    "postprocess_ms": 1.0,  # ours post-processing + JSON on test.jpg
    "memory_mb": 150.0,  # in-process ONNX Runtime RSS after 1000 images
    "server_ceiling": 0.8,  # server QPS / in-process ceiling of 2 processes
    "server_vs_reference": 3.0,  # ours / reference QPS at the same p99
    "server_memory_ratio": 0.5,  # ours (JVM + workers) / reference RSS after 10,000 requests
    "worker_rss_mb": 350.0,  # each worker's RSS
    "frontend_rss_mb": 400.0,  # the frontend JVM's RSS
}


# --------------------------------------------------------------------------- helpers


def _csv(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _csv_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def resolve_image(name: str | os.PathLike) -> Path:
    """A path as given when it exists, else the file of that name in the shared images."""
    from yolov5face.paths import shared_dir

    path = Path(name)
    if path.is_file():
        return path
    shared = shared_dir()
    if shared is not None and (shared / "images" / path.name).is_file():
        return shared / "images" / path.name
    raise FileNotFoundError(f"image not found: {name} (nor in $YOLOV5FACE_DATA/images)")


def _weights(args: argparse.Namespace) -> Path:
    from yolov5face.paths import default_weights

    return Path(args.weights) if getattr(args, "weights", None) else default_weights()


def _bar(total: int, desc: str) -> Any:
    """A tqdm progress bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False)


def _fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats with `digits` decimals (more below 10, for small timings)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) < 10:
            digits = max(digits, 3 if abs(value) < 0.1 else 2)
        return f"{value:.{digits}f}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned plain-text table."""
    cells = [list(header)] + [[_fmt(v) if not isinstance(v, str) else v for v in r] for r in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in cells)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in r) + " |")
    return "\n".join(lines)


def _emit(summary: dict, tables: Sequence[str]) -> None:
    """CLI output: tables on stderr, the JSON summary as the last stdout line."""
    for table in tables:
        sys.stderr.write(table + "\n\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def _met(value: float | None, target: float, higher: bool = True) -> bool | None:
    """Whether a measured value meets its target (None when not measured)."""
    if value is None:
        return None
    return value >= target if higher else value <= target


# --------------------------------------------------------------------------- timing core


@dataclass
class Case:
    """One thing to time: `fn` runs once per call; `setup` runs before each time slice."""

    name: str
    fn: Callable[[], Any]
    setup: Callable[[], None] | None = None
    timings: dict | None = None  # stage timings the fn accumulates; cleared after warm-up


def timed_rounds(
    cases: Sequence[Case], seconds: float, rounds: int = 5, warmup: int = 2, desc: str = "bench"
) -> dict[str, list[float]]:
    """Per-call durations of each case, timed in interleaved slices so noise hits all alike.

    Each case gets `seconds` in total, split into `rounds` slices taken in turn with the other
    cases (at least one call per slice), after `warmup` untimed calls.
    """
    perf = time.perf_counter
    for case in cases:
        if case.setup is not None:
            case.setup()
        for _ in range(warmup):
            case.fn()
        if case.timings is not None:
            case.timings.clear()
    durations: dict[str, list[float]] = {c.name: [] for c in cases}
    slice_s = seconds / max(rounds, 1)
    bar = _bar(len(cases) * rounds, desc)
    try:
        for _ in range(rounds):
            for case in cases:
                if case.setup is not None:
                    case.setup()
                end = perf() + slice_s
                while True:
                    t0 = perf()
                    case.fn()
                    t1 = perf()
                    durations[case.name].append(t1 - t0)
                    if t1 >= end:
                        break
                bar.update()
    finally:
        bar.close()
    return durations


# --------------------------------------------------------------------------- 1. model


def _torch_threads_keeper() -> Callable[[], None]:
    """A function that puts torch's (process-global) thread count back as it is now."""
    import torch

    threads = torch.get_num_threads()
    return lambda: torch.set_num_threads(threads)


def bench_model(
    weights: Path,
    backends: Sequence[str] = ("torch", "onnxruntime"),
    batches: Sequence[int] = (1, 8),
    threads: Sequence[int] = (1, 2),
    img_size: int = 320,
    seconds: float = 3.0,
    rounds: int = 5,
    warmup: int = 2,
) -> dict:
    """Network-only throughput per backend x batch x threads, with onnxruntime/torch ratios."""
    from yolov5face.backends import create_backend

    restore = _torch_threads_keeper()
    cases, meta = [], {}
    for name in backends:
        for t in threads:
            backend = create_backend(name, weights, img_size=img_size, threads=t)
            setup = None
            if name == "torch":
                import torch

                def setup(t: int = t) -> None:  # process-global: set it per slice
                    torch.set_num_threads(t)

            for b in batches:
                x = np.random.default_rng(0).random((b, 3, img_size, img_size), np.float32)
                key = f"{name} b{b} t{t}"
                cases.append(Case(key, lambda be=backend, x=x: be.infer(x), setup))
                meta[key] = (name, b, t)
    try:
        times = timed_rounds(cases, seconds, rounds, warmup, desc="model")
    finally:
        restore()
    rows = []
    for key, (name, b, t) in meta.items():
        ms = float(np.median(times[key])) * 1e3
        rows.append(
            {
                "backend": name,
                "batch": b,
                "threads": t,
                "ms_per_batch": round(ms, 3),
                "images_per_s": round(b * 1e3 / ms, 2),
                "runs": len(times[key]),
            }
        )
    by_key = {(r["backend"], r["batch"], r["threads"]): r for r in rows}
    ratios = {}
    for b in batches:
        for t in threads:
            ort, tch = by_key.get(("onnxruntime", b, t)), by_key.get(("torch", b, t))
            if ort and tch:
                ratios[f"b{b} t{t}"] = round(ort["images_per_s"] / tch["images_per_s"], 3)
    head_key = "b8 t2" if "b8 t2" in ratios else (list(ratios)[-1] if ratios else None)
    headline = None
    if head_key is not None:
        headline = {
            "name": f"onnxruntime {head_key} / torch {head_key}",
            "ratio": ratios[head_key],
            "target": TARGETS["model_ratio"],
            "met": _met(ratios[head_key], TARGETS["model_ratio"]),
        }
    return {
        "img_size": img_size,
        "seconds_per_row": seconds,
        "rows": rows,
        "ratios_onnxruntime_over_torch": ratios,
        "headline": headline,
    }


def bench_ort_options(
    onnx: Path,
    batch: int = 8,
    threads: int = 2,
    seconds: float = 3.0,
    rounds: int = 5,
    warmup: int = 2,
) -> dict:
    """The shipped ONNX Runtime backend vs one session-option change at a time, interleaved."""
    import onnxruntime as ort

    from yolov5face.backends.onnxruntime import OnnxRuntimeBackend

    def session(
        level: Any = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        spinning: bool = True,
        arena: bool = True,
    ) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = arena
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).random((batch, 3, 320, 320), np.float32)
    shipped = OnnxRuntimeBackend(onnx, threads=threads)
    name_in, name_out = shipped.session.get_inputs()[0].name, shipped.session.get_outputs()[0].name

    def run(sess: Any) -> Callable[[], Any]:
        return lambda: sess.run([name_out], {name_in: x})

    bound = session()  # IOBinding writes into `out`, which lives until this function returns
    out = np.empty(bound.run([name_out], {name_in: x})[0].shape, np.float32)
    binding = bound.io_binding()
    binding.bind_cpu_input(name_in, x)
    binding.bind_output(name_out, "cpu", 0, np.float32, out.shape, out.ctypes.data)
    variants = {
        "shipped backend (ORT_ENABLE_ALL)": lambda: shipped.infer(x),
        "intra-op spinning off": run(session(spinning=False)),
        "ORT_ENABLE_EXTENDED (no NCHWc layout)": run(
            session(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        ),
        "CPU memory arena off": run(session(arena=False)),
        "IOBinding, preallocated output": lambda: bound.run_with_iobinding(binding),
    }
    cases = [Case(name, fn) for name, fn in variants.items()]
    times = timed_rounds(cases, seconds, rounds, warmup, desc="ort options")
    base = float(np.median(times[cases[0].name]))
    rows = []
    for case in cases:
        ms = float(np.median(times[case.name]))
        rows.append(
            {
                "variant": case.name,
                "ms_per_batch": round(ms * 1e3, 3),
                "images_per_s": round(batch / ms, 2),
                "vs_shipped": round(base / ms, 3),
            }
        )
    return {"batch": batch, "threads": threads, "rows": rows}


def ort_options_table(result: dict, md: bool = False) -> str:
    """Session-option variants as a table."""
    table = md_table if md else text_table
    rows = [
        [r["variant"], r["ms_per_batch"], r["images_per_s"], f"{r['vs_shipped']:.2f}x"]
        for r in result["rows"]
    ]
    return table(["variant", "ms/batch", "images/s", "vs shipped"], rows)


def model_tables(result: dict, md: bool = False) -> list[str]:
    """Rows and ratios as text (or markdown) tables."""
    table = md_table if md else text_table
    rows = [
        [r["backend"], r["batch"], r["threads"], r["ms_per_batch"], r["images_per_s"], r["runs"]]
        for r in result["rows"]
    ]
    out = [table(["backend", "batch", "threads", "ms/batch", "images/s", "runs"], rows)]
    ratios = [[k, f"{v:.2f}x"] for k, v in result["ratios_onnxruntime_over_torch"].items()]
    if ratios:
        out.append(table(["batch/threads", "onnxruntime / torch"], ratios))
    if result.get("ort_options"):
        out.append(ort_options_table(result["ort_options"], md))
    return out


# --------------------------------------------------------------------------- 2. pipeline


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
    restore = _torch_threads_keeper()
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


# --------------------------------------------------------------------------- 3. memory


def _peak_rss() -> float:
    """This process's peak RSS in bytes since its exec (VmHWM; ru_maxrss keeps the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def memory_child(argv: Sequence[str]) -> int:
    """Child of `bench memory`: ONNX Runtime Detector, N images, RSS; torch must stay out."""
    import psutil

    from yolov5face.pipeline.detector import Detector
    from yolov5face.serving.malloc_tuning import keep_freed_buffers

    cfg = json.loads(argv[0])
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    keep_freed_buffers()  # as the served handler does
    detector = Detector(cfg["onnx"], backend="onnxruntime", threads=cfg["threads"])
    detector.warmup()
    rss_loaded = proc.memory_info().rss
    blobs = [Path(f).read_bytes() for f in cfg["files"]]
    faces, t0 = 0, time.perf_counter()
    bar = _bar(cfg["images"], "memory")
    for k in range(cfg["images"]):
        answer = detector.detect([blobs[k % len(blobs)]])[0]
        json.dumps(answer)
        faces += len(answer)
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0
    torch_imported = "torch" in sys.modules
    result = {
        "images": cfg["images"],
        "files": [Path(f).name for f in cfg["files"]],
        "faces": faces,
        "seconds": round(elapsed, 2),
        "rss_start_mb": round(rss_start / MB, 1),
        "rss_loaded_mb": round(rss_loaded / MB, 1),
        "rss_after_mb": round(proc.memory_info().rss / MB, 1),
        "peak_rss_mb": round(_peak_rss() / MB, 1),
        "torch_imported": torch_imported,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 1 if torch_imported else 0


def _child_command(function: str, *args: str) -> list[str]:
    """`python -c` running one of this module's child entry points."""
    code = (
        f"import sys; from yolov5face.lab.bench import {function}; "
        f"sys.exit({function}(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *args]


def bench_memory(
    onnx: Path,
    images: int = 1000,
    files: Sequence[str] = MEMORY_FILES,
    threads: int = 1,
    timeout: float = 600.0,
) -> dict:
    """RSS of a fresh process serving with ONNX Runtime in-process, before and after N images."""
    cfg = {
        "onnx": str(onnx),
        "images": images,
        "files": [str(resolve_image(f)) for f in files],
        "threads": threads,
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        _child_command("memory_child", json.dumps(cfg)),
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"memory child failed (exit {proc.returncode}) without a result")
    result = json.loads(lines[-1])
    result["exit_code"] = proc.returncode
    result["target_mb"] = TARGETS["memory_mb"]
    result["met"] = (
        _met(result["rss_after_mb"], TARGETS["memory_mb"], higher=False)
        and not result["torch_imported"]
    )
    return result


def memory_tables(result: dict, md: bool = False) -> list[str]:
    """One row of RSS figures."""
    table = md_table if md else text_table
    row = [
        result["images"],
        result["rss_start_mb"],
        result["rss_loaded_mb"],
        result["rss_after_mb"],
        result["peak_rss_mb"],
        result["torch_imported"],
    ]
    header = ["images", "RSS start MB", "RSS loaded MB", "RSS after MB", "peak MB", "torch"]
    return [table(header, [row])]


# --------------------------------------------------------------------------- 4. server


# Over os.environ for every server the lab starts (private listeners come from the launcher).
_SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _ours_env(weights: Path, workers: int) -> dict[str, str]:
    return {"YOLOV5FACE_WEIGHTS": str(weights), "YOLOV5FACE_WORKERS": str(workers)}


def build_ours_archive(
    weights: Path, store: Path, workers: int, timeout: float = 600, extra_env: dict | None = None
) -> Path:
    """`yolov5face archive` in a subprocess with the serve environment (so serve reuses it)."""
    env = {**os.environ, **_ours_env(weights, workers), **(extra_env or {})}
    cmd = [sys.executable, "-m", "yolov5face", "archive", "--model-store", str(store)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout)
    return store / "fd1.mar"


def build_reference_archive(
    weights: Path, store: Path, workers: int = 4, timeout: float = 300
) -> Path:
    """ref.mar: the reference handler, the checkpoint as serialized file, N workers, batch 1."""
    import shutil

    store.mkdir(parents=True, exist_ok=True)
    archiver = shutil.which("torch-model-archiver") or str(
        Path(sys.executable).parent / "torch-model-archiver"
    )
    with tempfile.TemporaryDirectory(prefix=".ref-build-", dir=store) as tmp:
        config = Path(tmp) / "model-config.yaml"
        config.write_text(
            f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: 1\n"
            "maxBatchDelay: 0\nresponseTimeout: 30\n"
        )
        cmd = [
            archiver,
            "--model-name",
            REFERENCE_MODEL,
            "--version",
            "1.0",
            "--handler",
            str(REFERENCE_HANDLER),
            "--serialized-file",
            str(weights),
            "--config-file",
            str(config),
            "--export-path",
            str(store),
            "--force",
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return store / f"{REFERENCE_MODEL}.mar"


def start_ours(
    workdir: Path, weights: Path, store: Path, workers: int, extra_env: dict | None = None
) -> ServerProcess:
    """`yolov5face serve` (the product) on private ports, in its own session."""
    from yolov5face.serving.launcher import ServerProcess

    env = {**_SERVER_ENV, **_ours_env(weights, workers), **(extra_env or {})}
    cmd = [sys.executable, "-m", "yolov5face", "serve", "--model-store", str(store)]
    return ServerProcess.start(cmd, workdir, env, log=workdir / "serve.log", name="ours")


def start_reference(workdir: Path, store: Path) -> ServerProcess:
    """The same TorchServe (config, log config, environment) serving ref.mar."""
    from yolov5face.serving.launcher import (
        CONFIG,
        ServerProcess,
        torchserve_command,
        torchserve_env,
    )

    env = {**_SERVER_ENV, **torchserve_env(workdir)}
    cmd = torchserve_command(store, CONFIG, f"{REFERENCE_MODEL}={REFERENCE_MODEL}.mar")
    return ServerProcess.start(cmd, workdir, env, log=workdir / "serve.log", name="reference")


def server_processes(server: ServerProcess) -> list[tuple[str, Any]]:
    """(role, psutil.Process) of a running server's tree: frontend, worker or launcher."""
    import psutil

    root = psutil.Process(server.proc.pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmdline = " ".join(proc.cmdline())
            name = proc.name()
        except psutil.Error:
            continue
        if "java" in name or cmdline.startswith("java"):
            out.append(("frontend", proc))
        elif "model_service_worker" in cmdline:
            out.append(("worker", proc))
        else:
            out.append(("launcher", proc))
    return out


def cpu_seconds(processes: Sequence[tuple[str, Any]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far, summed per role."""
    import psutil

    out: dict[str, float] = {}
    for role, proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def torch_loaded(proc: Any) -> bool | None:
    """Whether libtorch is mapped into a process (None when its maps cannot be read)."""
    try:
        return any("libtorch" in m.path for m in proc.memory_maps(grouped=True))
    except Exception:  # psutil.Error, or maps unsupported on this OS
        return None


def process_memory(server: ServerProcess) -> dict:
    """RSS (and USS) of the frontend JVM and of each worker of a running server, in MB."""
    import psutil

    out: dict[str, Any] = {"frontend_mb": None, "workers": [], "launchers_mb": []}
    for role, proc in server_processes(server):
        try:
            rss = proc.memory_info().rss / MB
            uss = proc.memory_full_info().uss / MB
        except psutil.Error:
            continue
        if role == "frontend":
            out["frontend_mb"] = round(rss, 1)
            out["frontend_uss_mb"] = round(uss, 1)
        elif role == "worker":
            out["workers"].append(
                {"rss_mb": round(rss, 1), "uss_mb": round(uss, 1), "torch": torch_loaded(proc)}
            )
        else:
            out["launchers_mb"].append(round(rss, 1))
    worker_rss = [w["rss_mb"] for w in out["workers"]]
    out["workers_rss_mb_total"] = round(sum(worker_rss), 1)
    out["total_rss_mb"] = round(sum(worker_rss) + (out["frontend_mb"] or 0), 1)
    return out


def bare_torch_memory(timeout: float = 120.0) -> dict:
    """RSS/USS of a bare `python -c "import torch"` process, in MB."""
    code = (
        "import json, psutil, torch; p = psutil.Process(); m = p.memory_full_info(); "
        "print(json.dumps({'rss_mb': m.rss / 2**20, 'uss_mb': m.uss / 2**20}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    return {k: round(v, 1) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def ceiling_child(argv: Sequence[str]) -> int:
    """Child of the in-process ceiling: Detector.detect + json.dumps in a loop after 'go'."""
    from yolov5face.pipeline.detector import Detector
    from yolov5face.serving.malloc_tuning import keep_freed_buffers

    onnx, image, seconds, threads = argv
    keep_freed_buffers()  # as the served handler does, so the two stay comparable
    detector = Detector(onnx, backend="onnxruntime", threads=int(threads))
    blob = Path(image).read_bytes()
    detector.warmup()
    for _ in range(3):
        detector.detect([blob])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    n, t0 = 0, time.perf_counter()
    end = t0 + float(seconds)
    while time.perf_counter() < end:
        json.dumps(detector.detect([blob])[0])
        n += 1
    elapsed = time.perf_counter() - t0
    sys.stdout.write(json.dumps({"images": n, "seconds": elapsed}) + "\n")
    sys.stdout.flush()
    return 0


def inprocess_ceiling(
    onnx: Path, image: Path, processes: int = 2, seconds: float = 8.0, threads: int = 1
) -> dict:
    """images/s of `processes` processes each running Detector.detect in a loop, together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = _child_command("ceiling_child", str(onnx), str(image), str(seconds), str(threads))
    children = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    try:
        deadline = time.monotonic() + 120
        for child in children:
            ready, _, _ = select.select([child.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready or child.stdout.readline().strip() != "ready":
                raise RuntimeError("in-process ceiling: a child did not get ready")
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        rates = []
        for child in children:
            out, _ = child.communicate(timeout=seconds + 60)
            res = json.loads(out.strip().splitlines()[-1])
            rates.append(res["images"] / res["seconds"])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return {
        "processes": processes,
        "threads": threads,
        "seconds": seconds,
        "images_per_s": round(sum(rates), 2),
        "per_process": [round(r, 2) for r in rates],
    }


def _probe(url: str, blob: bytes, timeout: float = 30.0) -> tuple[int, int]:
    """One request: (status, number of faces)."""
    req = urllib.request.Request(
        url, data=blob, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, len(json.loads(resp.read()))


def _run_level(
    url: str,
    images: Sequence[tuple[str, bytes]],
    concurrency: int,
    duration: float,
    warmup: float,
    max_requests: int = 10**6,
) -> dict:
    """One concurrency level with the `qps` load tester (raw keep-alive HTTP client)."""
    from yolov5face.tools.qps.load import run
    from yolov5face.tools.qps.transports import run_http

    level = run_http(
        url,
        images,
        [concurrency],
        duration=duration,
        max_requests=max_requests,
        warmup=warmup,
        timeout=30.0,
        progress=True,
    )
    return run(level)[0].summary()


def interleaved_rounds(
    servers: dict[str, ServerProcess],
    urls: dict[str, str],
    images: Sequence[tuple[str, bytes]],
    levels: Sequence[int],
    duration: float,
    warmup: float,
    rounds: int,
    server_warmup: float = 0.0,
    warmup_concurrency: int = 8,
) -> dict[str, list[list[dict]]]:
    """Every level on every server in turn, `rounds` times (the order reversing each round).

    Servers run side by side and take turns level by level, so load that drifts during the run
    hits them alike. Each level also gets the servers' CPU ms per answered request, per role.
    First each server gets `server_warmup` s of uncounted load (JIT, arenas, first batches).
    """
    if server_warmup > 0:
        for url in urls.values():
            _run_level(url, images, warmup_concurrency, server_warmup, 0.0)
    procs = {name: server_processes(server) for name, server in servers.items()}
    by_round: dict[str, list[list[dict]]] = {name: [] for name in urls}
    for round_no in range(max(rounds, 1)):
        order = list(urls) if round_no % 2 == 0 else list(urls)[::-1]
        for name in order:
            by_round[name].append([])
        for concurrency in levels:
            for name in order:
                before = cpu_seconds(procs[name])
                level = _run_level(urls[name], images, concurrency, duration, warmup)
                after = cpu_seconds(procs[name])
                # whole level incl. warm-up: CPU ms per answered request, per role
                answered = level["ok"] * (1 + warmup / duration)
                level["server_cpu_ms_per_request"] = (
                    {
                        role: round((after[role] - before.get(role, 0.0)) * 1e3 / answered, 2)
                        for role in after
                    }
                    if answered
                    else {}
                )
                by_round[name][-1].append(level)
    return by_round


def median_levels(rounds: Sequence[Sequence[dict]]) -> list[dict]:
    """Per concurrency level over rounds: median QPS, latencies and CPU per request; sums of counts.

    One round of levels on a noisy machine moves by several percent; the median of a few
    interleaved rounds is what the report compares.
    """

    def median(values: Sequence[float], digits: int = 3) -> float | None:
        return round(float(np.median(values)), digits) if len(values) else None

    by_level: dict[int, list[dict]] = {}
    for levels in rounds:
        for lv in levels:
            by_level.setdefault(lv["concurrency"], []).append(lv)
    merged = []
    for concurrency, runs in by_level.items():
        errors: Counter[str] = Counter()
        cpu: dict[str, list[float]] = {}
        for lv in runs:
            errors.update(lv["errors"])
            for role, ms in lv.get("server_cpu_ms_per_request", {}).items():
                cpu.setdefault(role, []).append(ms)
        level: dict[str, Any] = {"concurrency": concurrency, "rounds": len(runs)}
        for key in ("qps", "p50_ms", "p90_ms", "p99_ms"):
            level[key] = median([lv[key] for lv in runs if lv.get(key) is not None])
        level["qps_by_round"] = [lv["qps"] for lv in runs]
        level["max_ms"] = max((lv.get("max_ms") or 0.0 for lv in runs), default=None)
        for key in ("requests", "ok", "mismatches", "elapsed_s", "client_cpu_s"):
            level[key] = round(sum(lv.get(key, 0) for lv in runs), 3)
        level["errors"] = dict(sorted(errors.items()))
        level["server_cpu_ms_per_request"] = {
            role: median(values, 2) for role, values in sorted(cpu.items())
        }
        merged.append(level)
    return merged


def qps_within(levels: Sequence[dict], p99_ms: float) -> float:
    """Best QPS among levels whose p99 is within `p99_ms` (0 when none is)."""
    ok = [lv["qps"] for lv in levels if lv["p99_ms"] is not None and lv["p99_ms"] <= p99_ms]
    return max(ok, default=0.0)


def compare_at_p99(ours: Sequence[dict], reference: Sequence[dict]) -> list[dict]:
    """Ours vs reference best QPS at each p99 budget the reference reached."""
    out = []
    for lv in reference:
        if lv["p99_ms"] is None:
            continue
        budget = lv["p99_ms"]
        ref_q, our_q = qps_within(reference, budget), qps_within(ours, budget)
        out.append(
            {
                "p99_budget_ms": budget,
                "ours_qps": our_q,
                "reference_qps": ref_q,
                "ratio": round(our_q / ref_q, 2) if ref_q else None,
            }
        )
    return out


def bench_server(
    weights: Path,
    image: Path,
    levels: Sequence[int] = DEFAULT_LEVELS,
    duration: float = 8.0,
    warmup: float = 1.0,
    requests: int = 2000,
    workers: int = 2,
    reference_workers: int = 4,
    ceiling_seconds: float = 10.0,
    soak_concurrency: int = 8,
    soak_seconds: float = 300.0,
    ready_timeout: float = 300.0,
    reference: bool = True,
    server_warmup: float = 5.0,
    eager_torch_requests: int = 1000,
    rounds: int = 1,
) -> dict:
    """TorchServe ours vs the in-process ceiling and vs the reference design; memory per process.

    Both servers run side by side and the levels alternate between them, so background load
    that drifts during the run hits both alike; with `rounds` > 1 the whole sweep is repeated
    (the first server swapping each round) and each level reports the median of its rounds.
    The ceiling is measured before and after.
    With `eager_torch_requests`, ours is then run once more with YOLOV5FACE_LAZY_TORCH=0 for
    that many requests, to show what TorchServe's own `import torch` costs a worker.
    """
    from yolov5face.tools.qps.cli import format_table

    result: dict[str, Any] = {
        "image": image.name,
        "levels": list(levels),
        "duration_s": duration,
        "warmup_s": warmup,
        "server_warmup_s": server_warmup,
        "requests_target": requests,
        "rounds": rounds,
    }
    from yolov5face.serving.archive import model_config

    config = model_config()  # batching as `yolov5face archive` will bake it in
    result["batch_size"], result["max_batch_delay_ms"] = (
        config["batchSize"],
        config["maxBatchDelay"],
    )
    blob = image.read_bytes()
    images = [(image.name, blob)]
    running: dict[str, tuple[ServerProcess, str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="yolov5face-bench-") as tmp:
        root = Path(tmp)
        result["bare_torch"] = bare_torch_memory()
        store = root / "ours" / "model-store"
        mar = build_ours_archive(weights, store, workers)
        with zipfile.ZipFile(mar) as zf:
            onnx = Path(zf.extract("fd1.onnx", root))
        ref_store = root / "reference" / "model-store"
        if reference:
            build_reference_archive(weights, ref_store, reference_workers)
        ceilings = [inprocess_ceiling(onnx, image, workers, ceiling_seconds)]
        try:
            running["ours"] = (start_ours(root / "ours", weights, store, workers), "fd1", workers)
            if reference:
                server = start_reference(root / "reference", ref_store)
                running["reference"] = (server, REFERENCE_MODEL, reference_workers)
            urls = {}
            for name, (server, model, n) in running.items():
                startup = server.wait_workers(model, n, ready_timeout)
                urls[name] = f"{server.http}/predictions/{model}"
                status, faces = _probe(urls[name], blob)
                result[name] = {
                    "model": model,
                    "workers": n,
                    "startup_s": round(startup, 1),
                    "probe": {"status": status, "faces": faces},
                    "levels": [],
                }
            servers = {name: server for name, (server, _, _) in running.items()}
            by_round = interleaved_rounds(
                servers,
                urls,
                images,
                levels,
                duration,
                warmup,
                rounds,
                server_warmup,
                warmup_concurrency=soak_concurrency,
            )
            for name in urls:
                result[name]["rounds"] = by_round[name]
                result[name]["levels"] = median_levels(by_round[name])
            for name, (server, _, _) in running.items():
                summaries = result[name]["levels"]
                sys.stderr.write(f"{name}:\n{format_table(summaries)}\n")
                served = sum(lv["requests"] for lv in summaries)
                soak = None
                if requests > served:
                    soak = _run_level(
                        urls[name], images, soak_concurrency, soak_seconds, 0.0, requests - served
                    )
                    served += soak["requests"]
                result[name]["soak"] = soak
                result[name]["requests_served"] = served
                result[name]["memory"] = process_memory(server)
        finally:
            for server, _, _ in running.values():
                server.stop()
        ceilings.append(inprocess_ceiling(onnx, image, workers, ceiling_seconds))
        if eager_torch_requests:
            result["ours_eager_torch"] = _eager_torch_memory(
                root / "eager", weights, store, workers, blob, eager_torch_requests, ready_timeout
            )
    result["ceiling"] = {
        **ceilings[0],
        "images_per_s": round(float(np.mean([c["images_per_s"] for c in ceilings])), 2),
        "before_after": [c["images_per_s"] for c in ceilings],
    }
    _server_summary(result)
    return result


def _eager_torch_memory(
    workdir: Path,
    weights: Path,
    store: Path,
    workers: int,
    blob: bytes,
    requests: int,
    ready_timeout: float,
    concurrency: int = 8,
) -> dict:
    """Memory of ours with TorchServe's `import torch` left eager, after `requests` requests."""
    server = start_ours(workdir, weights, store, workers, {"YOLOV5FACE_LAZY_TORCH": "0"})
    try:
        server.wait_workers("fd1", workers, ready_timeout)
        url = f"{server.http}/predictions/fd1"
        level = _run_level(url, [("image", blob)], concurrency, 300.0, 0.0, requests)
        return {"requests_served": level["requests"], "memory": process_memory(server)}
    finally:
        server.stop()


def _server_summary(result: dict) -> None:
    """Add the headline ratios and target checks to a server result."""
    ours = result["ours"]
    best = max(ours["levels"], key=lambda lv: lv["qps"])
    ceiling = result["ceiling"]["images_per_s"]
    result["ours_best"] = {"concurrency": best["concurrency"], "qps": best["qps"]}
    ratio = round(best["qps"] / ceiling, 3) if ceiling else None
    result["ours_over_ceiling"] = ratio
    result["ceiling_met"] = _met(ratio, TARGETS["server_ceiling"])
    mem = result["ours"]["memory"]
    result["memory_limits_met"] = {
        "worker": _met(max(w["rss_mb"] for w in mem["workers"]), TARGETS["worker_rss_mb"], False),
        "frontend": _met(mem["frontend_mb"], TARGETS["frontend_rss_mb"], higher=False),
    }
    eager = result.get("ours_eager_torch")
    if eager:
        lazy_worker = np.mean([w["rss_mb"] for w in mem["workers"]])
        eager_worker = np.mean([w["rss_mb"] for w in eager["memory"]["workers"]])
        result["torch_share_of_worker_mb"] = round(float(eager_worker - lazy_worker), 1)
    if "reference" in result:
        ratio = mem["total_rss_mb"] / result["reference"]["memory"]["total_rss_mb"]
        result["memory_vs_reference"] = round(ratio, 3)
        result["memory_vs_reference_met"] = _met(ratio, TARGETS["server_memory_ratio"], False)
        result["at_p99"] = compare_at_p99(ours["levels"], result["reference"]["levels"])
        head = _headline(ours["levels"], result["reference"]["levels"])
        result["vs_reference"] = head
        result["vs_reference_met"] = _met(
            head["ratio"] if head else None, TARGETS["server_vs_reference"]
        )
        round_pairs = zip(ours.get("rounds", []), result["reference"].get("rounds", []))
        result["vs_reference_by_round"] = [
            (_headline(ours_round, ref_round) or {}).get("ratio")
            for ours_round, ref_round in round_pairs
        ]


def _headline(ours: Sequence[dict], reference: Sequence[dict]) -> dict | None:
    """The comparison at the p99 of the reference's best-QPS level."""
    ref_best = max(reference, key=lambda lv: lv["qps"])
    return next(
        (c for c in compare_at_p99(ours, reference) if c["p99_budget_ms"] == ref_best["p99_ms"]),
        None,
    )


def server_tables(result: dict, md: bool = False) -> list[str]:
    """Levels of both servers, the ceiling and p99 comparisons, memory per process."""
    table = md_table if md else text_table
    out = []
    rows = []
    for name in ("ours", "reference"):
        if name not in result:
            continue
        for lv in result[name]["levels"]:
            errors = " ".join(f"{k}:{v}" for k, v in lv["errors"].items()) or "-"
            cpu = lv.get("client_cpu_s")
            client = f"{100 * cpu / lv['elapsed_s']:.0f}" if cpu is not None else "-"
            per_request = lv.get("server_cpu_ms_per_request", {})
            by_round = " / ".join(f"{q:.0f}" for q in lv.get("qps_by_round", [lv["qps"]]))
            rows.append(
                [name, lv["concurrency"], lv["qps"], by_round, lv["p50_ms"], lv["p99_ms"]]
                + [lv["ok"], per_request.get("frontend"), per_request.get("worker"), client]
                + [errors]
            )
    header = ["server", "concurrency", "QPS", "QPS by round", "p50 ms", "p99 ms", "ok"]
    header += ["frontend CPU ms/req", "workers CPU ms/req", "client CPU %", "errors"]
    out.append(table(header, rows))
    if result.get("at_p99"):
        rows = [
            [c["p99_budget_ms"], c["ours_qps"], c["reference_qps"], _fmt(c["ratio"], 2) + "x"]
            for c in result["at_p99"]
        ]
        out.append(table(["p99 budget ms", "ours QPS", "reference QPS", "ours / reference"], rows))
    bare = result["bare_torch"]
    rows = [["bare `python -c 'import torch'`", "-", bare["rss_mb"], bare["uss_mb"], "yes"]]
    totals = []
    for name, label in _MEMORY_SERVERS:
        if name not in result:
            continue
        mem = result[name]["memory"]
        served = result[name]["requests_served"]
        rows.append(
            [f"{label} frontend (JVM)", served, mem["frontend_mb"], mem.get("frontend_uss_mb"), "-"]
        )
        for k, w in enumerate(mem["workers"]):
            loaded = {True: "yes", False: "no"}.get(w.get("torch"), "?")
            rows.append([f"{label} worker {k + 1}", served, w["rss_mb"], w["uss_mb"], loaded])
        ref = result.get("reference", {}).get("memory", {}).get("total_rss_mb")
        share = f"{100 * mem['total_rss_mb'] / ref:.0f}%" if ref else "-"
        totals.append(
            [label, mem["frontend_mb"], mem["workers_rss_mb_total"], mem["total_rss_mb"], share]
        )
    out.append(table(["process", "requests served", "RSS MB", "USS MB", "torch loaded"], rows))
    out.append(
        table(["server", "JVM MB", "workers MB", "total RSS MB", "of the reference"], totals)
    )
    return out


# (result key, label) of the servers whose memory is reported, in table order.
_MEMORY_SERVERS = (
    ("ours", "ours"),
    ("ours_eager_torch", "ours, torch not deferred"),
    ("reference", "reference"),
)


# --------------------------------------------------------------------------- 5. report


def environment() -> dict:
    """Machine and versions for the report."""
    import platform
    from datetime import datetime, timezone
    from importlib import metadata

    import psutil

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        java_version = java.stderr.splitlines()[0] if java.stderr else "unknown"
    except (OSError, subprocess.SubprocessError):
        java_version = "not found"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "torchserve": version("torchserve"),
        "opencv": version("opencv-python-headless"),
        "simplejpeg": version("simplejpeg"),
        "numpy": version("numpy"),
        "java": java_version,
    }


@dataclass
class ReportSettings:
    """Durations and sizes of one `bench report` run (normal or quick)."""

    model_seconds: float = 3.0
    pipeline_seconds: float = 4.0
    memory_images: int = 1000
    # Denser than the CLI default around where both servers saturate, so the QPS-vs-p99
    # comparison is read off a finer curve.
    server_levels: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 24, 32)
    server_duration: float = 8.0
    server_requests: int = 10000
    ceiling_seconds: float = 10.0
    # Long enough for the frontend JVM's JIT to settle, so levels read steady-state costs: its C2
    # compiler used 5.6 s of CPU in the JVM's first ~2 minutes (mostly under load), 0.6 s in the
    # next minute of load, then next to nothing.
    server_warmup: float = 60.0
    rounds: int = 5
    eager_torch_requests: int = 1000
    # Whole server sweeps, medians per level: one sweep's QPS moves by several percent.
    server_rounds: int = 3

    @classmethod
    def quick(cls) -> ReportSettings:
        """Short everything: checks the machinery, not the numbers."""
        return cls(0.3, 0.4, 50, (1, 4), 1.5, 100, 2.0, 1.0, 2, 50, server_rounds=2)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_model(result: dict, path: Path) -> None:
    """Grouped bars: images/s per backend for each batch/threads."""
    plt = _plt()
    combos = sorted({(r["batch"], r["threads"]) for r in result["rows"]})
    backends = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    by = {(r["backend"], r["batch"], r["threads"]): r["images_per_s"] for r in result["rows"]}
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(backends)
    x = np.arange(len(combos))
    for k, backend in enumerate(backends):
        values = [by.get((backend, b, t), 0.0) for b, t in combos]
        bars = ax.bar(x + (k - (len(backends) - 1) / 2) * width, values, width, label=backend)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ratios = result["ratios_onnxruntime_over_torch"]
    labels = [f"batch {b}, {t} thread(s)" for b, t in combos]
    labels = [
        f"{label}\nORT/torch {ratios[f'b{b} t{t}']:.1f}x" if f"b{b} t{t}" in ratios else label
        for label, (b, t) in zip(labels, combos)
    ]
    ax.set_xticks(x, labels)
    ax.set_ylabel("images / s (network only)")
    ax.set_title(f"Model throughput at {result['img_size']}x{result['img_size']}")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pipeline(result: dict, path: Path) -> None:
    """Stacked bars of ms per image per stage: ours (each batch) vs baseline, one panel/image."""
    plt = _plt()
    threads = result["rows"][0]["threads"]
    rows = [r for r in result["rows"] if r["threads"] == threads]
    images = list(dict.fromkeys(r["image"] for r in rows))
    fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, name in zip(axes[0], images):
        sub = [r for r in rows if r["image"] == name]
        labels = [f"{r['pipeline']}\nbatch {r['batch']}" for r in sub]
        bottom = np.zeros(len(sub))
        for k, stage in enumerate(PIPELINE_STAGES):
            values = np.array([r["stages_ms"][stage] for r in sub])
            ax.bar(labels, values, bottom=bottom, label=stage, color=colors[k])
            bottom += values
        for i, r in enumerate(sub):
            ax.annotate(f"{r['images_per_s']:.0f} img/s", (i, bottom[i]), ha="center", va="bottom")
        ax.set_title(f"{name}, {threads} thread(s)")
        ax.set_ylabel("ms per image")
        ax.set_ylim(0, bottom.max() * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Pipeline stages: JPEG bytes -> JSON (ours vs reference design)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_server(result: dict, path: Path) -> None:
    """QPS and p50/p99 latency vs concurrency for both servers, with the in-process ceiling."""
    plt = _plt()
    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    ceiling = result["ceiling"]["images_per_s"]
    conc: list[int] = []
    for name, color in (("ours", "tab:blue"), ("reference", "tab:orange")):
        if name not in result:
            continue
        levels = result[name]["levels"]
        conc = [lv["concurrency"] for lv in levels]
        ax_q.plot(conc, [lv["qps"] for lv in levels], "o-", color=color, label=f"{name} TorchServe")
        for key, style in (("p50_ms", "o--"), ("p99_ms", "s-")):
            values = [np.nan if lv[key] is None else lv[key] for lv in levels]
            ax_l.plot(conc, values, style, color=color, label=f"{name} {key[:3]}")
    ax_q.axhline(ceiling, color="k", lw=1, label="in-process ceiling (2 processes)")
    ax_q.axhline(
        ceiling * TARGETS["server_ceiling"], color="k", lw=1, ls=":", label="80% of ceiling"
    )
    ax_q.set(xlabel="concurrency", ylabel="requests / s", title=f"QPS ({result['image']})")
    ax_l.set(xlabel="concurrency", ylabel="ms", title="latency")
    ax_l.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for ax in (ax_q, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_l.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_l.yaxis.set_major_formatter(ScalarFormatter())
    ax_l.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_memory(memory: dict | None, server: dict | None, path: Path) -> None:
    """RSS per process: in-process ONNX Runtime, bare torch, frontends and workers."""
    plt = _plt()
    labels, values, colors = [], [], []
    if memory:
        labels.append(f"in-process ORT Detector\n(after {memory['images']} images)")
        values.append(memory["rss_after_mb"])
        colors.append("tab:green")
    if server:
        labels.append("bare python + import torch")
        values.append(server["bare_torch"]["rss_mb"])
        colors.append("tab:gray")
        palette = {"ours": "tab:blue", "ours_eager_torch": "tab:purple", "reference": "tab:orange"}
        for name, label in _MEMORY_SERVERS:
            if name not in server:
                continue
            color = palette[name]
            mem = server[name]["memory"]
            labels.append(f"{label} frontend JVM")
            values.append(mem["frontend_mb"] or 0.0)
            colors.append(color)
            for k, w in enumerate(mem["workers"]):
                labels.append(f"{label} worker {k + 1}")
                values.append(w["rss_mb"])
                colors.append(color)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
    bars = ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%.0f MB", fontsize=8)
    ax.axvline(TARGETS["memory_mb"], color="k", ls=":", lw=1, label="150 MB (in-process target)")
    ax.set_xlabel("RSS MB")
    ax.set_xlim(0, max(values, default=1.0) * 1.15)
    counts = [server[n]["requests_served"] for n in ("ours", "reference") if server and n in server]
    served = f" (servers after >= {min(counts)} requests each)" if counts else ""
    ax.set_title("Memory per process" + served)
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bounds(results: dict) -> list[str]:
    """Bullets with in-run figures that bound the ratios (why a target can or cannot be met)."""
    notes = []
    pipe = results.get("pipeline")
    if pipe:
        for row in pipe["rows"]:
            if row["pipeline"] != "baseline":
                continue
            ours = min(
                (r for r in pipe["rows"] if r["image"] == row["image"] and r["pipeline"] == "ours"),
                key=lambda r: r["ms_per_image"],
            )
            decode = ours["stages_ms"]["decode"]
            notes.append(
                f"{row['image']}: decoding takes {decode:.1f} of ours' {ours['ms_per_image']:.1f} "
                f"ms per image ({100 * decode / ours['ms_per_image']:.0f}%; the baseline's "
                f"`cv2.imdecode` {row['stages_ms']['decode']:.1f} ms for the same pixels), so "
                f"even with everything else free ours / baseline could not exceed "
                f"{row['ms_per_image'] / decode:.2f}x on it."
            )
    srv = results.get("server")
    if srv and "reference" in srv:
        cpu = {}
        for name in ("ours", "reference"):
            best = max(srv[name]["levels"], key=lambda lv: lv["qps"])
            per = best.get("server_cpu_ms_per_request") or {}
            cpu[name] = per.get("frontend", 0.0) + per.get("worker", 0.0)
        if cpu["ours"]:
            notes.append(
                f"Server CPU per request at each server's best level (frontend + workers): "
                f"ours {cpu['ours']:.1f} ms, reference {cpu['reference']:.1f} ms. Both are "
                f"CPU-bound on the same cores, so ours / reference QPS at equal load tops out "
                f"near {cpu['reference'] / cpu['ours']:.1f}x here."
            )
    return notes


def _target_rows(results: dict) -> list[list[Any]]:
    """One row per issue target: what, target, measured, met."""
    rows = []
    model = results.get("model", {}).get("headline")
    if model:
        rows.append([model["name"], ">= 2.5x", f"{model['ratio']:.2f}x", model["met"]])
    pipe = results.get("pipeline")
    if pipe:
        for c in pipe["comparisons"]:
            what = f"pipeline ours b{c['batch']} / baseline, {c['image']}"
            ratio = c["ours_over_baseline"]
            rows.append([what, ">= 2x", f"{ratio:.2f}x", _met(ratio, TARGETS["pipeline_ratio"])])
        for c in pipe["comparisons"]:
            what = f"ours b{c['batch']} time / (decode + model), {c['image']}"
            ratio = c["ours_over_decode_plus_model"]
            met = _met(ratio, TARGETS["pipeline_overhead"], higher=False)
            rows.append([what, "<= 1.2x", f"{ratio:.3f}x", met])
        for name, p in pipe["postprocess"].items():
            rows.append(
                [
                    f"post-processing + JSON, {name} ({p['faces_ours']} faces)",
                    "< 1 ms",
                    f"{p['ours_ms']:.3f} ms (baseline {p['baseline_ms']:.2f} ms)",
                    _met(p["ours_ms"], TARGETS["postprocess_ms"], higher=False),
                ]
            )
    mem = results.get("memory")
    if mem:
        rows.append(
            [
                f"in-process ORT RSS after {mem['images']} images (torch imported: "
                f"{'yes' if mem['torch_imported'] else 'no'})",
                "< 150 MB",
                f"{mem['rss_after_mb']:.1f} MB",
                mem["met"],
            ]
        )
    srv = results.get("server")
    if srv:
        rows.append(
            [
                "server best QPS / in-process ceiling (2 processes)",
                ">= 80%",
                f"{srv['ours_over_ceiling'] * 100:.0f}% ({srv['ours_best']['qps']:.1f} / "
                f"{srv['ceiling']['images_per_s']:.1f})",
                srv["ceiling_met"],
            ]
        )
        head = srv.get("vs_reference")
        if head:
            rows.append(
                [
                    f"ours / reference QPS at the reference's peak p99 "
                    f"({head['p99_budget_ms']:.0f} ms)",
                    ">= 3x",
                    f"{_fmt(head['ratio'], 2)}x ({head['ours_qps']:.1f} / "
                    f"{head['reference_qps']:.1f})"
                    + (f", medians of {srv['rounds']} rounds" if srv.get("rounds", 1) > 1 else ""),
                    srv["vs_reference_met"],
                ]
            )
        mem = srv["ours"]["memory"]
        if "memory_vs_reference" in srv:
            ref = srv["reference"]["memory"]["total_rss_mb"]
            rows.append(
                [
                    f"server RSS (JVM + workers) ours / reference after "
                    f"{min(srv['ours']['requests_served'], srv['reference']['requests_served'])} "
                    "requests",
                    "<= 50%",
                    f"{srv['memory_vs_reference'] * 100:.0f}% ({mem['total_rss_mb']:.0f} / "
                    f"{ref:.0f} MB)",
                    srv["memory_vs_reference_met"],
                ]
            )
        limits = srv.get("memory_limits_met", {})
        worst = max(w["rss_mb"] for w in mem["workers"])
        rows.append(
            ["ours, largest worker RSS", "<= 350 MB", f"{worst:.0f} MB", limits.get("worker")]
        )
        rows.append(
            [
                "ours, frontend JVM RSS",
                "<= 400 MB",
                f"{mem['frontend_mb']:.0f} MB",
                limits.get("frontend"),
            ]
        )
    return rows


def write_report(results: dict, out: Path, settings: ReportSettings, quick: bool) -> None:
    """docs/benchmarks.md and its plots in docs/img/."""
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    env = results["environment"]
    plots = {}
    if "model" in results:
        plot_model(results["model"], img / "bench_model.png")
        plots["model"] = "img/bench_model.png"
    if "pipeline" in results:
        plot_pipeline(results["pipeline"], img / "bench_pipeline.png")
        plots["pipeline"] = "img/bench_pipeline.png"
    if "server" in results:
        plot_server(results["server"], img / "bench_server.png")
        plots["server"] = "img/bench_server.png"
    plot_memory(results.get("memory"), results.get("server"), img / "bench_memory.png")
    plots["memory"] = "img/bench_memory.png"
    s = settings
    levels = ",".join(map(str, s.server_levels))
    commands = [
        f"yolov5face bench report --out {out}" + (" --quick" if quick else ""),
        "# which runs the equivalent of:",
        f"yolov5face bench model --backend torch,onnxruntime --batch 1,8 --threads 1,2 "
        f"--seconds {s.model_seconds:g} --ort-options",
        f"yolov5face bench pipeline --images zidane.jpg,test.jpg --batch 1,8 --threads 1 "
        f"--seconds {s.pipeline_seconds:g}",
        f"yolov5face bench memory --images {s.memory_images}",
        f"yolov5face bench server --image zidane.jpg --concurrency {levels} "
        f"--duration {s.server_duration:g} --requests {s.server_requests} "
        f"--ceiling-seconds {s.ceiling_seconds:g} --server-warmup {s.server_warmup:g} "
        f"--eager-torch-requests {s.eager_torch_requests} --rounds {s.server_rounds}",
    ]
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `yolov5face bench report` (`make bench`) on {env['date']}"
        + (" in **quick mode** (short runs: the numbers are not meaningful)" if quick else "")
        + f"; the whole run took {results['elapsed_s'] / 60:.1f} min. Every comparison below "
        "was measured within this one run; the machine is small and shared, so the ratios are "
        "what carries over, not the absolute figures. Within a section the compared cases are "
        "timed in interleaved slices, so background load hits them alike.",
        "",
        "## Machine and versions",
        "",
        md_table(
            ["", ""],
            [
                ["CPU", f"{env['cpu']} ({env['cores']} cores)"],
                ["RAM", f"{env['ram_gb']} GB"],
                ["OS", env["os"]],
                ["load average at start", " / ".join(map(str, env["load_average"]))],
                ["python", env["python"]],
                ["torch", env["torch"]],
                ["onnxruntime", env["onnxruntime"]],
                ["torchserve", env["torchserve"]],
                ["opencv", env["opencv"]],
                ["simplejpeg", env.get("simplejpeg", "-")],
                ["numpy", env["numpy"]],
                ["java", env["java"]],
            ],
        ),
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
        "## Targets",
        "",
        md_table(["what", "target", "measured", "met"], _target_rows(results)),
        "",
        *[f"- {note}" for note in _bounds(results)],
        "",
    ]
    if "model" in results:
        m = results["model"]
        parts += [
            "## 1. Model throughput",
            "",
            f"Network forward only on a (B, 3, {m['img_size']}, {m['img_size']}) float32 batch; "
            "ms/batch is the median of the timed runs after warm-up. torch threads are "
            "`torch.set_num_threads` (process-global, set before each row's slice); ONNX Runtime "
            "threads are the session's intra-op threads. Both run the BN-fused network.",
            "",
            *[t + "\n" for t in model_tables(m, md=True)],
            "The second table is onnxruntime images/s over torch images/s for the same batch "
            "and threads. The last one (when present) times the shipped ONNX Runtime backend "
            "against one session-option change at a time, at batch 8 and 2 threads, "
            "interleaved the same way (`yolov5face bench model --ort-options`).",
            "",
            f"![model throughput]({plots['model']})",
            "",
        ]
    if "pipeline" in results:
        p = results["pipeline"]
        parts += [
            "## 2. Pipeline: JPEG bytes -> JSON",
            "",
            f"Ours: `Detector.detect` ({p['backend']}, the exported ONNX, banded on the CPU: "
            "yolov5face/backends/band.py) on a list of B copies "
            "of the image, then `json.dumps` per image; the stage split comes from the "
            "Detector's `timings` dict (post-processing includes building the face dicts). "
            "Baseline: `yolov5face/lab/reference_pipeline.py`, the reference handler's design "
            "written from its description: per image `cv2.imdecode`, letterbox, torch fp32 "
            "eager with un-fused BatchNorm, sigmoid and grid arithmetic in torch over all "
            "anchors, threshold, greedy torch NMS loop, per-face Python loops for the JSON. "
            "tests/test_bench.py checks it returns the same faces as the Detector.",
            "",
            *[t + "\n" for t in pipeline_tables(p, md=True)],
            "The post-processing micro-benchmark table: raw network output -> "
            "JSON string (decode heads, threshold, NMS, map back, JSON), median ms. "
            "The last table (when present) times ours against the same Detector on the plain "
            "model, whole 320x320 canvases (`band=False`), interleaved with the cases above: "
            "the difference is what the banded model saves (its answers are tested equal in "
            "tests/test_band.py).",
            "",
            f"![pipeline stages]({plots['pipeline']})",
            "",
        ]
    if "memory" in results:
        mem = results["memory"]
        parts += [
            "## 3. Memory of an in-process ONNX Runtime server",
            "",
            "A fresh subprocess builds a `Detector` on the exported `.onnx` (backend "
            "onnxruntime, 1 thread), then runs "
            f"{mem['images']} images through `detect` (cycling {', '.join(mem['files'])}). "
            f"torch imported in that process: **{'yes' if mem['torch_imported'] else 'no'}** "
            "(checked via `sys.modules`).",
            "",
            *[t + "\n" for t in memory_tables(mem, md=True)],
        ]
    if "server" in results:
        srv = results["server"]
        ours = srv["ours"]
        parts += [
            "## 4. Server",
            "",
            f"Ours: `yolov5face serve` (TorchServe, {ours['workers']} CPU workers, ONNX Runtime "
            f"1 thread each, batch size {srv.get('batch_size', 8)} / max batch delay "
            f"{srv.get('max_batch_delay_ms', 5)} ms from "
            "yolov5face/serving/config/model-config.yaml). Reference "
            "design: `yolov5face/lab/reference_handler.py` (torch eager, per image, via "
            "reference_pipeline) "
            f"in its own archive with {srv['reference']['workers'] if 'reference' in srv else 4} "
            "workers, batch 1, served by the same TorchServe (same config.properties and log "
            "config, OMP_NUM_THREADS=1). Ours' handler keeps freed buffers for reuse (glibc "
            "`mallopt`, `reuse_freed_memory` in the model config, docs/architecture.md); the "
            "reference handler runs with the allocator's defaults, like the design it copies. "
            "Both servers run side by side (the idle one waits) and "
            "each concurrency level is run on one, then the other, so background load that "
            "drifts during the run hits both alike"
            + (
                f"; the whole sweep is run {srv['rounds']} times (the server going first "
                "swapping each round) and the tables show each level's median QPS, p50, p99 and "
                "CPU per request over the rounds ('ok' counts them all)"
                if srv.get("rounds", 1) > 1
                else ""
            )
            + ". Load: `yolov5face.tools.qps` (raw keep-alive "
            "HTTP client, one connection per concurrent request, POST of the JPEG) on "
            f"{srv['image']}: first {srv.get('server_warmup_s', 5):g} s uncounted at "
            f"concurrency 8 per server, then {srv['duration_s']:g} s per level after "
            f"{srv.get('warmup_s', 1):g} s warm-up, on the same 2-core machine as the servers "
            "(its own CPU use is the client CPU column). The CPU ms/req columns are the CPU "
            "time the frontend JVM and all workers used during the level (warm-up included) "
            "divided by the requests answered (warm-up requests estimated at the level's rate).",
            "",
            f"In-process ceiling: {srv['ceiling']['processes']} processes each running "
            "`Detector.detect([image])` + `json.dumps` in a loop on the archive's ONNX, with the "
            "handler's allocator setting, measured together, before the servers start and after "
            "they stop: "
            f"{' and '.join(f'{v:.1f}' for v in srv['ceiling'].get('before_after', []))} "
            f"images/s, mean **{srv['ceiling']['images_per_s']:.1f}**. Ours peaks at "
            f"{srv['ours_best']['qps']:.1f} QPS (concurrency {srv['ours_best']['concurrency']}) = "
            f"{srv['ours_over_ceiling'] * 100:.0f}% of it. Worker start-up (both started "
            f"together): ours {ours['startup_s']:.0f} s"
            + (
                f", reference {srv['reference']['startup_s']:.0f} s." if "reference" in srv else "."
            ),
            "",
            *[t + "\n" for t in server_tables(srv, md=True)],
            "How TorchServe batches matters here: a worker that takes a request waits up to the "
            f"max batch delay ({srv.get('max_batch_delay_ms', 5)} ms) for more, up to the batch "
            f"size ({srv.get('batch_size', 8)}), so at low concurrency one worker may take "
            "every request in flight while the other waits; ours' workers then run part of "
            "such a batch on the idle core (`split_batches`, docs/architecture.md). "
            "docs/operations.md ('CPU hosts') has the sweep behind the default batch size, "
            "delay and splitting.",
            "",
            "The p99 table compares the best QPS each server reaches while keeping p99 within "
            "the budget; the headline budget is the reference's p99 at its peak QPS level"
            + (
                ". The same headline read off each round alone: "
                + ", ".join(_fmt(r, 2) + "x" for r in srv["vs_reference_by_round"])
                + ". When the reference's QPS is nearly flat across levels, which level peaks "
                "in a round is down to noise, and a round whose peak is a low-concurrency level "
                "sets a tight p99 budget: hence the medians. "
                if len(srv.get("vs_reference_by_round") or []) > 1
                else ". "
            )
            + "Memory is read after each server answered the requests in the 'requests served' "
            f"column: the sweep, then a soak at concurrency 8 when the sweep stayed under "
            f"{srv['requests_target']} (the issue asks 10,000: "
            "`yolov5face bench server --requests 10000`). TorchServe's worker imports torch "
            "itself (`ts/protocol/otf_message_handler.py`, only to test whether a response is a "
            "tensor); `yolov5face serve` defers that import in its workers "
            "(`yolov5face/serving/worker_site/sitecustomize.py`), so torch is only loaded if "
            "something "
            "uses it. 'torch loaded' says whether libtorch is mapped into the process. "
            + (
                f"'ours, torch not deferred' is the same server started afterwards with "
                f"YOLOV5FACE_LAZY_TORCH=0 and measured after "
                f"{srv['ours_eager_torch']['requests_served']} requests: its workers are "
                f"{srv['torch_share_of_worker_mb']:.0f} MB larger than ours, which is what "
                "TorchServe's import of torch costs a worker (ours were read after more "
                "requests, so if anything this understates it). "
                if "ours_eager_torch" in srv
                else ""
            )
            + "The reference handler uses torch, so its workers load it either way.",
            "",
            f"![server]({plots['server']})",
            "",
        ]
    parts += [
        f"![memory per process]({plots['memory']})",
        "",
    ]
    if "decode" in results:
        from yolov5face.lab.decode_study import to_markdown as decode_markdown

        parts += [
            "## 5. JPEG decode study",
            "",
            "Decoders compared on the shared photos (median ms per decode, speed-up vs "
            "`cv2.imdecode` in brackets), then the accuracy of the whole pipeline with each "
            "(golden parity by the comparison rule; WIDER FACE subset AP at 320, conf 0.02). "
            "*ours* is `imagedecode.decode_image`: libjpeg-turbo through simplejpeg for upright "
            "JPEGs, pixel-identical to *opencv* (`cv2.imdecode`). *-scaled* decodes JPEGs at "
            "1/2, 1/4 or 1/8 (DCT scaling) while the long side stays >= 320. "
            "(`python -m yolov5face.lab.decode_study`)",
            "",
            decode_markdown(results["decode"]),
            "",
            "Scaled decoding is offered only as an opt-in fast mode (`--fast-decode`, "
            "`YOLOV5FACE_FAST_DECODE=1`, `fast_decode: true` in the model config): it loses "
            "golden parity (different pixels change boxes by more than the 0.002 tolerance) "
            "although WIDER AP does not drop. The default keeps full-size decoding with "
            "OpenCV's exact pixels (docs/architecture.md).",
            "",
        ]
    if "loadtool" in results:
        from yolov5face.lab.loadtool import to_markdown as loadtool_markdown

        parts += ["## 6. QPS tool vs wrk", "", loadtool_markdown(results["loadtool"]), ""]
    parts += [
        "## GPU",
        "",
        "No GPU was lent to the session that produced this report, and no TensorRT is "
        "installed on these machines: the torch CUDA (fp16, CUDA graphs), TensorRT and torch2trt "
        "paths (`tests/test_gpu.py`, marked `gpu`) were skipped here and are **untested**. "
        "Nothing in this report was measured on a GPU.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))


def run_report(
    weights: Path, out: Path, quick: bool = False, sections: Sequence[str] | None = None
) -> dict:
    """Run every section in one go and write the report; returns all results."""
    import gc

    settings = ReportSettings.quick() if quick else ReportSettings()
    sections = list(sections or ("model", "pipeline", "memory", "server", "decode", "loadtool"))
    t0 = time.monotonic()
    results: dict[str, Any] = {"environment": environment(), "quick": quick}
    if "model" in sections:
        logger.warning("bench report: model throughput")
        results["model"] = bench_model(
            weights, seconds=settings.model_seconds, rounds=settings.rounds
        )
        results["model"]["ort_options"] = bench_ort_options(
            cached_onnx(weights, 320), seconds=settings.model_seconds, rounds=settings.rounds
        )
        gc.collect()
    if "pipeline" in sections:
        logger.warning("bench report: pipeline")
        results["pipeline"] = bench_pipeline(
            weights,
            seconds=settings.pipeline_seconds,
            rounds=settings.rounds,
            postprocess_seconds=settings.pipeline_seconds / 2,
        )
        gc.collect()
    if "memory" in sections:
        logger.warning("bench report: memory")
        results["memory"] = bench_memory(cached_onnx(weights, 320), settings.memory_images)
    if "server" in sections:
        logger.warning("bench report: server")
        results["server"] = bench_server(
            weights,
            resolve_image("zidane.jpg"),
            levels=settings.server_levels,
            duration=settings.server_duration,
            requests=settings.server_requests,
            ceiling_seconds=settings.ceiling_seconds,
            server_warmup=settings.server_warmup,
            eager_torch_requests=settings.eager_torch_requests,
            rounds=settings.server_rounds,
        )
    if "decode" in sections:
        from yolov5face.lab.decode_study import run_study
        from yolov5face.paths import shared_dir
        from yolov5face.pipeline.detector import Detector

        logger.warning("bench report: JPEG decode study")
        detector = Detector(cached_onnx(weights, 320), backend="onnxruntime", threads=1)
        results["decode"] = run_study(
            detector, shared_dir(), seconds=settings.pipeline_seconds / 4, widerface=not quick
        )
    if "loadtool" in sections:
        from yolov5face.lab.loadtool import compare_with_wrk

        logger.warning("bench report: qps tool vs wrk")
        results["loadtool"] = compare_with_wrk(
            resolve_image("zidane.jpg"), seconds=2 if quick else 8, rounds=1 if quick else 3
        )
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_report(results, out, settings, quick)
    return results


# --------------------------------------------------------------------------- CLI


def _cmd_model(args: argparse.Namespace) -> int:
    result = bench_model(
        _weights(args),
        backends=args.backend,
        batches=args.batch,
        threads=args.threads,
        img_size=args.img_size,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    if args.ort_options:
        onnx = cached_onnx(_weights(args), args.img_size)
        result["ort_options"] = bench_ort_options(
            onnx, max(args.batch), max(args.threads), args.seconds, args.rounds
        )
    tables = model_tables(result)
    if result["headline"]:
        h = result["headline"]
        tables.append(f"{h['name']}: {h['ratio']:.2f}x (target >= {h['target']}x)")
    _emit(result, tables)
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    result = bench_pipeline(
        _weights(args),
        images=args.images,
        batches=args.batch,
        threads=args.threads,
        img_size=args.img_size,
        seconds=args.seconds,
        backend=args.backend,
        rounds=args.rounds,
    )
    _emit(result, pipeline_tables(result))
    return 0


def _cmd_memory(args: argparse.Namespace) -> int:
    onnx = cached_onnx(_weights(args), args.img_size)
    result = bench_memory(onnx, args.images, args.files, timeout=args.timeout)
    _emit(result, memory_tables(result))
    return 0 if result["exit_code"] == 0 else 1


def _cmd_server(args: argparse.Namespace) -> int:
    result = bench_server(
        _weights(args),
        resolve_image(args.image),
        levels=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        requests=args.requests,
        workers=args.workers,
        reference_workers=args.reference_workers,
        ceiling_seconds=args.ceiling_seconds,
        soak_seconds=args.soak_seconds,
        ready_timeout=args.ready_timeout,
        reference=not args.no_reference,
        server_warmup=args.server_warmup,
        eager_torch_requests=args.eager_torch_requests,
        rounds=args.rounds,
    )
    tables = server_tables(result)
    share = result["ours_over_ceiling"]
    tables.append(
        f"in-process ceiling {result['ceiling']['images_per_s']:.1f} images/s; ours best "
        f"{result['ours_best']['qps']:.1f} QPS"
        + (f" = {share * 100:.0f}%" if share is not None else " (no ceiling measured)")
    )
    _emit(result, tables)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    results = run_report(_weights(args), Path(args.out), quick=args.quick, sections=args.only)
    summary = {
        "out": args.out,
        "elapsed_s": results["elapsed_s"],
        "targets": [
            {"what": r[0], "target": r[1], "measured": r[2], "met": r[3]}
            for r in _target_rows(results)
        ],
    }
    rows = [[r["what"], r["target"], r["measured"], _fmt(r["met"])] for r in summary["targets"]]
    _emit(summary, [text_table(["what", "target", "measured", "met"], rows)])
    return 0


_EXAMPLES = {
    "model": """examples:
  yolov5face bench model                                   # torch,onnxruntime x b1,8 x t1,2
  yolov5face bench model --backend onnxruntime --batch 1,8,32 --threads 1 --seconds 5
  yolov5face bench model --seconds 0.5 --rounds 2          # quick look
  yolov5face bench model --ort-options                     # + ORT session-option variants""",
    "pipeline": """examples:
  yolov5face bench pipeline                                 # zidane.jpg,test.jpg, batch 1,8
  yolov5face bench pipeline --images photo.jpg --batch 1 --threads 1,2
Image names are looked up in $YOLOV5FACE_DATA/images when they are not paths.""",
    "memory": """examples:
  yolov5face bench memory                                   # 1000 images
  yolov5face bench memory --images 50 --files zidane.jpg
Exit 1 when the child process imported torch.""",
    "server": """examples:
  yolov5face bench server                                   # ours + reference, 2000 requests
  yolov5face bench server --requests 10000                  # the issue's memory soak
  yolov5face bench server --no-reference --concurrency 1,8,32 --duration 10
Needs Java (TorchServe); every server is stopped at the end, also on errors.""",
    "report": """examples:
  yolov5face bench report --out docs/benchmarks.md    # what `make bench` runs (~5 min, 2 cores)
  yolov5face bench report --out /tmp/bench.md --quick       # machinery check, ~1 min
  yolov5face bench report --out /tmp/bench.md --only model,pipeline
Plots go to img/ beside the report.""",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `bench` and its sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "bench",
        help="benchmarks: model, pipeline, memory, server, batching, report",
        description=__doc__,
        epilog="\n\n".join(_EXAMPLES.values()),
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--weights", help="checkpoint (default: $YOLOV5FACE_WEIGHTS / shared)")
        q.add_argument("--img-size", type=int, default=320, help="network input (default 320)")

    q = sub.add_parser(
        "model",
        help="network-only throughput per backend/batch/threads",
        epilog=_EXAMPLES["model"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--backend", type=_csv, default=["torch", "onnxruntime"])
    q.add_argument("--batch", type=_csv_ints, default=[1, 8])
    q.add_argument("--threads", type=_csv_ints, default=[1, 2])
    q.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    q.add_argument("--rounds", type=int, default=5, help="interleaved slices per row")
    q.add_argument(
        "--ort-options",
        action="store_true",
        help="also time ONNX Runtime session-option variants at the largest batch/threads",
    )
    q.set_defaults(func=_cmd_model)

    q = sub.add_parser(
        "pipeline",
        help="JPEG bytes -> JSON: ours vs the reference design",
        epilog=_EXAMPLES["pipeline"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--images", type=_csv, default=list(DEFAULT_IMAGES))
    q.add_argument("--batch", type=_csv_ints, default=[1, 8], help="ours: images per call")
    q.add_argument("--threads", type=_csv_ints, default=[1])
    q.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    q.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case")
    q.add_argument("--rounds", type=int, default=5, help="interleaved slices per case")
    q.set_defaults(func=_cmd_pipeline)

    q = sub.add_parser(
        "memory",
        help="RSS of an in-process ONNX Runtime server",
        epilog=_EXAMPLES["memory"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--images", type=int, default=1000, metavar="N", help="images to run")
    q.add_argument("--files", type=_csv, default=list(MEMORY_FILES), help="images to cycle")
    q.add_argument("--timeout", type=float, default=900.0, help="bound on the child, s")
    q.set_defaults(func=_cmd_memory)

    q = sub.add_parser(
        "server",
        help="TorchServe: ours vs ceiling and vs reference",
        epilog=_EXAMPLES["server"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--image", default="zidane.jpg")
    q.add_argument("--concurrency", type=_csv_ints, default=list(DEFAULT_LEVELS))
    q.add_argument("--duration", type=float, default=8.0, help="counted seconds per level")
    q.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    q.add_argument(
        "--requests", type=int, default=2000, help="requests before reading memory (default 2000)"
    )
    q.add_argument("--workers", type=int, default=2, help="ours: workers (default 2)")
    q.add_argument("--reference-workers", type=int, default=4, help="reference (default 4)")
    q.add_argument("--ceiling-seconds", type=float, default=10.0, help="in-process ceiling run")
    q.add_argument("--soak-seconds", type=float, default=300.0, help="bound on the soak")
    q.add_argument("--ready-timeout", type=float, default=300.0)
    q.add_argument(
        "--server-warmup", type=float, default=5.0, help="uncounted load before the levels, s"
    )
    q.add_argument("--no-reference", action="store_true", help="skip the reference server")
    q.add_argument(
        "--rounds", type=int, default=1, help="whole sweeps; each level reports their median"
    )
    q.add_argument(
        "--eager-torch-requests",
        type=int,
        default=1000,
        help="then run ours with YOLOV5FACE_LAZY_TORCH=0 for N requests, to measure what "
        "torch costs a worker (0: skip)",
    )
    q.set_defaults(func=_cmd_server)

    from yolov5face.lab.bench_batching import add_parser as add_batching_parser

    add_batching_parser(sub, common, fmt)

    q = sub.add_parser(
        "report",
        help="run everything, write docs/benchmarks.md",
        epilog=_EXAMPLES["report"],
        formatter_class=fmt,
    )
    q.add_argument("--weights", help="checkpoint (default: $YOLOV5FACE_WEIGHTS / shared)")
    q.add_argument("--out", default="docs/benchmarks.md")
    q.add_argument("--quick", action="store_true", help="short runs (checks the machinery)")
    q.add_argument(
        "--only",
        type=_csv,
        default=None,
        help="sections: model,pipeline,memory,server,decode,loadtool",
    )
    q.set_defaults(func=_cmd_report)
