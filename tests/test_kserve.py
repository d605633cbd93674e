"""KServe v1 and v2 against a real TorchServe with service_envelope=kserve / kservev2.

The envelope is what KServe deployments set (deploy/kserve): TorchServe's frontend serves
`/v1/models/fd1:predict` and `/v2/models/fd1/infer` itself, and the envelope (which handles one
request per batch, hence batchSize 1) hands the handler that request's instances or inputs.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from servers import Server, start_server

from yolov5face.tools.compare import golden_problems

pytestmark = [pytest.mark.server, pytest.mark.slow]

# What deploy/kserve/inferenceservice*.yaml set on the predictor container.
# A low frontend answer limit (the default is 6.5 MB), which the handler must follow.
MAX_RESPONSE = 300_000
KSERVE_ENV = {"YOLOV5FACE_BATCH_SIZE": "1", "TS_MAX_RESPONSE_SIZE": str(MAX_RESPONSE)}


@pytest.fixture(scope="module")
def store_b1(tmp_path_factory) -> Path:
    """One model store for both servers; the first `serve` builds fd1.mar with batchSize 1."""
    return tmp_path_factory.mktemp("model-store-kserve")


def _start(tmp_path_factory, weights, store: Path, envelope: str) -> Server:
    env = {**KSERVE_ENV, "TS_SERVICE_ENVELOPE": envelope}
    srv = start_server(tmp_path_factory.mktemp(envelope), weights, store, env, workers=1)
    try:
        srv.wait_ready(workers=1)
    except BaseException:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def v1_server(tmp_path_factory, weights, store_b1):
    srv = _start(tmp_path_factory, weights, store_b1, "kserve")
    yield srv
    assert srv.stop() == 0, srv.tail()


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory, weights, store_b1):
    srv = _start(tmp_path_factory, weights, store_b1, "kservev2")
    yield srv
    assert srv.stop() == 0, srv.tail()


@pytest.fixture(scope="module")
def b64(images, golden_names) -> dict[str, str]:
    return {n: base64.b64encode((images / n).read_bytes()).decode() for n in golden_names}


def v2_body(items: list[tuple[str, str]], request_id: str | None = None) -> dict:
    """One input per image (shape [1]): the kservev2 envelope keeps only a BYTES input's first."""
    inputs = [
        {"name": name, "datatype": "BYTES", "shape": [1], "data": [data]} for name, data in items
    ]
    return {"inputs": inputs, **({"id": request_id} if request_id else {})}


def post(url: str, body) -> requests.Response:
    return requests.post(url, json=body, timeout=60)


@pytest.mark.parametrize("route", ["/v1/models/fd1:predict", "/predictions/fd1"])
def test_v1_every_golden_in_one_request(v1_server, b64, goldens, route):
    names = list(b64)
    instances = [{"data": b64[n]} if i % 2 else {"b64": b64[n]} for i, n in enumerate(names)]
    resp = post(v1_server.http + route, {"instances": instances})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    predictions = resp.json()["predictions"]
    assert len(predictions) == len(names)
    for name, faces in zip(names, predictions):
        assert golden_problems(goldens[name], faces) == [], name


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ({"data": "not base64 !!"}, "instance 1: not valid base64"),
        ({"data": base64.b64encode(b"\xff\xd8 not a jpeg").decode()}, ""),
        ({"nothing": "here"}, "instance 1: expected"),
    ],
    ids=["bad_base64", "bad_image", "bad_instance"],
)
def test_v1_bad_instance_gets_400_in_v1_shape(v1_server, b64, goldens, instance, message):
    body = {"instances": [{"data": b64["zidane.jpg"]}, instance]}
    resp = post(f"{v1_server.http}/v1/models/fd1:predict", body)
    assert resp.status_code == 400, resp.text
    good, bad = resp.json()["predictions"]
    assert golden_problems(goldens["zidane.jpg"], good) == []
    assert set(bad) == {"error"} and message in bad["error"]


@pytest.mark.parametrize("body", [{"instances": []}, {"no": "instances"}], ids=["empty", "none"])
def test_v1_body_without_instances_gets_400(v1_server, body):
    resp = post(f"{v1_server.http}/v1/models/fd1:predict", body)
    assert resp.status_code == 400, resp.text
    assert "instances" in resp.json()["predictions"][0]["error"]


def test_v1_concurrent_requests_each_get_their_answer(v1_server, b64, goldens):
    """Each request is its own batch (batchSize 1): a bad one leaves the others alone."""
    names = [n for n in b64 for _ in range(3)]

    def one(i: int) -> tuple[str | None, requests.Response]:
        if i % 4 == 3:
            return None, post(f"{v1_server.http}/v1/models/fd1:predict", {"instances": ["%%"]})
        name = names[i % len(names)]
        return name, post(f"{v1_server.http}/v1/models/fd1:predict", {"instances": [b64[name]]})

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    for name, resp in answers:
        if name is None:
            assert resp.status_code == 400, resp.text
            assert "base64" in resp.json()["predictions"][0]["error"]
        else:
            assert resp.status_code == 200, resp.text
            assert golden_problems(goldens[name], resp.json()["predictions"][0]) == [], name


