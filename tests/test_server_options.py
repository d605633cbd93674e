"""Per-request options and aligned crops through a real TorchServe: HTTP query parameters,
gRPC input keys, the clients and the CLI; bad values are that request's own 400."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from servers import start_server

from yolov5face.pipeline.align import decode_crop
from yolov5face.pipeline.options import Options
from yolov5face.tools.compare import golden_problems

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights):
    srv = start_server(
        tmp_path_factory.mktemp("serve-options"), weights, tmp_path_factory.mktemp("store")
    )
    try:
        srv.wait_ready(workers=2)
        yield srv
    finally:
        assert srv.stop() == 0, srv.tail()


@pytest.fixture(scope="module")
def local(server, weights):
    """The in-process detector on the server's exported model, for the same crops."""
    from yolov5face.pipeline.detector import Detector

    return Detector(weights, threads=1)


def url(server) -> str:
    return server.http + "/predictions/fd1"


def invoke(server) -> str:
    """The route on which TorchServe hands the query string to the handler."""
    return server.http + "/models/fd1/invoke"


def test_no_options_is_todays_answer(server, images, goldens):
    for name in ("zidane.jpg", "test.jpg"):
        body = requests.put(url(server), data=(images / name).read_bytes(), timeout=30)
        assert body.status_code == 200 and golden_problems(goldens[name], body.json()) == []


def test_query_options_through_http(server, images, local):
    blob = (images / "test.jpg").read_bytes()
    (everything,) = local.detect([blob])
    resp = requests.put(invoke(server), data=blob, params={"max_faces": 5, "conf": 0.6}, timeout=30)
    assert resp.status_code == 200, resp.text
    expected = [f for f in everything if f["conf"] >= 0.6][:5]
    assert len(resp.json()) == 5
    assert [f["xywh_ratio"] for f in resp.json()] == [f["xywh_ratio"] for f in expected]


def test_crops_are_the_same_over_http_grpc_client_and_cli(server, images, local, tmp_path):
    from yolov5face.tools.client import Client, GrpcClient

    blob = (images / "zidane.jpg").read_bytes()
    params = {"crops": "112", "crop_format": "png"}
    (mine,) = local.detect([blob], options=Options(crops=112, crop_format="png"))
    expected = [decode_crop(f["crop"]) for f in mine]
    http = requests.post(invoke(server), data=blob, params=params, timeout=30).json()
    with Client(server.http) as client:
        via_client = client.detect(blob, params)
    with GrpcClient(server.grpc) as grpc_client:
        via_grpc = grpc_client.detect(blob, params)
    out = tmp_path / "crops"
    cli = subprocess.run(
        [sys.executable, "-m", "yolov5face.tools.cli", "detect", str(images / "zidane.jpg")]
        + ["--url", server.http, "--crops", str(out), "--crop-format", "png"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    files = [f["crop_file"] for f in json.loads(cli.stdout)[str(images / "zidane.jpg")]]
    import cv2

    for k, crop in enumerate(expected):
        assert crop.shape == (112, 112, 3)
        assert np.array_equal(decode_crop(http[k]["crop"]), crop)
        assert np.array_equal(via_client[k]["crop"], crop)
        assert np.array_equal(via_grpc[k]["crop"], crop)
        assert np.array_equal(cv2.imread(files[k]), crop)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"conf": "abc"}, "option conf"),
        ({"conf": "0.1"}, "option conf: 0.1 is outside"),
        ({"max_faces": "-3"}, "option max_faces"),
        ({"crops": "112x96"}, "option crops"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_bad_option_is_its_own_400_batch_mates_unaffected(server, images, goldens, params, message):
    blob = (images / "zidane.jpg").read_bytes()

    def good():
        return requests.put(url(server), data=blob, timeout=30)

    def bad():
        return requests.put(invoke(server), data=blob, params=params, timeout=30)

    with cf.ThreadPoolExecutor(8) as pool:  # the server's batches mix good and bad requests
        futures = [pool.submit(bad if k % 2 else good) for k in range(16)]
        answers = [f.result() for f in futures]
    for k, resp in enumerate(answers):
        if k % 2:
            assert resp.status_code == 400 and message in resp.json()["error"], resp.text
        else:
            assert resp.status_code == 200
            assert golden_problems(goldens["zidane.jpg"], resp.json()) == []


def test_other_routes_carry_options_and_predictions_drops_them(server, images):
    """/invocations?model_name=fd1 and /fd1/predict hand the query string over too; TorchServe
    drops it on /predictions/fd1 (documented), and a multipart form field carries options
    there."""
    blob = (images / "test.jpg").read_bytes()
    for route in ("/invocations?model_name=fd1&max_faces=2", "/fd1/predict?max_faces=2"):
        resp = requests.post(server.http + route, data=blob, timeout=30)
        assert resp.status_code == 200 and len(resp.json()) == 2, (route, resp.text)
    dropped = requests.put(url(server) + "?max_faces=2", data=blob, timeout=30)
    assert dropped.status_code == 200 and len(dropped.json()) == 67
    form = requests.post(
        url(server), files={"data": ("test.jpg", blob, "image/jpeg")}, data={"max_faces": "2"}
    )
    assert form.status_code == 200 and len(form.json()) == 2, form.text


def test_answer_over_the_response_limit_is_its_own_413_and_no_worker_dies(
    server, images, goldens, crowd
):
    """512 px PNG crops of 400 faces would be ~113 MB of JSON: TorchServe drops a worker whose
    answer passes max_response_size (6.5 MB), failing its batch. The handler stops the crops at
    the limit and answers 413; batch-mates get their golden answers; no worker restarts."""
    blob = (images / "zidane.jpg").read_bytes()
    pids = sorted(w["pid"] for w in server.workers())

    def crowd_crops():
        params = {"crops": "512", "crop_format": "png"}
        return requests.put(invoke(server), data=crowd, params=params, timeout=60)

    def good():
        return requests.put(url(server), data=blob, timeout=60)

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(crowd_crops if k % 4 == 0 else good) for k in range(16)]
        answers = [f.result() for f in futures]
    for k, resp in enumerate(answers):
        if k % 4 == 0:
            assert resp.status_code == 413, resp.text[:300]
            error = resp.json()["error"]
            assert "the server's limit" in error and "crop_format=jpeg" in error, error
        else:
            assert resp.status_code == 200, resp.text[:300]
            assert golden_problems(goldens["zidane.jpg"], resp.json()) == []
    assert sorted(w["pid"] for w in server.workers()) == pids
    assert "Worker died" not in server.tail(500_000)
    # A big answer within the limit still comes back whole: 400 small JPEG crops, ~2.5 MB.
    resp = requests.put(invoke(server), data=crowd, params={"crops": "112"}, timeout=60)
    assert resp.status_code == 200 and len(resp.json()) >= 350
    assert all("crop" in face for face in resp.json())


def test_grpc_client_takes_answers_over_grpcs_4_mb_default(server, crowd):
    """110 crops of 512 px (~5.1 MB of JSON): under the server's 6.5 MB answer limit, over the
    4 MB a gRPC channel accepts by default."""
    from yolov5face.tools.client import GrpcClient

    with GrpcClient(server.grpc) as client:
        faces = client.detect(crowd, {"crops": 512, "max_faces": 110}, decode=False)
    assert len(faces) == 110 and len(json.dumps(faces)) > 4 * 1024 * 1024
