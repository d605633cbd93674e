"""`bench model`: network-only throughput per backend x batch x threads; ORT session options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.lab.common import (
    Case,
    md_table,
    target,
    text_table,
    timed_rounds,
    torch_threads_keeper,
)


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

    restore = torch_threads_keeper()
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
            "target": target("model_ratio").value,
            "met": target("model_ratio").met(ratios[head_key]),
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