@pytest.mark.parametrize("route", ["/v2/models/fd1/infer", "/predictions/fd1"])
def test_v2_every_golden_in_one_request(v2_server, b64, goldens, route):
    names = list(b64)
    resp = post(v2_server.http + route, v2_body([(n, b64[n]) for n in names], "req-7"))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["id"] == "req-7"
    assert answer["model_name"] == "fd1"
    assert [o["name"] for o in answer["outputs"]] == names
    for name, output in zip(names, answer["outputs"]):
        assert output["datatype"] == "BYTES" and output["shape"] == [1]
        faces = json.loads(output["data"][0])
        assert golden_problems(goldens[name], faces) == [], name


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["@@@"]}, "not valid base64"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}, ""),
        ({"name": "x", "datatype": "BYTES", "shape": [2], "data": ["AAAA", "AAAA"]}, "one image"),
    ],
    ids=["bad_base64", "bad_image", "two_per_input"],
)
def test_v2_bad_input_gets_400_in_v2_shape(v2_server, b64, goldens, entry, message):
    body = v2_body([("good", b64["zidane.jpg"])])
    body["inputs"].append(entry)
    resp = post(f"{v2_server.http}/v2/models/fd1/infer", body)
    assert resp.status_code == 400, resp.text
    good, bad = resp.json()["outputs"]
    assert golden_problems(goldens["zidane.jpg"], json.loads(good["data"][0])) == []
    error = json.loads(bad["data"][0])
    assert set(error) == {"error"} and message in error["error"]


def test_v2_empty_inputs_get_400(v2_server):
    resp = post(f"{v2_server.http}/v2/models/fd1/infer", {"inputs": []})
    assert resp.status_code == 400, resp.text
    assert "inputs" in json.loads(resp.json()["outputs"][0]["data"][0])["error"]


def test_requests_over_the_image_budget_get_413_behind_the_envelope(v1_server, v2_server):
    """33 images (the limit is 32 per request) in v1 and v2: 413 in each protocol's shape."""
    message = "33 images in one request; send at most 32 per request"
    tiny = base64.b64encode(cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1]).decode()
    v1 = post(f"{v1_server.http}/v1/models/fd1:predict", {"instances": [{"data": tiny}] * 33})
    assert v1.status_code == 413, v1.text
    assert v1.json() == {"predictions": [{"error": message}]}
    v2 = post(f"{v2_server.http}/v2/models/fd1/infer", v2_body([("x", tiny)] * 33))
    assert v2.status_code == 413, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == "error" and json.loads(output["data"][0]) == {"error": message}


def test_answers_over_the_frontend_limit_get_413_behind_the_envelope(v1_server, v2_server, crowd):
    """Five crowds of 400 faces make ~380 KB of answer, over TS_MAX_RESPONSE_SIZE (300 KB):
    TorchServe would drop the worker; the handler answers 413 in the protocol's shape."""
    item = base64.b64encode(crowd).decode()
    for server, body, route in (
        (v1_server, {"instances": [{"b64": item}] * 5}, "/v1/models/fd1:predict"),
        (v2_server, v2_body([("x", item)] * 5), "/v2/models/fd1/infer"),
    ):
        pids = [w["pid"] for w in server.workers()]
        resp = post(server.http + route, body)
        assert resp.status_code == 413, resp.text[:300]
        text = json.dumps(resp.json())
        assert f"over the server's limit of {MAX_RESPONSE}" in text, text[:300]
        assert [w["pid"] for w in server.workers()] == pids  # the worker was not dropped
        one = post(server.http + route, {**body, **_first(body)})
        assert one.status_code == 200, one.text[:300]


def _first(body: dict) -> dict:
    """The same body with only its first image."""
    key = "instances" if "instances" in body else "inputs"
    return {key: body[key][:1]}


@pytest.mark.parametrize("envelope", ["kserve", "kservev2"])
def test_ready_probe_works_behind_the_envelope(request, envelope):
    """`yolov5face ready` (the InferenceService's probes) passes behind either envelope."""
    srv: Server = request.getfixturevalue("v1_server" if envelope == "kserve" else "v2_server")
    env = {k: v for k, v in os.environ.items() if k != "YOLOV5FACE_MANAGEMENT_TOKEN"}
    env |= {"TS_MANAGEMENT_ADDRESS": srv.management, "TS_INFERENCE_ADDRESS": srv.http}
    done = subprocess.run(
        [sys.executable, "-m", "yolov5face", "ready"],
        cwd=srv.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_raw_bytes_fail_behind_the_envelope(v1_server, images):
    """Documented: behind an envelope only JSON bodies work (it parses the body before fd1)."""
    blob = (images / "zidane.jpg").read_bytes()
    resp = requests.put(f"{v1_server.http}/predictions/fd1", data=blob, timeout=60)
    assert resp.status_code == 503, resp.text


def test_envelope_with_batches_of_two_fails_requests(tmp_path, weights, b64):
    """Why the manifests set YOLOV5FACE_BATCH_SIZE=1: TorchServe's envelope reads the first
    request of a batch and returns one answer, which TorchServe refuses for a batch of 2+."""
    env = {"YOLOV5FACE_BATCH_SIZE": "2", "YOLOV5FACE_MAX_BATCH_DELAY": "50"}
    env["TS_SERVICE_ENVELOPE"] = "kserve"
    (tmp_path / "run").mkdir()
    (tmp_path / "store").mkdir()
    srv = start_server(tmp_path / "run", weights, tmp_path / "store", env, workers=1)
    try:
        srv.wait_ready(workers=1)
        body = {"instances": [b64["zidane.jpg"]]}
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: post(f"{srv.http}/v1/models/fd1:predict", body), range(16))
            )
    finally:
        assert srv.stop() == 0, srv.tail()
    codes = sorted({r.status_code for r in answers})
    assert 503 in codes, codes
