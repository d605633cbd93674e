"""Request parsing and answers in process (yolov5face/serving/requests.py): the exact messages,
statuses and shapes clients see for raw, multipart, KServe v1/v2 and envelope rows."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from yolov5face.pipeline.decode import ImageError
from yolov5face.pipeline.options import OptionError, Options, parse_options
from yolov5face.serving.requests import (
    RAW,
    V1,
    V2,
    Request,
    RequestError,
    _header,
    answer_v1,
    answer_v2,
    b64_image,
    envelope_item,
    error_body,
    is_envelope_row,
    over_budget,
    parse_request,
    request_bytes,
    split_options,
    v1_instance,
    v2_element,
)

JPEG = b"\xff\xd8\xff\xe0fake"
PNG = b"\x89PNG\r\n\x1a\nfake"
B64 = base64.b64encode(JPEG).decode()
B64_PNG = base64.b64encode(PNG).decode()
MULTIPART = {"Content-Type": "multipart/form-data; boundary=x"}
FACES = [{"conf": 0.9, "xywh_ratio": [0.1, 0.2, 0.3, 0.4]}]

FORM_MESSAGE = (
    "a form-urlencoded body is not an image; send the image bytes with Content-Type "
    "application/octet-stream or image/jpeg (curl -T or --data-binary with -H "
    "'Content-Type: application/octet-stream')"
)
JSON_MESSAGE = (
    'unsupported JSON body: send {"instances": [{"data": "<base64>"}]} (KServe v1) or '
    '{"inputs": [{"name": ..., "datatype": "BYTES", "shape": [n], "data": [...]}]} (v2)'
)
RAW_MESSAGE = (
    "expected raw image bytes; send the image with no Content-Type or "
    "application/octet-stream / image/jpeg"
)
ENVELOPE_MESSAGE = (
    "TorchServe's kservev2 envelope passes only the first element of a BYTES input; "
    "send one image per input (shape [1])"
)


def exact(message: str) -> str:
    """A `match` pattern for exactly this message."""
    return "^" + re.escape(message) + "$"


def v2(name: str | None = "in", data=None, shape=None, **extra) -> dict:
    data = [B64] if data is None else data
    entry = {"name": name, "datatype": "BYTES", "shape": [len(data)] if shape is None else shape}
    return {**entry, "data": data, **extra}


def test_request_error_is_a_400_unless_told():
    assert RequestError("bad").status == 400 and str(RequestError("bad")) == "bad"
    assert RequestError("big", 413).status == 413
    assert isinstance(RequestError("x"), ImageError)


# --------------------------------------------------------------------------
# options beside the image: query parameters, gRPC keys, form fields
# --------------------------------------------------------------------------


def test_split_options_leaves_rows_that_are_not_dicts_alone():
    assert split_options(JPEG) == (JPEG, {})
    assert split_options(B64) == (B64, {})


def test_split_options_beside_a_raw_body_every_key_but_model_name_is_an_option():
    row = {"body": JPEG, "conf": "0.5", "colour": "1", "model_name": "fd1"}
    assert split_options(row) == ({"body": JPEG}, {"conf": "0.5", "colour": "1"})


def test_split_options_grpc_keys_beside_image_bytes_are_options():
    row = {"data": JPEG, "conf": b"0.5", "max_faces": "3", "colour": "x" * 63}
    assert split_options(row) == ({"data": JPEG}, {k: v for k, v in row.items() if k != "data"})


@pytest.mark.parametrize("extra", ["x" * 64, b"x" * 64, 5, ["a"]], ids=["64", "b64", "int", "list"])
def test_split_options_long_or_odd_grpc_values_make_it_a_form(extra):
    """A value too long (64+) or not text makes the row a form: only option names are options."""
    row = {"data": JPEG, "note": extra, "conf": "0.5"}
    assert split_options(row) == ({"data": JPEG, "note": extra}, {"conf": "0.5"})


def test_split_options_multipart_fields_named_like_options():
    row = {"file": JPEG, "title": b"holiday", "conf": b"0.5", "crops": "112"}
    expected = ({"file": JPEG, "title": b"holiday"}, {"conf": b"0.5", "crops": "112"})
    assert split_options(row) == expected
    assert split_options({"data": B64, "conf": "0.5"}) == ({"data": B64}, {"conf": "0.5"})


@pytest.mark.parametrize(
    "row",
    [
        {"body": JPEG, "conf": "0.5", "max_faces": "3"},  # query string
        {"data": JPEG, "conf": b"0.5", "max_faces": b"3"},  # gRPC input keys
        {"file": JPEG, "conf": b"0.5", "max_faces": b"3", "title": b"x"},  # multipart fields
    ],
    ids=["query", "grpc", "form"],
)
def test_parsed_options_reach_the_option_parser(row):
    request = parse_request(row, {**MULTIPART, "file": {"content-type": "image/jpeg"}})
    assert request.images == [JPEG] and request.error is None
    assert parse_options(request.options) == Options(conf=0.5, max_faces=3)


def test_unknown_and_bad_options_are_the_option_parsers_400():
    request = parse_request({"body": JPEG, "colour": "red"})
    assert request.options == {"colour": "red"}
    with pytest.raises(OptionError, match=r"^unknown option 'colour'; known: conf, ") as err:
        parse_options(request.options)
    assert err.value.status == 400
    request = parse_request({"data": JPEG, "max_faces": b"1001"})
    with pytest.raises(OptionError, match=r"^option max_faces: 1001 is outside \[1, 1000\]$"):
        parse_options(request.options)
    assert parse_request({"body": JPEG}).options == {}


# --------------------------------------------------------------------------
# raw and multipart bodies
# --------------------------------------------------------------------------


def test_header_lookup_ignores_case_and_skips_non_text_values():
    assert _header({"Content-Type": "image/jpeg"}, "content-type") == "image/jpeg"
    assert _header({"accept": "*/*", "CONTENT-TYPE": "a/b"}, "content-type") == "a/b"
    assert _header({"accept": "*/*"}, "content-type") == ""
    assert _header({"content-type": {"content-type": "image/jpeg"}}, "content-type") == ""
    assert _header({1: "x"}, "content-type") == "" and _header(None, "content-type") == ""


def test_raw_rows_are_their_bytes():
    assert request_bytes(JPEG) == JPEG
    value = request_bytes(bytearray(JPEG))
    assert value == JPEG and type(value) is bytes
    assert request_bytes({"body": bytearray(JPEG)}) == JPEG


@pytest.mark.parametrize("row", [42, None, [JPEG]], ids=["int", "none", "list"])
def test_rows_of_no_known_shape_are_refused(row):
    with pytest.raises(RequestError, match=exact("unexpected request shape")) as err:
        request_bytes(row)
    assert err.value.status == 400


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        " application/x-www-form-urlencoded ;charset=utf-8",
    ],
)
def test_form_urlencoded_bodies_are_415(content_type):
    with pytest.raises(RequestError, match=exact(FORM_MESSAGE)) as err:
        request_bytes({"body": b"a=b"}, {"CONTENT-TYPE": content_type})
    assert err.value.status == 415
    request = parse_request({"body": b"a=b"}, {"content-type": content_type})
    assert request.protocol == RAW and request.error.status == 415


def test_image_field_is_found_by_name_before_any_other_bytes():
    assert request_bytes({"note": b"B", "data": b"A"}) == b"A"
    assert request_bytes({"note": b"B", "image": b"A"}) == b"A"
    assert request_bytes({"note": b"B", "file": b"A"}) == b"A"
    assert request_bytes({"data": None, "note": "text", "upload": b"X"}) == b"X"
    assert request_bytes({"note": "text"}) == b""  # no bytes at all: the decoder says "empty"


def test_multipart_file_beside_text_fields_and_untyped_bytes():
    headers = {**MULTIPART, "upload": {"content-type": "image/png"}, "title": {}}
    row = {"upload": PNG, "title": b"holiday", "caption": "sea"}
    assert request_bytes(row, headers) == PNG
    # the file part wins even after a text field (curl -F title=holiday -F upload=@x.png)
    assert request_bytes({"title": b"holiday", "upload": PNG}, headers) == PNG
    assert request_bytes({"title": b"holiday", "upload": PNG}, MULTIPART) == b"holiday"


@pytest.mark.parametrize("count", [2, 3])
def test_multipart_with_files_of_different_types_is_refused(count):
    names = ["a", "b", "c"][:count]
    types = ["image/jpeg", "image/png", "application/octet-stream"]
    headers = {**MULTIPART, **{n: {"content-type": t} for n, t in zip(names, types)}}
    message = f"multipart body has {count} files; send one image per request"
    with pytest.raises(RequestError, match=exact(message)) as err:
        request_bytes({n: JPEG for n in names}, headers)
    assert err.value.status == 400


def test_multipart_body_length_allows_1024_bytes_per_part_and_one_more():
    """Beyond each part's name and value, 1024 bytes per part plus 1024 for the boundaries."""
    row = {"image": JPEG, "title": "hi"}
    carried = len("image") + len(JPEG) + len("title") + len("hi")
    headers = {**MULTIPART, "image": {"content-type": "image/jpeg"}}
    limit = carried + 1024 * 3
    assert request_bytes(row, {**headers, "Content-Length": f" {limit} "}) == JPEG
    assert request_bytes(row, {**headers, "Content-Length": "many"}) == JPEG
    message = (
        "multipart body has parts that did not reach the model (a repeated field, or too many "
        "fields); send one image per request"
    )
    with pytest.raises(RequestError, match=exact(message)) as err:
        request_bytes(row, {**headers, "content-length": str(limit + 1)})
    assert err.value.status == 400


