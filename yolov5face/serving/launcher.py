"""Run TorchServe with `fd1` in the foreground: checks, archive, start, readiness, clean stop."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config" / "config.properties"
LOG_CONFIG = HERE / "config" / "log4j2.xml"
WORKER_SITE = HERE / "worker_site"


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


def management_token(run_dir: Path = Path(".serve")) -> str | None:
    """Management key when token authorization is on: env, else the server's key_file.json."""
    token = os.environ.get("YOLOV5FACE_MANAGEMENT_TOKEN")
    key_file = run_dir / "key_file.json"
    if token or not key_file.is_file():
        return token
    try:
        return json.loads(key_file.read_text())["management"]["key"]
    except (ValueError, KeyError, OSError):
        return None


def model_status(management_url: str, model: str = "fd1", timeout: float = 2.0) -> list[dict]:
    """Workers of `model` as reported by the management API ([] when unreachable)."""
    request = urllib.request.Request(f"{management_url}/models/{model}")
    token = management_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    entry = body[0] if isinstance(body, list) and body else body
    return entry.get("workers", []) if isinstance(entry, dict) else []


def is_ready(management_url: str, model: str = "fd1") -> bool:
    """True when at least one worker of `model` is READY (`/ping` is healthy much earlier)."""
    return any(w.get("status") == "READY" for w in model_status(management_url, model))


def wait_ready(management_url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll until ready, the process exits, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if is_ready(management_url):
            return True
        time.sleep(0.5)
    return False


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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's process group (frontend and every worker), SIGKILL stragglers."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the launcher so its pid does not linger as a zombie
        time.sleep(0.1)
    if _group_alive(proc.pid):
        logger.warning("TorchServe did not stop in %.0f s: killing it", grace)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
        "YOLOV5FACE_LAZY_TORCH": os.environ.get("YOLOV5FACE_LAZY_TORCH", "1"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(WORKER_SITE), os.environ.get("PYTHONPATH", "")) if p
        ),
    }


def torchserve_command(model_store: Path, config: Path, models: str = "fd1=fd1.mar") -> list[str]:
    """`torchserve --start --foreground` with our config, log config and models."""
    torchserve = shutil.which("torchserve") or str(Path(sys.executable).parent / "torchserve")
    return [
        torchserve,
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


def serve(
    weights: Path,
    model_store: Path,
    config: Path = CONFIG,
    run_dir: Path | None = None,
    ready_timeout: float = 300.0,
) -> int:
    """Build the archive if needed and run TorchServe until SIGINT/SIGTERM; returns exit code."""
    from yolov5face.serving.archive import build_archive

    check_java()
    verify_weights(weights)
    build_archive(weights, model_store)
    run_dir = Path(run_dir or ".serve").resolve()
    env = torchserve_env(run_dir)
    cmd = torchserve_command(model_store, config)
    logger.info("starting TorchServe: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=run_dir, env=env, start_new_session=True)
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = management_url(config)
        if wait_ready(url, ready_timeout, proc):
            logger.warning("fd1 is ready (management API %s)", url)
        elif stopping["signal"] is None and proc.poll() is None:
            logger.error("fd1 not ready after %.0f s; still waiting", ready_timeout)
        code = proc.wait()
    finally:
        stop_group(proc)  # the launcher may exit before the frontend and workers are gone
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir / "tmp", ignore_errors=True)
    if stopping["signal"] is not None:
        logger.warning("stopped by signal %d", stopping["signal"])
        return 0
    return code
