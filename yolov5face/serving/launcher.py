"""Run TorchServe with `fd1` in the foreground: checks, archive, start, readiness, clean stop."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yolov5face import settings
from yolov5face.serving import readiness
from yolov5face.serving.archive import python_tool

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config" / "config.properties"
LOG_CONFIG = HERE / "config" / "log4j2.xml"
WORKER_SITE = HERE / "worker_site"
FRONTEND_CLASS = "org.pytorch.serve.ModelServer"  # the Java frontend's main class
# Seconds `serve` gives the frontend to answer what it holds after SIGTERM. Netty's graceful
# shutdown (2 s quiet period, 15 s at most) and the worker stop fit well inside; the Kubernetes
# Deployment's terminationGracePeriodSeconds and compose's stop_grace_period leave more.
DRAIN_GRACE = 30.0


class ServeError(RuntimeError):
    """A precondition for serving is not met; the message says how to fix it."""


def check_java(min_version: int = 11) -> str:
    """Return the java path, or raise with the package to install."""
    java = shutil.which("java")
    hint = "install Java 11+ (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
    if java is None:
        raise ServeError(f"java not found: TorchServe's frontend needs it; {hint}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match:
        major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
        if major < min_version:
            raise ServeError(f"java {major} is too old; {hint}")
    return java


def verify_weights(path: Path) -> None:
    """Refuse a weights file named like an official checkpoint but with another digest."""
    from yolov5face.model.checkpoint import OFFICIAL_SHA256, sha256_file

    if not path.is_file():
        raise ServeError(
            f"weights not found: {path} (set YOLOV5FACE_WEIGHTS; see weights/README.md)"
        )
    expected = OFFICIAL_SHA256.get(path.name)
    if expected is not None and sha256_file(path) != expected:
        raise ServeError(f"checksum mismatch for {path}: expected {expected}")


def management_token(run_dir: Path = readiness.RUN_DIR) -> str | None:
    """Management key when token authorization is on: env, else the server's key_file.json."""
    return readiness.current_key("management", run_dir)


def model_status(
    management_url: str, model: str = "fd1", timeout: float = 2.0, run_dir: Path | None = None
) -> list[dict]:
    """Workers of `model` as reported by the management API ([] when unreachable).

    With tokens on, key_file.json in `run_dir` (default `.serve`) is read on each call and an
    expired or refused management key is renewed (readiness.authorised_call).
    """
    workers = readiness.worker_states(management_url, model, timeout, run_dir or readiness.RUN_DIR)
    return workers or []


def is_ready(management_url: str, model: str = "fd1") -> bool:
    """True when at least one worker of `model` is READY (`/ping` is healthy much earlier)."""
    return any(w.get("status") == "READY" for w in model_status(management_url, model))


def _property(config: Path, key: str, default: str) -> str:
    env = os.environ.get(f"TS_{key.upper()}")
    if env:
        return env
    for line in config.read_text().splitlines():
        if line.strip().startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    return default


def management_url(config: Path = CONFIG) -> str:
    """The management address TorchServe will use (env override first)."""
    url = _property(config, "management_address", "http://127.0.0.1:8081")
    return url.replace("0.0.0.0", "127.0.0.1")


def inference_url(config: Path = CONFIG) -> str:
    """The inference address TorchServe will use (env override first), reachable locally."""
    url = _property(config, "inference_address", "http://127.0.0.1:8080")
    return url.replace("0.0.0.0", "127.0.0.1")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerExited(RuntimeError):
    """The server's process ended before its workers were ready."""