def test_json_bodies_that_are_not_kserve_are_refused():
    for body in ({"image": B64}, [B64]):
        with pytest.raises(RequestError, match=exact(JSON_MESSAGE)):
            request_bytes({"body": body})
    # A long JSON body is no multipart body: its length is not held against it.
    body = {"picture": "A" * 5000}
    headers = {"Content-Type": "application/json", "Content-Length": "5020"}
    with pytest.raises(RequestError, match=exact(JSON_MESSAGE)):
        request_bytes({"body": body}, headers)
    request = parse_request({"body": body}, headers)
    assert request.protocol == RAW and str(request.error) == JSON_MESSAGE


def test_text_body_is_refused():
    with pytest.raises(RequestError, match=exact(RAW_MESSAGE)) as err:
        request_bytes({"body": "hello"})
    assert err.value.status == 400


def test_parse_raw_request():
    request = parse_request({"body": JPEG})
    assert (request.protocol, request.images, request.error) == (RAW, [JPEG], None)
    assert parse_request(JPEG).images == [JPEG]
    request = parse_request(42)
    assert (request.protocol, request.images) == (RAW, [])
    assert isinstance(request.error, RequestError)
    assert str(request.error) == "unexpected request shape"


# --------------------------------------------------------------------------
# base64
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [B64, B64.encode(), bytearray(B64.encode()), {"b64": B64}, {"b64": B64.encode()}],
    ids=["str", "bytes", "bytearray", "b64", "b64-bytes"],
)
def test_base64_forms_accepted(value):
    assert b64_image(value, "here") == JPEG


