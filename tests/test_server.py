"""The real product: TorchServe with fd1, started by a fixture on free loopback ports."""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from servers import Server, start_server

from yolov5face.serving.busy_board import usable_cores
from yolov5face.tools.client import AsyncClient, Client, GrpcClient, ServerError
from yolov5face.tools.compare import golden_problems

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, weights) -> Path:
    from yolov5face.serving.archive import build_archive

    store = tmp_path_factory.mktemp("model-store")
    build_archive(weights, store)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory, weights, model_store):
    srv = start_server(tmp_path_factory.mktemp("serve"), weights, model_store)
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        rc = srv.stop()
        leftovers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(model_store) in " ".join(p.info["cmdline"] or [])
        ]
        assert rc == 0, srv.log.read_text()[-3000:]
        assert not leftovers, leftovers
        assert not list((srv.workdir / ".serve" / "tmp").glob("*.pid"))


@pytest.fixture(scope="session")
def served_detector(model_store, tmp_path_factory):
    """An in-process Detector on the very model the archive carries (same ONNX, one thread)."""
    from yolov5face.pipeline.detector import Detector

    out = tmp_path_factory.mktemp("mar")
    with zipfile.ZipFile(model_store / "fd1.mar") as zf:
        zf.extract("fd1.onnx", out)
    return Detector(out / "fd1.onnx", backend="onnxruntime", threads=1)


@pytest.fixture(scope="session")
def expected(served_detector, images, golden_names, goldens):
    """Image bytes and the in-process answers, which meet the goldens themselves."""
    blobs = {n: (images / n).read_bytes() for n in golden_names}
    want = dict(zip(blobs, served_detector.detect(list(blobs.values()))))
    assert {n: golden_problems(goldens[n], want[n]) for n in blobs} == {n: [] for n in blobs}
    return blobs, want


@pytest.fixture(scope="session")
def check(expected, goldens):
    """check(name, faces): a served answer equals the in-process one and meets the golden
    (the pairing rule, descending conf, key order), the independent reference."""
    want = expected[1]

    def check(name: str, faces) -> None:
        assert golden_problems(goldens[name], faces) == [], name
        assert faces == want[name], name

    return check


def predict(server: Server, body: bytes, method: str = "PUT", **kw) -> requests.Response:
    return requests.request(method, f"{server.http}/predictions/fd1", data=body, timeout=60, **kw)


def test_ping_and_ready(server):
    assert requests.get(f"{server.http}/ping", timeout=5).json()["status"] == "Healthy"
    statuses = [w["status"] for w in server.workers()]
    assert statuses == ["READY", "READY"]


def test_every_image_matches_golden_and_in_process(server, expected, check):
    blobs, _ = expected
    for name, blob in blobs.items():
        resp = predict(server, blob, "POST")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        check(name, resp.json())


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("PUT", {}),  # reference Python client: requests.put(data=...), no Content-Type
        ("PUT", {"Content-Type": "application/octet-stream"}),  # reference Go client
        ("POST", {"Content-Type": "image/jpeg"}),
        ("POST", {}),
    ],
)
def test_client_request_shapes(server, expected, check, method, headers):
    resp = predict(server, expected[0]["zidane.jpg"], method, headers=headers)
    assert resp.status_code == 200
    check("zidane.jpg", resp.json())


def test_multipart_form_field(server, expected, check):
    blobs, _ = expected
    for field in ("data", "file"):
        files = {field: ("zidane.jpg", blobs["zidane.jpg"], "image/jpeg")}
        resp = requests.post(f"{server.http}/predictions/fd1", files=files, timeout=60)
        assert resp.status_code == 200, field
        check("zidane.jpg", resp.json())


@pytest.mark.parametrize("kind", ["bad_image", "empty", "truncated", "empty_probe"])
def test_bad_requests_get_400_json(server, images, kind):
    good = (images / "zidane.jpg").read_bytes()
    body = {
        "bad_image": (images / "bad_image.jpg").read_bytes(),
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "empty_probe": b"",
    }[kind]
    headers = {"Content-Type": "application/octet-stream"} if kind == "empty_probe" else {}
    resp = predict(server, body, headers=headers)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"not an image"),
        ("application/json", b'{"image": "not an image"}'),
        ("application/json", b"[1, 2, 3]"),
        ("application/json", b'"a string"'),
    ],
)
def test_non_image_bodies_get_400_json(server, content_type, body):
    """TorchServe hands text and JSON bodies to the handler as str/dict/list, not bytes: each
    gets the handler's own 400 JSON error, never a crash (500) or a traceback."""
    resp = predict(server, body, "POST", headers={"Content-Type": content_type})
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    answer = resp.json()
    assert list(answer) == ["error"] and isinstance(answer["error"], str), answer
    assert answer["error"] and "TypeError" not in answer["error"], answer
    if content_type == "text/plain":
        assert answer["error"].startswith("expected raw image bytes"), answer


