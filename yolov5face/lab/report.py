"""`bench report`: every section in one run, then docs/benchmarks.md and its plots."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolov5face.convert.onnx import cached_onnx
from yolov5face.lab.common import md_table, resolve_image
from yolov5face.lab.memory_bench import bench_memory
from yolov5face.lab.model_bench import bench_model, bench_ort_options
from yolov5face.lab.pipeline_bench import bench_pipeline
from yolov5face.lab.plots import plot_memory, plot_model, plot_pipeline, plot_server
from yolov5face.lab.report_sections import (
    GPU_SECTION,
    bounds_notes,
    decode_section,
    loadtool_section,
    memory_section,
    model_section,
    pipeline_section,
    server_section,
    target_rows,
)
from yolov5face.lab.server_bench import bench_server

logger = logging.getLogger(__name__)


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
        "yolov5face bench crops --rounds " + ("10" if quick else "40"),
        "yolov5face bench fp16" + (" --limit 6 --no-ap" if quick else ""),
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
        md_table(["what", "target", "measured", "met"], target_rows(results)),
        "",
        *[f"- {note}" for note in bounds_notes(results)],
        "",
    ]
    if "model" in results:
        parts += model_section(results["model"], plots["model"])
    if "pipeline" in results:
        parts += pipeline_section(results["pipeline"], plots["pipeline"])
    if "memory" in results:
        parts += memory_section(results["memory"])
    if "server" in results:
        parts += server_section(results["server"], plots["server"])
    parts += [f"![memory per process]({plots['memory']})", ""]
    if "decode" in results:
        parts += decode_section(results["decode"])
    if "loadtool" in results:
        parts += loadtool_section(results["loadtool"])
    if "options" in results:
        from yolov5face.lab.crops_bench import options_section

        parts += options_section(results["options"])
    if "fp16" in results:
        from yolov5face.lab.fp16_study import fp16_section

        parts += fp16_section(results["fp16"])
    parts += GPU_SECTION
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))


def run_report(
    weights: Path, out: Path, quick: bool = False, sections: Sequence[str] | None = None
) -> dict:
    """Run every section in one go and write the report; returns all results."""
    import gc

    settings = ReportSettings.quick() if quick else ReportSettings()
    sections = list(
        sections
        or ("model", "pipeline", "memory", "server", "decode", "loadtool", "options", "fp16")
    )
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
    if "options" in sections:
        from yolov5face.lab.crops_bench import measure

        logger.warning("bench report: per-request options")
        results["options"] = measure(rounds=10 if quick else 40)
    if "fp16" in sections:
        from yolov5face.lab.fp16_study import measure as measure_fp16

        logger.warning("bench report: fp16 against fp32")
        results["fp16"] = measure_fp16(weights=weights, limit=6 if quick else None, ap=not quick)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_report(results, out, settings, quick)
    return results