@pytest.mark.parametrize(
    "value",
    [
        B64.rstrip("="),  # no padding
        B64[:4] + "\n" + B64[4:],  # line break (base64 tools wrap at 76)
        " " + B64,
        "data:image/jpeg;base64," + B64,  # data URL
        base64.urlsafe_b64encode(b"\xfb\xff\xbf").decode(),  # URL-safe alphabet
        "%%",
        "é" + B64,
        b"\xff\xfe" + B64.encode(),
    ],
    ids=["unpadded", "newline", "space", "data-url", "urlsafe", "junk", "non-ascii", "bytes"],
)
def test_bad_base64_is_refused(value):
    with pytest.raises(RequestError, match=exact("input 3 element 1: not valid base64")) as err:
        b64_image(value, "input 3 element 1")
    assert err.value.status == 400


@pytest.mark.parametrize(
    "value",
    [None, 5, [B64], {"b64": B64, "name": "x"}, {"data": B64}],
    ids=["none", "int", "list", "b64-and-more", "data"],
)
def test_base64_that_is_no_string_is_refused(value):
    with pytest.raises(RequestError, match=exact("here: expected a base64 string")) as err:
        b64_image(value, "here")
    assert err.value.status == 400


def test_base64_up_to_64_mib_is_decoded_and_longer_is_413():
    limit = 64 * 1024 * 1024
    assert len(b64_image("A" * limit, "here")) == limit // 4 * 3
    with pytest.raises(RequestError, match=exact("here: base64 string too long")) as err:
        b64_image("A" * (limit + 1), "here")
    assert err.value.status == 413


