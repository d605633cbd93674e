"""The TorchServes the lab runs: ours (`yolov5face serve`) and the reference design's, started
through the product's launcher; the CPU and memory of their processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yolov5face.lab.common import MB
from yolov5face.serving.launcher import CONFIG, ServerProcess, torchserve_command, torchserve_env

REFERENCE_MODEL = "ref"
REFERENCE_HANDLER = Path(__file__).resolve().parent / "reference_handler.py"


# Over os.environ for every server the lab starts (private listeners come from the launcher).
SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


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
    env = {**SERVER_ENV, **_ours_env(weights, workers), **(extra_env or {})}
    cmd = [sys.executable, "-m", "yolov5face", "serve", "--model-store", str(store)]
    return ServerProcess.start(cmd, workdir, env, log=workdir / "serve.log", name="ours")


def start_reference(workdir: Path, store: Path) -> ServerProcess:
    """The same TorchServe (config, log config, environment) serving ref.mar."""
    env = {**SERVER_ENV, **torchserve_env(workdir)}
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
