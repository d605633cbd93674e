"""A real TorchServe for tests: `yolov5face serve` on free loopback ports, torn down cleanly.

Starting, waiting for READY workers and stopping are the launcher's (`ServerProcess`); this only
picks the command and the environment, and stops the server as Docker or systemd would.

Ports cannot race: they are found free, released, and only bound later by TorchServe, so another
process may take one in between. TorchServe then logs "Address already in use" and stops; the
server is started again on new ports (`wait_bound`, called by `wait_ready`), up to `ATTEMPTS`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from yolov5face.serving.launcher import ServerExited, ServerProcess, private_listeners

ROOT = Path(__file__).resolve().parents[1]
ATTEMPTS = 3
STARTED = "Model server started."  # TorchServe prints it once every listener is bound
BIND_FAILED = ("Address already in use", "Failed to bind")

Listeners = Callable[[], tuple[dict[str, str], dict[str, str]]]


class Server(ServerProcess):
    """`yolov5face serve` under test."""

    cmd: Sequence[str] = ()
    env: dict[str, str] = {}
    listeners: Listeners = staticmethod(private_listeners)
    attempts: int = 1

    @property
    def workdir(self) -> Path:
        """The directory it runs in (its `.serve` run dir is inside)."""
        return self.run_dir

    @classmethod
    def launch(cls, cmd: Sequence[str], workdir: Path, env: dict, log: Path, listeners: Listeners):
        """Start `cmd` on the ports `listeners()` picks (the TS_* overrides and the URLs)."""
        ports, urls = listeners()
        srv = cls.start(cmd, workdir, {**ports, **env}, private_ports=False, log=log)
        srv.urls.update(urls)
        srv.cmd, srv.env, srv.listeners = list(cmd), dict(env), listeners
        return srv

    def bind_failed(self) -> bool:
        """TorchServe said a port it was given was taken."""
        text = self.tail(200_000)
        return any(marker in text for marker in BIND_FAILED)

    def restart(self) -> None:
        """Stop this attempt and start the same command again on new ports."""
        super().stop(grace=30.0, group=True)
        assert self.log is not None
        os.replace(self.log, self.log.with_name(f"{self.log.name}.attempt{self.attempts}"))
        fresh = self.launch(self.cmd, self.run_dir, self.env, self.log, self.listeners)
        self.proc, self.urls, self.started = fresh.proc, fresh.urls, fresh.started
        self.descendants = {}
        self.attempts += 1

    def wait_bound(self, timeout: float = 240.0) -> None:
        """Until TorchServe has bound every listener, starting again on new ports when one was
        taken (at most ATTEMPTS starts). Returns early when the process exits for another reason
        (the caller sees that exit); raises TimeoutError with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.bind_failed():
                if self.attempts >= ATTEMPTS:
                    raise ServerExited(f"ports taken {self.attempts} times:\n{self.tail()}")
                self.restart()
                continue
            if STARTED in self.tail(200_000) or self.proc.poll() is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: listeners not bound in {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.2)  # the next poll

    def wait_ready(self, timeout: float = 240.0, workers: int = 1) -> None:
        """Until `workers` workers of fd1 are READY; raises with the log's tail otherwise."""
        start = time.monotonic()
        self.wait_bound(timeout)
        self.wait_workers("fd1", workers, max(1.0, timeout - (time.monotonic() - start)))

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
    listeners: Listeners = private_listeners,
) -> Server:
    """Start `yolov5face serve` (or `command`) in its own session on private ports/sockets.

    `listeners` picks the ports (the launcher's free loopback ports by default).
    """
    env = {"YOLOV5FACE_WEIGHTS": str(weights), "YOLOV5FACE_WORKERS": str(workers)}
    serve = [sys.executable, "-m", "yolov5face", "-v", "serve", "--model-store", str(model_store)]
    workdir.mkdir(parents=True, exist_ok=True)
    return Server.launch(
        command or serve, workdir, {**env, **(extra_env or {})}, workdir / "serve.log", listeners
    )