def test_body_over_limit_gets_413(server):
    resp = predict(server, b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024))
    assert resp.status_code == 413


def test_image_over_max_pixels_gets_its_own_400(server, expected, check):
    """A real 8000x5001 PNG (40.0 MP, just over the 40 MP limit, ~120 KB): a 400 naming the size
    and the limit, read from the header before any decode; the request beside it is answered."""
    import cv2
    import numpy as np

    big = cv2.imencode(".png", np.zeros((5001, 8000, 3), np.uint8))[1].tobytes()
    blobs, _ = expected
    with cf.ThreadPoolExecutor(2) as pool:
        over, good = pool.map(lambda body: predict(server, body), [big, blobs["zidane.jpg"]])
    assert over.status_code == 400, over.text
    limit = "image too large: 8000x5001 = 40008000 pixels (limit 40000000)"
    assert over.json() == {"error": limit}
    assert good.status_code == 200, good.text
    check("zidane.jpg", good.json())


def _own_400_beside_goldens(server, expected, check, bad: bytes, error: str, rounds: int) -> None:
    """`bad` and zidane.jpg sent side by side `rounds` times (so they share batches): `bad`
    gets its own 400 with `error`, every zidane.jpg its golden answer."""
    blobs, _ = expected
    bodies = [bad, blobs["zidane.jpg"]] * rounds
    with cf.ThreadPoolExecutor(2 * rounds) as pool:
        answers = list(pool.map(lambda body: predict(server, body), bodies))
    for body, resp in zip(bodies, answers):
        if body is bad:
            assert resp.status_code == 400, resp.text
            assert resp.json() == {"error": error}
        else:
            assert resp.status_code == 200, resp.text
            check("zidane.jpg", resp.json())


def test_image_wider_than_opencv_reads_gets_its_own_400(server, expected, check):
    """A BMP header of 1114112 x 1 (under max_pixels, over OpenCV's 2**20 a side): OpenCV's
    assertion used to escape the decoder and fail the whole batch (503 for its batch-mates)."""
    import struct

    wide = b"BM" + bytes(12) + struct.pack("<IiiHH", 40, 1_114_112, 1, 1, 24) + bytes(24)
    error = "image too large: 1114112x1 (at most 1048576 pixels a side)"
    _own_400_beside_goldens(server, expected, check, wide, error, rounds=4)


def test_jpeg_with_thousands_of_scans_gets_its_own_400(server, expected, check):
    """A 4 MP progressive JPEG with its last scan repeated 5000 times (+3 MB): each scan is a
    pass over the image, and decoding ran past TorchServe's 30 s response timeout: the worker
    was killed and its batch-mates got 500 with it."""
    import re

    import cv2
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (250, 250, 3), np.uint8)
    image = cv2.resize(noise, (2000, 2000), interpolation=cv2.INTER_NEAREST)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    jpeg = cv2.imencode(".jpg", image, params)[1].tobytes()
    last = jpeg[[m.start() for m in re.finditer(rb"\xff\xda", jpeg)][-1] : -2]
    bomb = jpeg[:-2] + last * 5000 + b"\xff\xd9"
    error = "JPEG with 5010 scans; at most 32 are accepted"
    _own_400_beside_goldens(server, expected, check, bomb, error, rounds=2)


def test_64_concurrent_mixed_requests(server, expected, check, images):
    blobs, _ = expected
    bad = [(images / "bad_image.jpg").read_bytes(), b"", blobs["bus.jpg"][:1000]]
    jobs = [(n, blobs[n]) for n in blobs] * 8 + [(None, b) for b in bad] * 6
    jobs = jobs[:64]
    with cf.ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda job: predict(server, job[1]), jobs))
    for (name, _), resp in zip(jobs, responses):
        if name is None:
            assert resp.status_code == 400 and "error" in resp.json()
        else:
            assert resp.status_code == 200, name
            check(name, resp.json())
    assert requests.get(f"{server.http}/ping", timeout=5).ok
    assert [w["status"] for w in server.workers()] == ["READY", "READY"]


