"""Fuzzing the request -> image path in process (no server): raw bodies, multipart rows, KServe
v1/v2 bodies and envelope rows, then the decoder on every image they carry.

Anything but the project's ImageError (a 4xx for the client) is a failure, and so is a hang:
each example has a generous deadline, and pytest-timeout bounds the whole run. The corpus in
tests/data/fuzz/ (small generated inputs, README there) is replayed first and mutated after.
`make test` fuzzes for FUZZ_SECONDS (60 by default); `make fuzz` for longer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="install the project's dev extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from yolov5face.pipeline.decode import DEFAULT_MAX_PIXELS, ImageError, decode_with_size  # noqa: E402
from yolov5face.pipeline.options import OptionError, parse_options  # noqa: E402
from yolov5face.serving.requests import (  # noqa: E402
    DEFAULT_MAX_IMAGES,
    V2,
    answer_v1,
    answer_v2,
    envelope_item,
    is_envelope_row,
    over_budget,
    parse_request,
)

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parent / "data" / "fuzz"
SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
FILES = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".md")
BINARY = sorted(p.read_bytes() for p in FILES if p.suffix != ".json")
JSON_BODIES = sorted(
    (json.loads(p.read_text()) for p in CORPUS.glob("*.json")), key=lambda b: json.dumps(b)
)
CONTENT_TYPES = [
    None,
    "",
    "image/jpeg",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    "multipart/form-data; boundary=x",
    "application/json",
]


def decode(image: bytes) -> None:
    """The decoder on one image: an image or ImageError, nothing else."""
    with contextlib.suppress(ImageError):
        decode_with_size(image, DEFAULT_MAX_PIXELS)


def target(row, headers: dict | None) -> None:
    """What the handler does with one row, up to decoding (no model)."""
    request = parse_request(row, headers)
    with contextlib.suppress(OptionError):
        parse_options(request.options)
    over_budget(request.images, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS)
    for image in request.images:
        if isinstance(image, bytes):
            decode(image)
    json.dumps(answer_v1([[] if isinstance(i, bytes) else i for i in request.images]))
    if request.protocol == V2:
        json.dumps(answer_v2(request, [[]] * len(request.images), "fd1", "1.0", "id"))
    if is_envelope_row(row):
        with contextlib.suppress(ImageError):
            decode(envelope_item(row, 0))


def flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for pos, value in zip(positions, values):
        if out:
            out[pos % len(out)] = value
    return bytes(out)


b64_text = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(BINARY).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=32),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
mutated = st.builds(
    flip,
    st.sampled_from(BINARY),
    st.lists(st.integers(0, 4096), max_size=8),
    st.lists(st.integers(0, 255), max_size=8),
)
raw_bytes = st.one_of(st.binary(max_size=512), mutated)
v1_instance = st.one_of(
    b64_text,
    st.fixed_dictionaries({"data": b64_text}),
    st.fixed_dictionaries({"b64": b64_text}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries({"b64": b64_text})}),
    json_any,
)
v2_input = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=8), st.integers()),
        "datatype": st.sampled_from(["BYTES", "FP32", "bytes", ""]),
        "shape": st.one_of(st.lists(st.integers(-2, 4), max_size=3), json_any),
        "data": st.one_of(
            st.lists(b64_text, max_size=4),
            st.lists(st.lists(b64_text, max_size=3), max_size=2),
            json_any,
        ),
    }
)
json_body = st.one_of(
    st.sampled_from(JSON_BODIES),
    st.fixed_dictionaries({"instances": st.one_of(st.lists(v1_instance, max_size=4), json_any)}),
    st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(v2_input, max_size=3), json_any)},
        optional={"id": st.one_of(st.text(max_size=8), st.integers())},
    ),
    json_any,
)


@st.composite
def rows(draw):
    """(row, headers) as TorchServe would hand them to the handler, or as an envelope would."""
    kind = draw(st.sampled_from(["raw", "json", "json_bytes", "multipart", "envelope"]))
    headers: dict = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Content-Length"] = draw(st.sampled_from(["0", "100", "99999999", "x", "-1"]))
    if kind == "raw":
        row = {"body": draw(raw_bytes)}
    elif kind == "json":
        row = {"body": draw(json_body)}
    elif kind == "json_bytes":
        row = {"body": json.dumps(draw(json_body)).encode()}
    elif kind == "multipart":
        fields = ["data", "file", "image", "x", "a b", "crops", "max_faces", "conf", "min_size"]
        names = draw(st.lists(st.sampled_from(fields), max_size=3))
        row = {n: draw(st.one_of(raw_bytes, st.text(max_size=8))) for n in names}
        for name in row:
            if draw(st.booleans()):
                headers[name] = {"content-type": draw(st.sampled_from(["image/jpeg", ""]))}
    else:
        row = draw(st.one_of(v1_instance, v2_input.map(lambda d: {**d, "data": d["data"]})))
    return row, (headers if draw(st.booleans()) else None)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_replays_cleanly(path: Path):
    if path.suffix == ".json":
        body = json.loads(path.read_text())
        target({"body": body}, {"Content-Type": "application/json"})
        target({"body": path.read_bytes()}, None)
        for item in body.get("instances") or body.get("inputs") or []:
            target(item, None)
    else:
        target({"body": path.read_bytes()}, {"Content-Type": "application/octet-stream"})
        target({"data": path.read_bytes()}, {"data": {"content-type": "image/jpeg"}})


def test_shared_images_replay_cleanly(images: Path):
    """The shared photos (read in place, never copied here), whole and as base64 bodies."""
    for path in sorted(images.iterdir()):
        blob = path.read_bytes()
        target({"body": blob}, None)
        target({"body": {"instances": [base64.b64encode(blob).decode()]}}, None)


FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=timedelta(seconds=10),  # a hang, not a slow example: small inputs decode in ms
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(rows())
def fuzz_once(case) -> None:
    row, headers = case
    target(row, headers)


def test_fuzz_request_to_image():
    """Rounds of 200 random examples each until FUZZ_SECONDS have passed (at least one)."""
    stop = time.monotonic() + SECONDS
    rounds = 0
    while rounds == 0 or time.monotonic() < stop:
        fuzz_once()
        rounds += 1