@dataclass
class ServerProcess:
    """TorchServe, or a command that runs it (`yolov5face serve`), in a session of its own.

    `start` launches it (every listener on a private loopback port unless told otherwise, the
    output to a log file when given one); `wait_workers` polls the management API until enough
    workers are READY; `stop` ends its process group and any descendant that left the group.
    """

    proc: subprocess.Popen
    run_dir: Path
    urls: dict[str, str]
    log: Path | None = None
    name: str = "TorchServe"
    started: float = field(default_factory=time.monotonic)
    descendants: dict[int, Any] = field(default_factory=dict)  # pid -> psutil.Process

    @classmethod
    def start(
        cls,
        cmd: Sequence[str],
        run_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        private_ports: bool = True,
        management: str | None = None,
        log: Path | None = None,
        name: str = "TorchServe",
    ) -> ServerProcess:
        """Run `cmd` in `run_dir` with `env` over os.environ (and over the private listeners)."""
        listeners, urls = private_listeners() if private_ports else ({}, {})
        if management is not None:
            urls["management"] = management
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") if log is not None else contextlib.nullcontext() as out:
            proc = subprocess.Popen(
                list(cmd),
                cwd=run_dir,
                env={**os.environ, **listeners, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        return cls(proc, run_dir, urls, log, name)

    @property
    def http(self) -> str:
        """The inference address (private ports only)."""
        return self.urls.get("http", "")

    @property
    def management(self) -> str:
        """The management address."""
        return self.urls.get("management", "")

    @property
    def metrics(self) -> str:
        """The metrics address (private ports only)."""
        return self.urls.get("metrics", "")

    @property
    def grpc(self) -> str:
        """The gRPC inference host:port (private ports only)."""
        return self.urls.get("grpc", "")

    def tail(self, chars: int = 4000) -> str:
        """The end of the log file ('' without one)."""
        try:
            return self.log.read_text(errors="replace")[-chars:] if self.log else ""
        except OSError:
            return ""

    def workers(self, model: str = "fd1", timeout: float = 5.0) -> list[dict]:
        """Workers of `model` as the management API lists them ([] when unreachable)."""
        return model_status(self.management, model, timeout)

    def remember_descendants(self) -> None:
        """Record every process under the server, so that `stop` ends exactly these."""
        try:
            import psutil
        except ImportError:  # the group is then all `stop` ends
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)

    def wait_workers(self, model: str = "fd1", workers: int = 1, timeout: float = 300.0) -> float:
        """Seconds from the start until `workers` workers of `model` are READY.

        Raises ServerExited when the process ends first, TimeoutError after `timeout` s; both
        messages end with the log's tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerExited(
                    f"{self.name} exited with code {self.proc.returncode} before {model} was "
                    f"ready:\n{self.tail()}"
                )
            self.remember_descendants()
            if sum(w.get("status") == "READY" for w in self.workers(model)) >= workers:
                return time.monotonic() - self.started
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: {model} not ready in {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.5)

    def terminate(self, group: bool = True) -> None:
        """SIGTERM the whole process group, or only its leader (as Docker or systemd would)."""
        if not group:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        elif _group_alive(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def frontend(self) -> Any | None:
        """TorchServe's Java frontend among the server's processes (a psutil.Process), or None."""
        self.remember_descendants()
        for child in list(self.descendants.values()):
            with contextlib.suppress(Exception):  # psutil.Error: gone, or not ours to read
                if child.is_running() and FRONTEND_CLASS in " ".join(child.cmdline()):
                    return child
        return None

    def drain(self) -> bool:
        """SIGTERM the Java frontend alone; False when there is none (then `terminate` instead).

        The frontend closes its listeners at once (new connections are refused, so readiness
        fails), answers the requests it already holds, then stops its workers and exits. The
        workers must not get the signal themselves: a worker that dies first fails its batch.
        """
        frontend = self.frontend()
        if frontend is None:
            return False
        with contextlib.suppress(Exception):
            frontend.terminate()
            logger.warning("%s: draining (SIGTERM to frontend pid %d)", self.name, frontend.pid)
            return True
        return False

    def stop(self, grace: float = 60.0, group: bool = True) -> int:
        """`terminate`, wait up to `grace` s for the group to end, SIGKILL what is left.

        Recorded descendants that left the group are waited for and killed too (psutil checks
        their identity, so a reused pid is left alone). Returns the leader's exit code.
        """
        self.remember_descendants()
        self.terminate(group)
        deadline = time.monotonic() + grace
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            self.proc.poll()  # reap the leader so its pid does not linger as a zombie
            time.sleep(0.1)
        if _group_alive(self.proc.pid):
            logger.warning("%s did not stop in %.0f s: killing it", self.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        if self.descendants:
            import psutil

            _, alive = psutil.wait_procs(list(self.descendants.values()), timeout=grace)
            for child in alive:
                logger.warning("%s: process %d still running: killing it", self.name, child.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        return code


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def private_listeners() -> tuple[dict[str, str], dict[str, str]]:
    """TS_* overrides putting every TorchServe listener on a free loopback port, and the URLs.

    Worker sockets are /tmp/.ts.sock.<port>, so the first worker port is randomised too: two
    servers on one machine (tests, benchmarks, `make serve`) then never collide.
    """
    http, mgmt, metrics, grpc_inf, grpc_mgmt = free_ports(5)
    env = {
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{http}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{mgmt}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1",
        "TS_GRPC_INFERENCE_PORT": str(grpc_inf),
        "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1",
        "TS_GRPC_MANAGEMENT_PORT": str(grpc_mgmt),
        "TS_INITIAL_WORKER_PORT": str(random.randint(20000, 60000)),
    }
    urls = {
        "http": env["TS_INFERENCE_ADDRESS"],
        "management": env["TS_MANAGEMENT_ADDRESS"],
        "metrics": env["TS_METRICS_ADDRESS"],
        "grpc": f"127.0.0.1:{grpc_inf}",
    }
    return env, urls


def torchserve_env(run_dir: Path) -> dict[str, str]:
    """Environment for a TorchServe run rooted at `run_dir` (private pid file, logs there)."""
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(run_dir / "tmp"),  # TorchServe's pid file lives here, not in shared /tmp
        "LOG_LOCATION": os.environ.get("LOG_LOCATION", str(run_dir / "logs")),
        "METRICS_LOCATION": os.environ.get("METRICS_LOCATION", str(run_dir / "logs")),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
        # Workers skip TorchServe's unused `import torch` (see worker_site/sitecustomize.py).
        "YOLOV5FACE_LAZY_TORCH": "1" if settings.flag("YOLOV5FACE_LAZY_TORCH") else "0",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(WORKER_SITE), os.environ.get("PYTHONPATH", "")) if p
        ),
    }


def torchserve_command(model_store: Path, config: Path, models: str = "fd1=fd1.mar") -> list[str]:
    """`torchserve --start --foreground` with our config, log config and models."""
    return [
        *python_tool("ts.model_server", "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store.resolve()),
        "--ts-config",
        str(config.resolve()),
        "--log-config",
        str(LOG_CONFIG),
        "--models",
        models,
    ]


def _wait_drained(
    server: ServerProcess, stopping: dict[str, Any], port: int | None, grace: float
) -> int:
    """The server's exit code; after a signal, drain it first (-1: not gone in time).

    Once signalled, the frontend keeps serving until no connection to `port` owes an answer
    (twice in a row, 0.1 s apart) or `grace` s have passed; then it gets SIGTERM (`drain`),
    and 10 s more to stop its workers and exit.
    """
    from yolov5face.serving import drain

    signalled = False
    quiet = 0
    while True:
        try:
            return server.proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        since = stopping["at"]
        if since is None:
            continue
        waited = time.monotonic() - since
        if not signalled:
            owed = drain.open_requests(port) if port else None
            quiet = quiet + 1 if owed == 0 else 0
            if quiet >= 2 or owed is None or waited > grace:
                if waited > grace:
                    logger.warning("%s: %s answers owed after %.0f s", server.name, owed, grace)
                signalled = True
                if not server.drain():
                    server.terminate()
        elif waited > grace + 10.0:
            logger.warning("%s did not stop after draining: stopping it", server.name)
            return -1


def serve(
    weights: Path,
    model_store: Path,
    config: Path = CONFIG,
    run_dir: Path | None = None,
    ready_timeout: float = 300.0,
    grace: float = DRAIN_GRACE,
) -> int:
    """Build the archive if needed and run TorchServe until SIGINT/SIGTERM; returns exit code.

    The first SIGTERM/SIGINT drains: readiness fails at once (`.serve/draining`), requests
    already received are answered (within `grace` s), then the frontend stops (`drain`) and
    stops its workers. A second signal stops everything at once. Returns 0 after a signal.
    """
    from yolov5face.serving.archive import build_archive, model_config
    from yolov5face.serving.engines import pre_start, served_backend

    check_java()
    verify_weights(weights)
    try:
        served_backend()  # refused before any archive is built
    except ValueError as exc:
        raise ServeError(str(exc)) from exc
    mar = build_archive(weights, model_store)
    try:  # the TensorRT engine is built here, before any worker starts (serving/engines.py)
        backend_env = pre_start(mar, model_config())
    except (ValueError, RuntimeError) as exc:
        raise ServeError(str(exc)) from exc
    run_dir = Path(run_dir or ".serve").resolve()
    env = {**torchserve_env(run_dir), **backend_env}
    cmd = torchserve_command(model_store, config)
    logger.info("starting TorchServe: %s", " ".join(cmd))
    url = management_url(config)
    server = ServerProcess.start(cmd, run_dir, env, private_ports=False, management=url)
    port = urlsplit(inference_url(config)).port
    draining = run_dir / readiness.DRAINING
    draining.unlink(missing_ok=True)
    stopping: dict[str, Any] = {"signal": None, "at": None, "serving": False, "early": False}

    def on_signal(signum, _frame):
        if stopping["signal"] is None and stopping["serving"]:
            # drain: `yolov5face ready` fails from now on; `_wait_drained` stops the frontend
            # once every request it holds is answered, and the frontend stops its workers
            stopping["signal"], stopping["at"] = signum, time.monotonic()
            draining.touch()
            logger.warning("signal %d: draining (readiness fails from now on)", signum)
        else:  # before fd1 serves there is nothing to drain; a second signal: stop now
            stopping["signal"] = stopping["signal"] or signum
            server.terminate()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.wait_workers("fd1", 1, ready_timeout)
            logger.warning("fd1 is ready (management API %s)", url)
        except TimeoutError:
            if stopping["signal"] is None:
                logger.error("fd1 not ready after %.0f s; still waiting", ready_timeout)
        except ServerExited:
            stopping["early"] = True  # its exit code is returned below
        stopping["serving"] = True
        code = _wait_drained(server, stopping, port, grace)
    finally:
        server.stop(grace=10.0)  # what the drain left (workers), then SIGKILL
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir / "tmp", ignore_errors=True)
        draining.unlink(missing_ok=True)
    if stopping["signal"] is not None:
        logger.warning("stopped by signal %d", stopping["signal"])
        return 0
    if stopping["early"] and code == 0:  # e.g. a port in use: TorchServe logs it and exits 0
        logger.error("TorchServe stopped before fd1 was serving (see its log: a port in use?)")
        return 1
    return code
