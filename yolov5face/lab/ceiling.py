"""The in-process ceiling: N processes each running Detector.detect in a loop, no server."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from yolov5face.lab.common import child_command


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
    cmd = child_command(
        "yolov5face.lab.ceiling", "ceiling_child", str(onnx), str(image), str(seconds), str(threads)
    )
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
