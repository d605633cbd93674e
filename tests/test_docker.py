"""The CPU image, built and run as an operator would: `make test-docker` (pytest -m docker).

Off by default (it builds images: minutes): these tests skip unless the marker expression names
`docker`. scripts/docker_env.py provides the engine (a dockerd started here is stopped at the
end), a local Debian bookworm base when the pinned one cannot be pulled, and the build. The
service runs from docker/docker-compose.yml + docker/docker-compose.cpu.yml with Docker Compose
v2, under its own project name, host ports moved to free ones on 127.0.0.1 by the files'
YOLOV5FACE_*_PORT variables, the weights bind-mounted read-only; `down -v` at the end.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from yolov5face.tools.compare import golden_problems

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]  # builds: past the default 600 s
logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml")
TAG = "yolov5face:cpu-test"
SLIM_TAG = "yolov5face:cpu-slim-test"
APP_UID = 10001


def _load_docker_env() -> Any:
    spec = importlib.util.spec_from_file_location("docker_env", ROOT / "scripts" / "docker_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["docker_env"] = module
    spec.loader.exec_module(module)
    return module


denv = _load_docker_env()


@pytest.fixture(scope="module", autouse=True)
def selected(request: pytest.FixtureRequest) -> None:
    """Only when asked for: `pytest -m docker` (make test-docker)."""
    expr = request.config.getoption("markexpr") or ""
    if not re.search(r"(?<!not )\bdocker\b", expr):
        pytest.skip("builds and runs the Docker image: make test-docker (pytest -m docker)")


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    started = denv.Engine().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def base(engine) -> str:
    return denv.base_image()


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    """One snapshot of the build context: both images hold the same sources (the archive made
    by one is up to date for the other) whatever changes in the work tree meanwhile."""
    return denv.snapshot_context(tmp_path_factory.mktemp("context"))


def _build(tag: str, base: str, install_torch: bool, context: Path) -> str:
    seconds = denv.build(tag, base, install_torch=install_torch, context=context)
    size = denv.image_size(tag)
    logger.info(
        "built %s (INSTALL_TORCH=%d, base %s) in %.0f s: %.0f MB",
        tag,
        install_torch,
        base,
        seconds,
        size / 1e6,
    )
    return tag


@pytest.fixture(scope="module")
def cpu_image(base: str, context: Path) -> str:
    return _build(TAG, base, install_torch=True, context=context)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Compose:
    """`docker compose -p <project> -f docker-compose.yml -f docker-compose.cpu.yml ...`."""

    def __init__(self, project: str, image: str, weights_dir: Path) -> None:
        self.cli = denv.compose_cli()
        self.project = project
        self.http, self.mgmt, self.metrics, self.grpc = (free_port() for _ in range(4))
        env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOV5FACE_")}
        env.update(
            YOLOV5FACE_IMAGE=image,
            YOLOV5FACE_WEIGHTS_DIR=str(weights_dir),
            YOLOV5FACE_HTTP_PORT=f"127.0.0.1:{self.http}",
            YOLOV5FACE_MANAGEMENT_PORT=str(self.mgmt),
            YOLOV5FACE_METRICS_PORT=f"127.0.0.1:{self.metrics}",
            YOLOV5FACE_GRPC_PORT=f"127.0.0.1:{self.grpc}",
        )
        self.env = env

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        files = [a for f in COMPOSE_FILES for a in ("-f", f)]
        cmd = [*self.cli, "-p", self.project, *files, *args]
        result = subprocess.run(
            cmd, cwd=DOCKER_DIR, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def up(self) -> None:
        """Start (or keep) the service and wait for its health check to say healthy."""
        self("up", "-d", "--no-build", "--pull", "never", "--wait", "--wait-timeout", "600")

        # `--wait` was seen to return at once against Docker 20.10 (health "starting", no check
        # run yet): poll the health check's own verdict, which never turns "healthy" by time.
        def verdict() -> bool:
            state = self.inspect()["State"]
            status = (state.get("Health") or {}).get("Status")
            if not state["Running"] or state["Restarting"] or status == "unhealthy":
                logs = self("logs", "--no-color", "--tail", "80", check=False)
                pytest.fail(f"not healthy: {json.dumps(state)[-2000:]}\n{logs[-6000:]}")
            return status == "healthy"

        denv.wait_for(verdict, "the health check to say healthy", timeout=600, interval=2)

    def container(self) -> str:
        ids = self("ps", "-q", "fd1").split()
        assert len(ids) == 1, ids
        return ids[0]

    def inspect(self) -> dict[str, Any]:
        return json.loads(denv.docker("inspect", self.container()).stdout)[0]

    def volumes(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return denv.docker("volume", "ls", "-q", "--filter", label).stdout.split()

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", timeout=300, check=False)


@pytest.fixture(scope="module")
def service(cpu_image: str, weights: Path) -> Iterator[Compose]:
    compose = Compose("yolov5face-test", cpu_image, weights.parent)
    compose.down()  # leftovers of an interrupted run
    try:
        compose.up()
        yield compose
    finally:
        logger.info("service logs:\n%s", compose("logs", "--no-color", check=False)[-6000:])
        compose.down()
        assert compose.volumes() == [], "down -v left volumes"


def predict(compose: Compose, body: bytes) -> requests.Response:
    url = f"http://127.0.0.1:{compose.http}/predictions/fd1"
    return requests.post(url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)


def check_goldens(compose: Compose, images: Path, goldens: dict[str, list[dict]]) -> None:
    problems = {}
    for name, golden in goldens.items():
        response = predict(compose, (images / name).read_bytes())
        assert response.status_code == 200, (name, response.text)
        problems[name] = golden_problems(golden, response.json())
    assert problems == {name: [] for name in goldens}


def exec_in(compose: Compose, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return denv.docker("exec", compose.container(), *cmd, check=check)


def test_turns_healthy(service: Compose) -> None:
    state = service.inspect()["State"]
    assert state["Running"] and state["Health"]["Status"] == "healthy", state


def test_golden_answers(service: Compose, images: Path, goldens) -> None:
    check_goldens(service, images, goldens)


def test_bad_image_is_400(service: Compose, shared: Path) -> None:
    response = predict(service, (shared / "images" / "bad_image.jpg").read_bytes())
    assert response.status_code == 400, response.text


def test_runs_as_non_root(service: Compose) -> None:
    info = service.inspect()
    assert info["Config"]["User"].split(":")[0] == str(APP_UID)
    assert exec_in(service, "id", "-u").stdout.strip() == str(APP_UID)
    # every process of the container, seen from the host
    pids = denv.docker("top", service.container(), "-eo", "pid").stdout.split()[1:]
    assert pids
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        assert set(uids) == {str(APP_UID)}, (pid, uids)


def test_hardening_and_read_only_weights(service: Compose) -> None:
    info = service.inspect()
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"], host["CapDrop"]
    assert "no-new-privileges:true" in host["SecurityOpt"], host["SecurityOpt"]
    status = Path(f"/proc/{info['State']['Pid']}/status").read_text()
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/weights"]["Type"] == "bind" and mounts["/weights"]["RW"] is False
    assert exec_in(service, "touch", "/weights/x", check=False).returncode != 0
    for target in ("/var/lib/yolov5face/model-store", "/var/lib/yolov5face/engines"):
        assert mounts[target]["Type"] == "volume" and mounts[target]["RW"] is True


def test_management_port_on_loopback_only(service: Compose) -> None:
    bindings = service.inspect()["HostConfig"]["PortBindings"]
    assert [b["HostIp"] for b in bindings["8081/tcp"]] == ["127.0.0.1"], bindings
    # the test published the others on loopback too (ADDRESS:PORT in the port variables)
    for port in ("8080/tcp", "8082/tcp", "7070/tcp"):
        assert [b["HostIp"] for b in bindings[port]] == ["127.0.0.1"], bindings
    models = requests.get(f"http://127.0.0.1:{service.mgmt}/models", timeout=30)
    assert models.status_code == 200 and "fd1" in models.text, models.text
    # not reachable on this host's other addresses
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout
    others = [a for a in out.split() if ":" not in a and not a.startswith("127.")]
    for address in others:
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((address, service.mgmt)) != 0, address


def archive_identity(compose: Compose) -> str:
    """Inode and mtime of fd1.mar in the model-store volume (a rebuild replaces the file)."""
    return exec_in(compose, "stat", "-c", "%i %Y", "/var/lib/yolov5face/model-store/fd1.mar").stdout


def test_restart_reuses_model_store(service: Compose, images: Path, goldens) -> None:
    before = archive_identity(service)
    assert "built /var/lib/yolov5face/model-store/fd1.mar" in service("logs", "--no-color")
    service("restart", "fd1", timeout=300)
    service.up()  # waits for healthy again
    logs = service("logs", "--no-color")
    assert "/var/lib/yolov5face/model-store/fd1.mar is up to date" in logs, logs[-4000:]
    assert archive_identity(service) == before
    check_goldens(service, images, goldens)


def test_docker_stop_exits_zero_within_grace_period(service: Compose) -> None:
    container = service.container()
    grace = service.inspect()["Config"].get("StopTimeout")
    assert grace, "no stop_grace_period"
    stop = denv.docker("stop", container, timeout=grace + 120, check=False)
    assert stop.returncode == 0, stop.stderr
    state = json.loads(denv.docker("inspect", container).stdout)[0]["State"]
    # 0, not 137: it stopped on SIGTERM before the grace period ran out (no SIGKILL)
    assert not state["Running"] and state["ExitCode"] == 0 and not state["OOMKilled"], state


def test_slim_image_serves_an_archive_made_outside_it(
    cpu_image: str, base: str, context: Path, weights: Path, images: Path, goldens
) -> None:
    """Issue 25.2's two-step flow: fd1.mar made by the torch image into the model-store volume,
    then served by the INSTALL_TORCH=0 image, which reuses it (it could not export)."""
    slim = _build(SLIM_TAG, base, install_torch=False, context=context)
    no_torch = denv.docker("run", "--rm", slim, "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0, "the slim image has torch"
    compose = Compose("yolov5face-slim-test", cpu_image, weights.parent)
    compose.down()
    try:
        out = compose("run", "--rm", "--no-deps", "fd1", "yolov5face", "-v", "archive")
        assert "built /var/lib/yolov5face/model-store/fd1.mar" in out, out
        compose.env["YOLOV5FACE_IMAGE"] = slim
        compose.up()
        logs = compose("logs", "--no-color")
        assert "/var/lib/yolov5face/model-store/fd1.mar is up to date" in logs, logs[-4000:]
        check_goldens(compose, images, goldens)
    finally:
        compose.down()
