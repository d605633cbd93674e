"""Request shapes (yolov5face/serving/requests.py) in process, and against a real TorchServe
with the served config (no envelope, batches of 2): KServe v1/v2 bodies, multipart with two
files, form-urlencoded bodies, and the EXIF orientation convention (issue 23.8)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from servers import start_server

from yolov5face.pipeline.decode import ImageError
from yolov5face.serving.requests import (
    RAW,
    V1,
    V2,
    envelope_item,
    is_envelope_row,
    parse_request,
    request_bytes,
)
from yolov5face.tools.compare import golden_problems

JPEG = b"\xff\xd8\xff\xe0fake"
B64 = base64.b64encode(JPEG).decode()
MULTIPART = {"Content-Type": "multipart/form-data; boundary=x"}


# --------------------------------------------------------------------------
# in process: what each row shape parses to
# --------------------------------------------------------------------------


def test_raw_and_multipart_rows():
    assert request_bytes({"body": bytearray(JPEG)}) == JPEG
    headers = {**MULTIPART, "file": {"content-type": "image/jpeg"}}
    assert request_bytes({"file": JPEG}, headers) == JPEG
    assert parse_request({"body": JPEG}).protocol == RAW


def test_multipart_with_two_files_is_refused():
    headers = {"a": {"content-type": "image/jpeg"}, "b": {"content-type": "image/png"}}
    with pytest.raises(ImageError, match="2 files; send one image per request"):
        request_bytes({"a": JPEG, "b": JPEG}, headers)
    # TorchServe keeps the last value of a repeated field: only the body's length tells.
    headers = {"Content-Length": str(5000 + len(JPEG)), "a": {"content-type": "image/jpeg"}}
    with pytest.raises(ImageError, match="a repeated field"):
        request_bytes({"a": JPEG}, headers)
    headers["Content-Length"] = str(300 + len(JPEG))
    assert request_bytes({"a": JPEG}, headers) == JPEG


def test_form_urlencoded_is_refused_without_quoting_the_body():
    secret = "SECRET-BODY-BYTES"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with pytest.raises(ImageError) as err:
        request_bytes({secret: b""}, headers)
    assert err.value.status == 415 and secret not in str(err.value)


def test_v1_bodies():
    request = parse_request({"body": {"instances": [B64, {"data": B64}, {"b64": B64}, "%%"]}})
    assert request.protocol == V1
    assert request.images[:3] == [JPEG] * 3
    assert isinstance(request.images[3], ImageError)
    undecoded = parse_request({"body": json.dumps({"instances": [{"data": B64}]}).encode()})
    assert undecoded.images == [JPEG]
    assert parse_request({"body": {"instances": []}}).error is not None


def test_v2_bodies():
    entry = {"name": "in", "datatype": "BYTES", "shape": [2], "data": [B64, B64]}
    request = parse_request({"body": {"id": "r1", "inputs": [entry]}})
    assert (request.protocol, request.request_id) == (V2, "r1")
    assert request.images == [JPEG, JPEG] and request.names == ["in", "in"]
    for bad in ({**entry, "datatype": "FP32"}, {**entry, "shape": [3]}, "x"):
        assert parse_request({"body": {"inputs": [bad]}}).error is not None


def test_envelope_rows():
    assert is_envelope_row({"data": B64}) and is_envelope_row(B64)
    assert not is_envelope_row({"body": JPEG}) and not is_envelope_row({"data": JPEG})
    assert envelope_item({"b64": B64}, 0) == JPEG
    cut = {"name": "in", "datatype": "BYTES", "shape": [1], "data": B64}
    assert envelope_item(cut, 0) == JPEG
    with pytest.raises(ImageError, match="first element"):
        envelope_item({**cut, "shape": [2]}, 0)


# --------------------------------------------------------------------------
# against TorchServe (served config: no envelope, batches of 2)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights):
    store = tmp_path_factory.mktemp("model-store")
    srv = start_server(tmp_path_factory.mktemp("serve"), weights, store, workers=1)
    try:
        srv.wait_ready(workers=1)
        yield srv
    finally:
        assert srv.stop() == 0, srv.tail()


@pytest.fixture(scope="module")
def blobs(images, golden_names) -> dict[str, bytes]:
    return {n: (images / n).read_bytes() for n in golden_names}


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


@pytest.mark.server
@pytest.mark.slow
def test_kserve_bodies_without_envelope_batched_with_raw_requests(server, blobs, goldens):
    """v1 and v2 JSON bodies and raw bytes in the same batches; each answer in its own shape."""
    names = list(blobs)
    v1 = {"instances": [{"data": b64(blobs[n])} for n in names]}
    v2 = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [len(names)], "data": []}]}
    v2["inputs"][0]["data"] = [b64(blobs[n]) for n in names]
    jobs = [("/predictions/fd1", v1), ("/v1/models/fd1:predict", v1), ("/v2/models/fd1/infer", v2)]
    jobs += [("/predictions/fd1", n) for n in names]

    def send(job):
        route, body = job
        if isinstance(body, str):
            return requests.post(server.http + route, data=blobs[body], timeout=60)
        return requests.post(server.http + route, json=body, timeout=60)

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs * 2))
    for (_route, body), resp in zip(jobs * 2, answers):
        assert resp.status_code == 200, resp.text
        if isinstance(body, str):
            assert golden_problems(goldens[body], resp.json()) == [], body
        elif "instances" in body:
            for name, faces in zip(names, resp.json()["predictions"], strict=True):
                assert golden_problems(goldens[name], faces) == [], name
        else:
            (output,) = resp.json()["outputs"]
            assert output["name"] == "x" and output["shape"] == [len(names)]
            for name, text in zip(names, output["data"], strict=True):
                assert golden_problems(goldens[name], json.loads(text)) == [], name


@pytest.mark.server
@pytest.mark.slow
def test_bad_kserve_request_leaves_batch_mates_alone(server, blobs, goldens):
    bad_v1 = {"instances": [{"data": b64(blobs["zidane.jpg"])}, {"data": "!!"}]}
    bad_v2 = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}]}
    jobs = [bad_v1, "zidane.jpg", bad_v2, "bus.jpg"] * 4

    def send(body):
        if isinstance(body, str):
            return requests.put(f"{server.http}/predictions/fd1", data=blobs[body], timeout=60)
        return requests.post(f"{server.http}/predictions/fd1", json=body, timeout=60)

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    for body, resp in zip(jobs, answers):
        if isinstance(body, str):
            assert resp.status_code == 200, resp.text
            assert golden_problems(goldens[body], resp.json()) == []
        elif "instances" in body:
            assert resp.status_code == 400, resp.text
            good, bad = resp.json()["predictions"]
            assert golden_problems(goldens["zidane.jpg"], good) == []
            assert bad == {"error": "instance 1: not valid base64"}
        else:
            assert resp.status_code == 400, resp.text
            assert "error" in json.loads(resp.json()["outputs"][0]["data"][0])


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
def test_json_nested_past_the_parser_is_its_own_400(server, blobs, goldens, content_type):
    """100,000 nested arrays used to raise RecursionError in the handler: its batch-mates got
    503 "Prediction failed" with it."""
    deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    def send(k: int) -> requests.Response:
        url = f"{server.http}/predictions/fd1"
        if k % 4:
            return requests.put(url, data=blobs["zidane.jpg"], timeout=60)
        return requests.post(url, data=deep, headers={"Content-Type": content_type}, timeout=60)

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    for k, resp in enumerate(answers):
        if k % 4:
            assert resp.status_code == 200, resp.text
            assert golden_problems(goldens["zidane.jpg"], resp.json()) == []
        else:
            assert resp.status_code == 400, resp.text
            assert "not an image" in resp.json()["error"]


DROPPED = "has parts that did not reach the model (a repeated field, or too many fields)"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("fields", [("data", "file"), ("data", "data")], ids=["two", "same"])
def test_multipart_with_two_files_gets_400(server, blobs, fields):
    """Issue 23.8: the second file used to be dropped without a word (200 for the first)."""
    files = [(f, (n, blobs[n], "image/jpeg")) for f, n in zip(fields, ("zidane.jpg", "bus.jpg"))]
    resp = requests.post(f"{server.http}/predictions/fd1", files=files, timeout=60)
    assert resp.status_code == 400, resp.text
    problem = "has 2 files" if fields[0] != fields[1] else DROPPED
    assert resp.json() == {"error": f"multipart body {problem}; send one image per request"}


@pytest.mark.server
@pytest.mark.slow
def test_multipart_with_a_thousand_fields_gets_400(server, blobs):
    """TorchServe's frontend hands over only part of such a form: the file may be among the
    parts dropped, so the request is refused rather than answered for what arrived."""
    fields = [(f"f{k}", (None, "v")) for k in range(1000)]
    files = [*fields, ("data", ("zidane.jpg", blobs["zidane.jpg"], "image/jpeg"))]
    resp = requests.post(f"{server.http}/predictions/fd1", files=files, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": f"multipart body {DROPPED}; send one image per request"}


@pytest.mark.server
@pytest.mark.slow
def test_multipart_file_wins_over_a_text_field(server, blobs, goldens):
    """`curl -F title=holiday -F upload=@zidane.jpg`: the file part is the image, whatever its
    field name; the text field before it used to be decoded instead (400 "not an image")."""
    form = {"title": "holiday"}
    files = {"upload": ("zidane.jpg", blobs["zidane.jpg"], "image/jpeg")}
    resp = requests.post(f"{server.http}/predictions/fd1", data=form, files=files, timeout=60)
    assert resp.status_code == 200, resp.text
    assert not golden_problems(resp.json(), goldens["zidane.jpg"])


def _png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


@pytest.mark.server
@pytest.mark.slow
def test_requests_over_the_image_budget_get_413(server, blobs, goldens):
    """20 MiB of tiny base64 images in one v1 body held a worker past its 30 s response timeout
    (500 "Worker died", then a restart): at most 32 images, and several images at most
    max_pixels in all, per request; a raw request beside them is answered."""
    tiny = b64(_png(32, 32))
    bodies = {
        "count": {"instances": [{"data": tiny}] * 33},
        "pixels": {"instances": [{"data": b64(_png(5000, 4001))}] * 2},
        "v2": {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [33], "data": [tiny] * 33}]},
    }
    url = f"{server.http}/predictions/fd1"
    with cf.ThreadPoolExecutor(4) as pool:
        refused = {
            k: pool.submit(requests.post, url, json=b, timeout=60) for k, b in bodies.items()
        }
        good = requests.post(url, data=blobs["zidane.jpg"], timeout=60)
        limit = requests.post(url, json={"instances": [{"data": tiny}] * 32}, timeout=60)
    messages = {
        "count": "33 images in one request; send at most 32 per request",
        "pixels": "the images of one request hold 40010000 pixels; send at most 40000000 in all",
        "v2": "33 images in one request; send at most 32 per request",
    }
    for name, future in refused.items():
        resp = future.result()
        assert resp.status_code == 413, (name, resp.text)
        assert resp.json() == {"error": messages[name]}, name
    assert good.status_code == 200 and not golden_problems(goldens["zidane.jpg"], good.json())
    assert limit.status_code == 200 and limit.json() == {"predictions": [[]] * 32}


@pytest.mark.server
@pytest.mark.slow
def test_form_urlencoded_body_gets_415_without_echo(server):
    """Issue 23.8: a body the frontend decodes as a form reaches the handler: 415, no echo.

    (A JPEG sent that way usually fails to decode in TorchServe's frontend first: that 500 is
    the frontend's, see docs/security.md.)
    """
    body = b"SECRET-KEY=SECRET-VALUE"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = requests.post(f"{server.http}/predictions/fd1", data=body, headers=headers, timeout=60)
    assert resp.status_code == 415, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "SECRET" not in resp.text and "form-urlencoded" in resp.json()["error"]


def exif_rotated(path: Path, orientation: int = 6) -> tuple[bytes, tuple[int, int]]:
    """A JPEG whose stored pixels are `path` turned so that EXIF `orientation` turns them back.

    Orientation 6 means "rotate 90 degrees clockwise to display": the pixels are stored turned
    90 degrees counter-clockwise. Returns the JPEG and the displayed (width, height).
    """
    upright = Image.open(path).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue(), upright.size


@pytest.mark.server
@pytest.mark.slow
def test_exif_orientation_boxes_are_in_the_displayed_frame(server, images, goldens):
    """Issue 23.8: ratios are fractions of the image as displayed (EXIF applied): the turned
    JPEG answers the upright golden, not boxes in the stored (turned) frame."""
    blob, size = exif_rotated(images / "zidane.jpg")
    stored = Image.open(io.BytesIO(blob)).size
    assert stored == size[::-1] and stored[0] < stored[1]  # stored tall, displayed wide
    resp = requests.put(f"{server.http}/predictions/fd1", data=blob, timeout=60)
    assert resp.status_code == 200, resp.text
    faces = resp.json()
    assert golden_problems(goldens["zidane.jpg"], faces) == []
    # Same faces at the same place of the displayed frame; the stored frame would put them
    # elsewhere (x and y swapped).
    served = np.array([f["xywh_ratio"] for f in faces])
    golden = np.array([f["xywh_ratio"] for f in goldens["zidane.jpg"]])
    assert served.shape == golden.shape
    assert np.abs(served - golden).max() < 0.02


@pytest.mark.server
@pytest.mark.slow
def test_documented_limits_of_the_frontend(server, blobs, goldens):
    """docs/security.md, "Request shapes": what TorchServe's frontend does before any handler.

    Pinned so that a TorchServe change is noticed: the method does not reach the handler (GET
    and DELETE with a body answer like POST), and a 2xx keeps the connection open even when the
    client asked to close it (HTTP/1.0 or `Connection: close`).
    """
    for method in ("GET", "DELETE"):
        resp = requests.request(
            method, f"{server.http}/predictions/fd1", data=blobs["zidane.jpg"], timeout=60
        )
        assert resp.status_code == 200, method
        assert golden_problems(goldens["zidane.jpg"], resp.json()) == []
    host, port = server.http.removeprefix("http://").split(":")
    body = blobs["zidane.jpg"]
    for version, extra in (("HTTP/1.0", ""), ("HTTP/1.1", "Connection: close\r\n")):
        head = (
            f"PUT /predictions/fd1 {version}\r\nHost: {host}\r\n{extra}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(head.encode() + body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, "closed before the headers"
                answer += chunk
        status, *lines = answer.split(b"\r\n\r\n")[0].decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        assert status.split()[1] == "200", status
        assert headers["connection"].lower() == "keep-alive", (version, headers)
