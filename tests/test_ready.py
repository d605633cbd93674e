"""`yolov5face ready` against a real TorchServe, tokens off and on (issue 23.4, 23.5, 23.6).

Readiness must be a real answer: a worker stopped by SIGSTOP stays READY in the management API,
so `ready` also runs an inference on a built-in image with a short timeout. With token
authorization on, `GET /ping` without a key answers 400 (so the probes are exec commands that
read the current key), keys expire (`token_expiration_min`; 0.1 minute here) and TorchServe
rewrites key_file.json when a key is renewed: `ready` must pass through all of that. The probe
commands run here are read from the Kubernetes manifest and the compose file themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from servers import ROOT, Server, start_server

from yolov5face.serving import readiness

pytestmark = [pytest.mark.server, pytest.mark.slow]

EXPIRY_MIN = "0.1"  # TorchServe reads a fractional number of minutes: keys last 6 s


@pytest.fixture(scope="module")
def model_store(tmp_path_factory, weights) -> Path:
    from yolov5face.serving.archive import build_archive

    store = tmp_path_factory.mktemp("model-store")
    build_archive(weights, store)
    return store


def _wait_ready(srv: Server, workers: int, timeout: float = 240.0) -> None:
    """Until `workers` fd1 workers are READY, reading the keys from the server's own run dir."""
    srv.wait_bound(timeout)  # on new ports if one was taken meanwhile
    deadline = time.monotonic() + timeout
    run_dir = srv.workdir / ".serve"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            pytest.fail(f"server exited:\n{srv.tail()}")
        states = readiness.worker_states(srv.management, "fd1", 5.0, run_dir) or []
        if sum(w.get("status") == "READY" for w in states) >= workers:
            srv.remember_descendants()
            return
        time.sleep(0.5)
    pytest.fail(f"fd1 not ready in {timeout:.0f} s:\n{srv.tail()}")


def _server(tmp_path_factory, weights, model_store, tokens: bool) -> Iterator[Server]:
    env = {"TS_DISABLE_TOKEN_AUTHORIZATION": "false" if tokens else "true"}
    if tokens:
        env["TS_TOKEN_EXPIRATION_TIME_MIN"] = EXPIRY_MIN
    srv = start_server(tmp_path_factory.mktemp("ready"), weights, model_store, env, workers=2)
    try:
        _wait_ready(srv, workers=2)
        yield srv
    finally:
        assert srv.stop() == 0, srv.tail()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory, weights, model_store) -> Iterator[Server]:
    yield from _server(tmp_path_factory, weights, model_store, tokens=False)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, weights, model_store) -> Iterator[Server]:
    yield from _server(tmp_path_factory, weights, model_store, tokens=True)


@pytest.fixture(params=["plain", "token"])
def server(request) -> Server:
    return request.getfixturevalue(f"{request.param}_server")


def ready(srv: Server, *args: str) -> subprocess.CompletedProcess:
    """`yolov5face ready ARGS` as a health check runs it: in the server's folder, no flags."""
    env = {k: v for k, v in os.environ.items() if k != "YOLOV5FACE_MANAGEMENT_TOKEN"}
    env |= {"TS_MANAGEMENT_ADDRESS": srv.management, "TS_INFERENCE_ADDRESS": srv.http}
    cmd = [sys.executable, "-m", "yolov5face", "ready", *args]
    return subprocess.run(cmd, cwd=srv.workdir, env=env, capture_output=True, text=True, timeout=60)


def verdict(proc: subprocess.CompletedProcess) -> dict:
    """The JSON line `ready` prints, with its exit code."""
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"rc": proc.returncode}


def manifest_probes() -> dict[str, list[str]]:
    """The health-check commands the Kubernetes Deployment and compose file run."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    dep = next(d for d in docs if d and d.get("kind") == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    probes = {k: container[k]["exec"]["command"] for k in container if k.endswith("Probe")}
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    test = compose["services"]["fd1"]["healthcheck"]["test"]
    probes["compose healthcheck"] = test[1:]  # after "CMD"
    return probes


def workers_of(srv: Server) -> list[psutil.Process]:
    """The TorchServe worker processes under the server."""
    children = psutil.Process(srv.proc.pid).children(recursive=True)
    workers = [p for p in children if "model_service_worker" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in children]
    return workers


def test_ready_passes_on_a_healthy_server(server):
    answer = verdict(ready(server))
    assert answer["rc"] == 0 and answer["ready"] is True, answer
    live = verdict(ready(server, "--live"))
    assert live["rc"] == 0 and live["check"] == "live", live


def test_manifest_probes_pass(server):
    probes = manifest_probes()
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(probes), probes
    for name, command in probes.items():
        assert command[:2] == ["yolov5face", "ready"], (name, command)
        proc = ready(server, *command[2:])
        assert proc.returncode == 0, (name, command, proc.stdout, proc.stderr)


def test_ready_fails_while_every_worker_is_stopped(server):
    stopped = workers_of(server)
    try:
        for proc in stopped:
            proc.send_signal(signal.SIGSTOP)
        # the lie `ready` must not repeat: the management API still says READY
        states = readiness.worker_states(server.management, "fd1", 5.0, server.workdir / ".serve")
        assert [w["status"] for w in states] == ["READY", "READY"]
        answer = verdict(ready(server, "--timeout", "2"))
        assert answer["rc"] == 1 and answer["ready"] is False, answer
        assert "no answer in 2 s" in answer["reason"], answer
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
    answer = verdict(ready(server, "--timeout", "10"))
    assert answer["rc"] == 0, answer


def _keys(srv: Server) -> dict:
    keys = readiness.read_keys(srv.workdir / ".serve")
    assert keys is not None
    return keys


def test_ping_needs_a_key_in_token_mode(token_server):
    """Why no probe is an httpGet: TorchServe refuses /ping without a key (400, not 401)."""
    refused = requests.get(f"{token_server.http}/ping", timeout=10)
    assert refused.status_code == 400 and readiness.REFUSED in refused.text


def test_ready_after_the_keys_are_renewed(token_server):
    run_dir = token_server.workdir / ".serve"
    before = _keys(token_server)
    for kind in ("management", "inference"):
        api = before["API"]["key"]
        renewed = requests.get(
            f"{token_server.management}/token",
            params={"type": kind},
            headers={"Authorization": f"Bearer {api}"},
            timeout=10,
        )
        assert renewed.status_code == 200, renewed.text
    after = _keys(token_server)
    assert after["inference"]["key"] != before["inference"]["key"]
    old = readiness.call(f"{token_server.http}/ping", before["inference"]["key"], timeout=10)
    assert old.refused, old
    answer = verdict(ready(token_server))
    assert answer["rc"] == 0, answer
    assert readiness.read_keys(run_dir)["API"] == before["API"]


def test_ready_after_the_keys_expire(token_server):
    """Keys last EXPIRY_MIN minutes; `ready` renews an expired one instead of failing."""
    keys = _keys(token_server)
    url = f"{token_server.management}/models/fd1"
    while not readiness.call(url, keys["management"]["key"], timeout=10).refused:
        time.sleep(0.2)  # until TorchServe itself refuses the key it wrote (a few seconds)
    assert readiness.call(f"{token_server.http}/ping", keys["inference"]["key"]).refused
    answer = verdict(ready(token_server))
    assert answer["rc"] == 0, answer
    assert verdict(ready(token_server, "--live"))["rc"] == 0
    renewed = _keys(token_server)
    assert renewed["management"]["key"] != keys["management"]["key"]