def test_python_clients(server, expected, check, images):
    import asyncio

    blobs, _ = expected
    with Client(server.http) as client:
        check("zidane.jpg", client.detect(blobs["zidane.jpg"]))
        with pytest.raises(ServerError) as err:
            client.detect((images / "bad_image.jpg").read_bytes())
        assert err.value.status == 400

    async def run():
        async with AsyncClient(server.http) as client:
            return await asyncio.gather(*(client.detect(b) for b in blobs.values()))

    for name, faces in zip(blobs, asyncio.run(run())):
        check(name, faces)


def test_grpc_predictions(server, expected, check, images):
    blobs, _ = expected
    with GrpcClient(server.grpc) as client:
        assert client.ping()
        for name, blob in blobs.items():
            check(name, client.detect(blob))
        with pytest.raises(ServerError, match="not an image"):
            client.detect((images / "bad_image.jpg").read_bytes())


def test_detect_url_prints_same_json(server, images, golden_names, goldens, served_detector):
    args = [str(images / n) for n in golden_names]
    remote = subprocess.run(
        [sys.executable, "-m", "yolov5face", "detect", "--url", server.http, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "yolov5face",
            "detect",
            "--weights",
            str(served_detector.weights),
            "--threads",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = json.loads(remote.stdout)
    assert printed == json.loads(local.stdout)
    for name, arg in zip(golden_names, args):
        assert golden_problems(goldens[name], printed[arg]) == [], name


def _counter(text: str, name: str) -> float:
    """Sum of a Prometheus counter's samples over all label sets (0 when absent)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def _metrics_after(server: Server, before: str, images: int, timeout: float = 120.0) -> str:
    """The metrics text once Fd1Images grew by `images` over `before` (counters lag ~1 s).

    A bounded poll: the generous `timeout` only stops a test whose counter never grows.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = requests.get(f"{server.metrics}/metrics", timeout=10).text
        if _counter(text, "Fd1Images") >= _counter(before, "Fd1Images") + images:
            return text
        time.sleep(0.2)  # the next poll
    raise TimeoutError(f"Fd1Images did not grow by {images} in {timeout} s")


def test_metrics_show_stage_timings(server, expected):
    """Per-stage counters reach the metrics endpoint (summed, flushed once a second)."""
    before = requests.get(f"{server.metrics}/metrics", timeout=10).text
    for _ in range(3):
        assert predict(server, expected[0]["zidane.jpg"]).status_code == 200
    text = _metrics_after(server, before, images=3)
    for stage in ("Decode", "Preprocess", "Infer", "Postprocess"):
        assert _counter(text, f"Fd1{stage}Ms") > _counter(before, f"Fd1{stage}Ms"), stage
    assert "Fd1BadImages{" in text and _counter(text, "Fd1Batches") >= 1


def test_a_burst_on_one_worker_is_split_over_the_idle_core(server, expected, check):
    """Bursts of 4 mixed requests: a batch taken while the other worker idles runs on both cores."""
    if usable_cores() < 2:
        pytest.skip("batch splitting needs 2 or more usable cores")
    blobs, _ = expected
    names = ["zidane.jpg", "test.jpg", "bus.jpg", "mask.jpg"]
    before = requests.get(f"{server.metrics}/metrics", timeout=10).text
    with cf.ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            responses = list(pool.map(lambda n: predict(server, blobs[n], "POST"), names))
            for name, resp in zip(names, responses):
                assert resp.status_code == 200, name
                check(name, resp.json())
    text = _metrics_after(server, before, images=80)
    assert _counter(text, "Fd1SplitBatches") > _counter(before, "Fd1SplitBatches")


def test_no_log_lines_per_request(server, expected):
    """40 requests add no INFO lines to the server's log (neither frontend nor worker)."""
    before = server.log.read_text(errors="replace").splitlines()
    metrics = requests.get(f"{server.metrics}/metrics", timeout=10).text
    with cf.ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda _: predict(server, expected[0]["zidane.jpg"]).status_code, range(40))
        )
    assert codes == [200] * 40
    # The workers' counters travel on the same stdout as their log lines, read in order by the
    # frontend: once the counters show all 40 images, every line those batches wrote is logged.
    _metrics_after(server, metrics, images=40)
    added = server.log.read_text(errors="replace").splitlines()[len(before) :]
    assert len(added) < 5, added[:20]