# --------------------------------------------------------------------------
# KServe v1
# --------------------------------------------------------------------------


def test_v1_instance_forms():
    for instance in (B64, {"data": B64}, {"b64": B64}, {"image": B64}, {"data": {"b64": B64}}):
        assert v1_instance(instance, 0) == JPEG


@pytest.mark.parametrize(
    "instance,message",
    [
        ({"data": B64, "b64": B64}, 'expected {"data": "<base64>"} or {"b64": "<base64>"}'),
        ({"name": "x"}, 'expected {"data": "<base64>"} or {"b64": "<base64>"}'),
        ({"data": "%%"}, "not valid base64"),
        (7, "expected a base64 string"),
    ],
)
def test_v1_instance_errors_name_the_instance(instance, message):
    with pytest.raises(RequestError, match=exact(f"instance 3: {message}")) as err:
        v1_instance(instance, 3)
    assert err.value.status == 400


def test_v1_request_keeps_each_instance_error_in_place():
    body = {"instances": [B64, {"data": "%%"}, {"image": B64_PNG}, {}]}
    request = parse_request({"body": body, "conf": "0.5"})
    assert (request.protocol, request.error, request.options) == (V1, None, {"conf": "0.5"})
    assert request.images[0] == JPEG and request.images[2] == PNG
    assert str(request.images[1]) == "instance 1: not valid base64"
    assert str(request.images[3]).startswith("instance 3: expected {")


@pytest.mark.parametrize("instances", [[], "abc", {"data": B64}, None])
def test_v1_request_without_instances_is_refused(instances):
    request = parse_request({"body": {"instances": instances}})
    assert (request.protocol, request.images) == (V1, [])
    assert isinstance(request.error, RequestError) and request.error.status == 400
    assert str(request.error) == '"instances" must be a non-empty list'


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"data": "%s"}]}',
        b' \r\n\t{"instances": [{"data": "%s"}]}',
    ],
    ids=["plain", "leading-whitespace"],
)
def test_json_bodies_torchserve_did_not_decode_are_parsed(body):
    """Bytes (JSON sent as octet-stream, or TS_DECODE_INPUT_REQUEST=false) that hold JSON."""
    request = parse_request({"body": bytearray(body % B64.encode())})
    assert (request.protocol, request.images) == (V1, [JPEG])


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [}', b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["broken", "nested-past-the-parser"],
)
def test_bytes_that_only_look_like_json_are_a_raw_image(body):
    """Deep nesting used to raise RecursionError out of the parser: the whole batch failed."""
    request = parse_request({"body": body})
    assert (request.protocol, request.images) == (RAW, [body])


# --------------------------------------------------------------------------
# KServe v2
# --------------------------------------------------------------------------


