"""`bench memory`: RSS of a fresh process serving with ONNX Runtime in-process, without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from yolov5face.lab.common import (
    MB,
    child_command,
    md_table,
    progress_bar,
    resolve_image,
    target,
    text_table,
)

MEMORY_FILES = ("zidane.jpg", "test.jpg", "bus.jpg", "mask.jpg", "head.jpg", "head_small.jpg")


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
    bar = progress_bar(cfg["images"], "memory")
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
        child_command("yolov5face.lab.memory_bench", "memory_child", json.dumps(cfg)),
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
    result["target_mb"] = target("memory_mb").value
    result["met"] = target("memory_mb").met(result["rss_after_mb"]) and not result["torch_imported"]
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