def _in_a_batch(busy_file: Path) -> bool:
    """True while the worker owning `busy_file` holds its lock: it is inside a batch."""
    fd = os.open(busy_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def _batch_size(model_store: Path) -> int:
    with zipfile.ZipFile(model_store / "fd1.mar") as zf:
        return int(yaml.safe_load(zf.read("model-config.yaml"))["batchSize"])


def test_worker_killed_under_load_recovers(server, expected, goldens, model_store):
    """SIGKILL a worker inside a batch while requests flow: the requests in flight fail with a
    5xx, at most one batch of them; no answer is ever wrong; the worker comes back."""
    blobs, want = expected
    victim = server.workers()[0]["pid"]
    # The worker runs in its model dir; its busy-board file is absent on a 1-core machine.
    busy = list(Path(psutil.Process(victim).cwd()).glob(f".busy/worker-{victim}.busy"))
    assert busy or usable_cores() < 2, "the worker's busy-board file was not found"
    statuses: list[int] = []
    wrong = 0
    lock = threading.Lock()
    counts = {"started": 0, "done": 0}

    def one(name: str) -> None:
        nonlocal wrong
        with lock:
            counts["started"] += 1
        try:
            resp = predict(server, blobs[name])
        finally:
            with lock:
                counts["done"] += 1
        statuses.append(resp.status_code)
        if resp.status_code == 200:
            faces = resp.json()
            wrong += faces != want[name] or bool(golden_problems(goldens[name], faces))

    names = list(blobs) * 25
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, n) for n in names]
        deadline = time.monotonic() + 120
        while True:  # bounded poll: answers flowing, requests in flight, the victim in a batch
            with lock:
                in_flight, done = counts["started"] - counts["done"], counts["done"]
            if done >= 8 and in_flight > 0 and (not busy or _in_a_batch(busy[0])):
                os.kill(victim, signal.SIGKILL)
                break
            if time.monotonic() > deadline or done == len(names):
                pytest.fail(f"never saw the victim inside a batch ({done} answers)")
            time.sleep(0.001)  # the next poll
        cf.wait(futures)
    assert in_flight > 0
    assert wrong == 0
    failed = [s for s in statuses if s != 200]
    assert all(500 <= s < 600 for s in failed), failed
    assert len(failed) <= _batch_size(model_store), failed  # the killed batch, no more
    if busy:  # the kill landed inside a batch: those requests had to fail
        assert failed, "the worker was killed inside a batch, yet every request succeeded"
    deadline = time.monotonic() + 120
    while True:  # bounded poll until the pool is back to 2 READY workers
        workers = server.workers()
        if len(workers) == 2 and all(w["status"] == "READY" for w in workers):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"workers did not recover: {workers}")
        time.sleep(0.5)  # the next poll
    assert victim not in [w["pid"] for w in workers]
    assert golden_problems(goldens["zidane.jpg"], predict(server, blobs["zidane.jpg"]).json()) == []
    print(f"requests failed while the worker was down: {len(failed)} of {len(statuses)}")


def test_workers_do_not_load_torch(server, expected):
    """TorchServe's own `import torch` is deferred: served workers never map libtorch."""
    predict(server, expected[0]["test.jpg"])
    for worker in server.workers():
        proc = psutil.Process(worker["pid"])
        libs = {m.path for m in proc.memory_maps(grouped=True)}
        assert any("onnxruntime" in p for p in libs)  # the maps are read and the model is served
        assert not [p for p in libs if "libtorch" in p]
        assert proc.memory_info().rss < 350 * 2**20


def test_model_registration_is_off(server):
    resp = requests.post(
        f"{server.management}/models", params={"url": "http://x/evil.mar"}, timeout=10
    )
    assert resp.status_code == 405, resp.text  # the model API is off, not merely refusing
    models = requests.get(f"{server.management}/models", timeout=10).json()["models"]
    assert [m["modelName"] for m in models] == ["fd1"]