def test_v2_request_with_several_inputs_and_elements():
    inputs = [
        v2("a", [B64, B64_PNG]),
        v2("b", [[B64_PNG, B64]], shape=[1, 2]),  # nested as its shape
        v2("c", [B64], shape=[1, 1]),
    ]
    request = parse_request({"body": {"id": "req-7", "inputs": inputs}, "max_faces": "2"})
    assert (request.protocol, request.request_id, request.error) == (V2, "req-7", None)
    assert request.images == [JPEG, PNG, PNG, JPEG, JPEG]
    assert request.names == ["a", "a", "b", "b", "c"]
    assert request.options == {"max_faces": "2"}


def test_v2_input_names_fall_back_to_their_position():
    inputs = [v2(None), v2("n" * 64), v2("n" * 65), v2(5)]
    request = parse_request({"body": {"inputs": inputs}})
    assert request.names == ["input-0", "n" * 64, "input-2", "input-3"]
    assert request.request_id is None


@pytest.mark.parametrize("request_id", [7, None, ["a"]])
def test_v2_id_that_is_not_text_is_dropped(request_id):
    assert parse_request({"body": {"id": request_id, "inputs": [v2()]}}).request_id is None


def test_v2_bad_element_is_that_images_error():
    request = parse_request({"body": {"inputs": [v2("a"), v2("b", [B64, "%%", 3])]}})
    assert request.error is None and request.images[:2] == [JPEG, JPEG]
    assert request.names == ["a", "b", "b", "b"]
    errors = request.images[2:]
    assert all(isinstance(e, RequestError) for e in errors)
    assert [str(e) for e in errors] == [
        "input 1 element 1: not valid base64",
        "input 1 element 2: expected a base64 string",
    ]


@pytest.mark.parametrize(
    "inputs,message",
    [
        ([], '"inputs" must be a non-empty list'),
        ("abc", '"inputs" must be a non-empty list'),
        ({"name": "a"}, '"inputs" must be a non-empty list'),
        ([v2(), "x"], "input 1: expected an object"),
        ([v2(), v2(datatype="FP32")], "input 1: datatype must be BYTES (base64 images)"),
        ([v2(), v2(datatype="bytes")], "input 1: datatype must be BYTES (base64 images)"),
        ([v2(), {"name": "a", "shape": [1], "data": [B64]}], "input 1: datatype must be BYTES"),
        ([v2(), {**v2(), "shape": None}], "input 1: shape must be a list of sizes"),
        ([v2(), v2(shape=1)], "input 1: shape must be a list of sizes"),
        ([v2(), v2(shape=[-1])], "input 1: shape must be a list of sizes"),
        ([v2(), v2(shape=["1"])], "input 1: shape must be a list of sizes"),
        ([v2(), v2(shape=[1.0])], "input 1: shape must be a list of sizes"),
        ([v2(), v2(shape=[3])], "input 1: data must hold shape's 3 base64 strings"),
        ([v2(), v2(shape=[2, 2])], "input 1: data must hold shape's 4 base64 strings"),
        ([v2(), v2(data=[], shape=[0])], "input 1: data must hold shape's 0 base64 strings"),
        ([v2(), v2(data=B64, shape=[1])], "input 1: data must hold shape's 1 base64 strings"),
        ([v2(), v2(data=[[B64, B64]], shape=[3])], "input 1: data must hold shape's 3 base64"),
    ],
)
def test_v2_request_errors(inputs, message):
    body = {"id": "r", "inputs": inputs}
    request = parse_request({"body": body})
    assert (request.protocol, request.request_id) == (V2, "r")
    assert (request.images, request.names) == ([], [])
    assert isinstance(request.error, RequestError) and request.error.status == 400
    assert re.match("^" + re.escape(message), str(request.error)), str(request.error)


# --------------------------------------------------------------------------
# rows TorchServe's kserve / kservev2 envelopes hand over
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        B64,
        {"data": B64},
        {"b64": B64},
        {"image": B64},
        {"data": {"b64": B64}},
        {"name": "x", "datatype": "BYTES", "shape": [1], "data": [B64]},
        {"datatype": "FP32"},
    ],
    ids=["string", "data", "b64", "image", "data-b64", "v2-input", "v2-any-datatype"],
)
def test_envelope_rows_are_recognised(row):
    assert is_envelope_row(row)


