"""A real TorchServe for tests: `yolov5face serve` on free loopback ports, torn down cleanly.

Starting, waiting for READY workers and stopping are the launcher's (`ServerProcess`); this only
picks the command and the environment, and stops the server as Docker or systemd would.
"""

from __future__ import annotations

import sys
from pathlib import Path

from yolov5face.serving.launcher import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


class Server(ServerProcess):
    """`yolov5face serve` under test."""

    @property
    def workdir(self) -> Path:
        """The directory it runs in (its `.serve` run dir is inside)."""
        return self.run_dir

    def wait_ready(self, timeout: float = 240.0, workers: int = 1) -> None:
        """Until `workers` workers of fd1 are READY; raises with the log's tail otherwise."""
        self.wait_workers("fd1", workers, timeout)

    def stop(self, grace: float = 60.0, group: bool = False) -> int:
        """SIGTERM to the server alone (it must stop its TorchServe itself); its exit code."""
        return super().stop(grace, group)


def start_server(
    workdir: Path,
    weights: Path,
    model_store: Path,
    extra_env: dict | None = None,
    workers: int = 2,
    command: list[str] | None = None,
) -> Server:
    """Start `yolov5face serve` (or `command`) in its own session on private ports/sockets."""
    env = {"YOLOV5FACE_WEIGHTS": str(weights), "YOLOV5FACE_WORKERS": str(workers)}
    serve = [sys.executable, "-m", "yolov5face", "-v", "serve", "--model-store", str(model_store)]
    return Server.start(
        command or serve, workdir, {**env, **(extra_env or {})}, log=workdir / "serve.log"
    )