def test_token_authorization_mode(tmp_path, weights, model_store, expected, check):
    blobs, _ = expected
    srv = start_server(
        tmp_path,
        weights,
        model_store,
        workers=1,
        extra_env={"TS_DISABLE_TOKEN_AUTHORIZATION": "false"},
    )
    try:
        srv.wait_bound()  # on new ports if one was taken meanwhile
        deadline = time.monotonic() + 240
        key_file = tmp_path / ".serve" / "key_file.json"
        keys = None
        while keys is None and time.monotonic() < deadline:
            try:  # TorchServe may still be writing it
                keys = json.loads(key_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.5)
        inference_key = keys["inference"]["key"]
        management_key = keys["management"]["key"]
        assert key_file.stat().st_mode & 0o077 == 0  # TorchServe writes it 0600: keys stay private
        auth = {"Authorization": f"Bearer {management_key}"}
        while time.monotonic() < deadline:
            try:
                resp = requests.get(f"{srv.management}/models/fd1", headers=auth, timeout=5)
                if resp.ok and any(w["status"] == "READY" for w in resp.json()[0]["workers"]):
                    break
            except requests.RequestException:
                pass  # frontend still starting
            time.sleep(0.5)
        unauthorised = requests.get(f"{srv.management}/models/fd1", timeout=5)
        assert unauthorised.status_code in (400, 401, 403)
        denied = predict(srv, blobs["zidane.jpg"])
        assert denied.status_code in (400, 401, 403)
        with Client(srv.http, token=inference_key) as client:
            check("zidane.jpg", client.detect(blobs["zidane.jpg"]))
        ready = [
            sys.executable,
            "-m",
            "yolov5face",
            "ready",
            "-q",
            "--management-url",
            srv.management,
            "--inference-url",  # `ready` runs an inference on the probe image
            srv.http,
        ]
        assert subprocess.run(ready, cwd=tmp_path, timeout=60).returncode == 0  # reads the key
        assert subprocess.run(ready, cwd=tmp_path / ".serve", timeout=60).returncode == 1
    finally:
        assert srv.stop() == 0


def test_docker_entrypoint_cpu_mode(tmp_path, weights, expected, check):
    """docker/entrypoint.sh for real (CPU mode): READY fd1, one answer, clean SIGTERM stop."""
    from servers import ROOT

    blobs, _ = expected
    env = {
        "YOLOV5FACE_MODEL_STORE": str(tmp_path / "store"),
        "YOLOV5FACE_ENGINE_CACHE": str(tmp_path / "engines"),
        "YOLOV5FACE_CONFIG": str(ROOT / "yolov5face" / "serving" / "config" / "config.properties"),
        "YOLOV5FACE_REQUIRE_GPU": "0",
        "LOG_LOCATION": str(tmp_path / "logs"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    srv = start_server(
        tmp_path / "run",
        weights,
        tmp_path / "store",
        extra_env=env,
        workers=1,
        command=["bash", str(ROOT / "docker" / "entrypoint.sh")],
    )
    try:
        srv.wait_ready(workers=1)
        check("zidane.jpg", predict(srv, blobs["zidane.jpg"]).json())
    finally:
        assert srv.stop() == 0
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path / "store") in " ".join(p.info["cmdline"] or [])
    ]


@pytest.mark.parametrize(
    ("transport", "reference"), [("http", "golden"), ("grpc", "golden"), ("http", "in-process")]
)
def test_qps_tool_against_the_server(server, images, golden_dir, transport, reference, tmp_path):
    """The load tester against the real server: bounded, verified, JSON summary last."""
    url = server.grpc if transport == "grpc" else server.http
    args = ["--grpc"] if transport == "grpc" else []
    verify = ["--verify"] if reference == "in-process" else ["--verify-golden", str(golden_dir)]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "yolov5face",
            "qps",
            "--url",
            url,
            *args,
            "--images",
            str(images / "zidane.jpg"),
            str(images / "bus.jpg"),
            "--concurrency",
            "1,4",
            "--requests",
            "24",
            "--duration",
            "30",
            "--warmup",
            "0",
            *verify,
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [lvl["concurrency"] for lvl in summary["levels"]] == [1, 4]
    for level in summary["levels"]:
        assert level["ok"] == level["requests"] == 24
        assert level["mismatches"] == 0 and level["errors"] == {}
        assert level["p50_ms"] > 0 and level["qps"] > 0