@pytest.mark.parametrize(
    "row",
    [
        {"body": JPEG},
        {"body": JPEG, "data": "a query parameter"},
        {"body": {"datatype": "BYTES"}},
        {"data": JPEG, "conf": b"0.5"},  # gRPC
        {"file": JPEG, "image": None},  # multipart
        {"b64": 5},
        {},
        JPEG,
        42,
        None,
        [B64],
    ],
    ids=[
        "raw",
        "raw-and-data-parameter",
        "json-body",
        "grpc",
        "multipart",
        "b64-not-text",
        "empty",
        "bytes",
        "int",
        "none",
        "list",
    ],
)
def test_other_rows_are_not_envelope_rows(row):
    assert not is_envelope_row(row)


def test_envelope_items():
    assert envelope_item(B64, 0) == JPEG and envelope_item({"image": B64}, 0) == JPEG
    assert envelope_item(v2("x", B64, shape=[1]), 0) == JPEG
    assert envelope_item(v2("x", B64, shape=[1, 1]), 0) == JPEG


@pytest.mark.parametrize(
    "row,message",
    [
        ({"data": "%%"}, "instance 4: not valid base64"),
        ({"data": B64, "image": B64}, 'instance 4: expected {"data": "<base64>"} or'),
        (v2("x", "%%", shape=[1]), "input 4 element 0: not valid base64"),
        (v2("x", B64, shape=[2]), f"input 4: {ENVELOPE_MESSAGE}"),
        (v2("x", B64, shape=[1], datatype="INT8"), "input 4: datatype must be BYTES"),
    ],
)
def test_envelope_item_errors_name_the_row(row, message):
    with pytest.raises(RequestError, match="^" + re.escape(message)) as err:
        envelope_item(row, 4)
    assert err.value.status == 400


def test_envelope_message_is_whole():
    with pytest.raises(RequestError, match=exact(f"input 0: {ENVELOPE_MESSAGE}")):
        envelope_item(v2("x", [B64, B64]), 0)


# --------------------------------------------------------------------------
# answers
# --------------------------------------------------------------------------


def test_error_body_is_the_message_alone():
    assert error_body(RequestError("instance 1: not valid base64")) == {
        "error": "instance 1: not valid base64"
    }
    assert error_body(ImageError("cannot decode")) == {"error": "cannot decode"}


def test_answer_v1_has_one_prediction_per_instance():
    results = [FACES, RequestError("instance 1: not valid base64"), []]
    expected = {"predictions": [FACES, {"error": "instance 1: not valid base64"}, []]}
    assert answer_v1(results) == expected
    assert answer_v1([]) == {"predictions": []}


def test_v2_element_is_json_text():
    assert v2_element(FACES) == json.dumps(FACES)
    assert v2_element([]) == "[]"
    assert v2_element(ImageError("bad")) == '{"error": "bad"}'


def test_answer_v2_has_one_output_per_input_name():
    request = Request(V2, names=["a", "b", "a"], request_id="client-1")
    results = [FACES, ImageError("input 1 element 0: not valid base64"), []]
    answer = answer_v2(request, results, "fd1", "1.0", "server-9")
    assert answer == {
        "id": "client-1",
        "model_name": "fd1",
        "model_version": "1.0",
        "outputs": [
            {
                "name": "a",
                "datatype": "BYTES",
                "shape": [2],
                "data": [json.dumps(FACES), "[]"],
            },
            {
                "name": "b",
                "datatype": "BYTES",
                "shape": [1],
                "data": ['{"error": "input 1 element 0: not valid base64"}'],
            },
        ],
    }
    assert list(answer) == ["id", "model_name", "model_version", "outputs"]


def test_answer_v2_without_client_id_uses_the_servers():
    request = Request(V2, names=["x"])
    answer = answer_v2(request, [[]], "fd1", "2", "server-9")
    assert answer["id"] == "server-9"
    assert answer["outputs"] == [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["[]"]}]


