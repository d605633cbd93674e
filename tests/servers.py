"""A real TorchServe for tests: `yolov5face serve` on free loopback ports, torn down cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from yolov5face.serving.launcher import private_listeners

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    proc: subprocess.Popen
    workdir: Path
    http: str
    management: str
    metrics: str
    grpc: str
    log: Path

    def workers(self) -> list[dict]:
        resp = requests.get(f"{self.management}/models/fd1", timeout=5)
        return resp.json()[0]["workers"] if resp.ok else []

    def wait_ready(self, timeout: float = 240.0, workers: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                if sum(w["status"] == "READY" for w in self.workers()) >= workers:
                    return
            except (requests.RequestException, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"fd1 not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def start_server(
    workdir: Path,
    weights: Path,
    model_store: Path,
    extra_env: dict | None = None,
    workers: int = 2,
    command: list[str] | None = None,
) -> Server:
    """Start `yolov5face serve` (or `command`) in its own session on private ports/sockets."""
    listeners, urls = private_listeners()
    env = {
        **os.environ,
        "YOLOV5FACE_WEIGHTS": str(weights),
        "YOLOV5FACE_WORKERS": str(workers),
        **listeners,
        **(extra_env or {}),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            command
            or [
                sys.executable,
                "-m",
                "yolov5face",
                "-v",
                "serve",
                "--model-store",
                str(model_store),
            ],
            cwd=workdir,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(
        proc, workdir, urls["http"], urls["management"], urls["metrics"], urls["grpc"], log
    )