# --------------------------------------------------------------------------
# the per-request budget: images and pixels
# --------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n"
        + b"\0\0\0\rIHDR"
        + width.to_bytes(4, "big")
        + height.to_bytes(4, "big")
    )


def test_over_budget_counts_images_and_sums_pixels_of_several():
    assert over_budget([JPEG] * 3, 3, 10) is None  # headers unreadable: their own answers
    too_many = over_budget([JPEG] * 4, 3, 10)
    assert str(too_many) == "4 images in one request; send at most 3 per request"
    assert too_many.status == 413
    # one image: its own decode refuses it (400 "image too large"), not the budget
    assert over_budget([_png_header(100, 100)], 3, 10) is None
    assert over_budget([_png_header(5, 1), _png_header(5, 1)], 3, 10) is None  # exactly at it
    over = over_budget([_png_header(5, 1), _png_header(6, 1), ImageError("bad")], 3, 10)
    assert str(over) == "the images of one request hold 11 pixels; send at most 10 in all"
    assert over.status == 413
    two = over_budget([_png_header(6, 1), _png_header(5, 1)], 3, 10)  # two images are several
    assert str(two) == "the images of one request hold 11 pixels; send at most 10 in all"
    after_bad = over_budget([JPEG, _png_header(6, 1), _png_header(5, 1)], 3, 10)
    assert str(after_bad) == str(two)  # an unreadable header is skipped, not the end of the sum


def test_answer_share_leaves_room_for_the_wrapping_and_splits_the_rest():
    from yolov5face.serving.requests import answer_share

    assert answer_share(6_553_500, 1) == 6_553_500 - 4096
    assert answer_share(6_553_500, 2) == (6_553_500 - 4096) // 2
    assert answer_share(6_553_500, 0) == 6_553_500 - 4096  # a refused request keeps no images
    assert answer_share(6_553_500, 3) == 2_183_134  # whole bytes: 6549404 / 3 rounded down
    assert answer_share(100, 1) == 0


def test_answer_too_large_is_413_naming_size_limit_and_the_ways_out():
    from yolov5face.serving.requests import answer_too_large

    exc = answer_too_large(7_000_000, 6_553_500)
    assert exc.status == 413 and str(exc) == (
        "the answer would take 7000000 bytes, over the server's limit of 6553500: ask for fewer "
        "images or faces (max_faces), smaller crops, or crop_format=jpeg"
    )


@pytest.mark.parametrize(
    ("config", "env", "limit"),
    [
        ({}, None, 6_553_500),
        ({"max_answer_bytes": 1000}, None, 1000),
        ({"max_answer_bytes": 1000}, "500", 500),  # the frontend's lower limit wins
        ({"max_answer_bytes": 1000}, "5000", 1000),
        ({}, "not a number", 6_553_500),
    ],
)
def test_answer_limit_is_the_smaller_of_the_handler_and_frontend_limits(
    monkeypatch, config, env, limit
):
    from yolov5face.serving.handler import answer_limit

    if env is None:
        monkeypatch.delenv("TS_MAX_RESPONSE_SIZE", raising=False)
    else:
        monkeypatch.setenv("TS_MAX_RESPONSE_SIZE", env)
    assert answer_limit(config) == limit


def test_shipped_answer_limit_is_the_frontends_max_response_size():
    """config.properties and model-config.yaml name the same limit, and it is the default."""
    import yaml

    from yolov5face.serving.requests import DEFAULT_MAX_ANSWER_BYTES

    config = Path(__file__).parents[1] / "yolov5face" / "serving" / "config"
    props = dict(
        line.split("=", 1)
        for line in (config / "config.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    handler = yaml.safe_load((config / "model-config.yaml").read_text())["handler"]
    assert int(props["max_response_size"]) == handler["max_answer_bytes"]
    assert handler["max_answer_bytes"] == DEFAULT_MAX_ANSWER_BYTES
