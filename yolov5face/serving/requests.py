"""Request shapes fd1 accepts (raw, multipart, KServe v1 and v2) and the answer each one gets.

TorchServe hands the handler one row per request. Without a service envelope a row is the
request itself: `{"body": <bytes>}` for a raw body, one key per form field for multipart, or
`{"body": <dict>}` for a JSON body (a KServe v1 `{"instances": [...]}` or v2 `{"inputs": [...]}`
body sent to `/predictions/fd1`, `/v1/models/fd1:predict` or `/v2/models/fd1/infer`).

With `service_envelope=kserve` or `kservev2`, TorchServe's envelope has already unwrapped the
first request of the batch: the rows are its v1 instances (`{"data": "<base64>"}`) or its v2
inputs (BYTES data cut to the first element), and the envelope wraps the answers itself. The
envelope handles one request per batch, so KServe deployments run with batchSize 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from yolov5face.pipeline.decode import ImageError, image_size
from yolov5face.pipeline.options import NAMES as OPTION_NAMES
from yolov5face.pipeline.options import AnswerTooLarge

RAW, V1, V2 = "raw", "v1", "v2"
# Field names real clients use for the image: raw body ("body"), gRPC input key and form
# field ("data"), common multipart field names.
_BODY_KEYS = ("body", "data", "file", "image")
_FORM = "application/x-www-form-urlencoded"
# A base64 image bigger than this cannot have come through max_request_size anyway.
_MAX_B64 = 64 * 1024 * 1024
# Room for one multipart part's boundary and headers (Content-Disposition with a long file
# name, Content-Type): a body longer than its parts plus this much each hid a repeated field.
_PART_OVERHEAD = 1024
# Images one request may carry (handler.max_images in model-config.yaml overrides).
DEFAULT_MAX_IMAGES = 32
# Bytes one answer may take: TorchServe's max_response_size in config.properties. The frontend
# drops the worker (and so its whole batch) that sends a longer answer.
DEFAULT_MAX_ANSWER_BYTES = 6_553_500
# Room in that budget for the protocol's wrapping of a request's images (v1 "predictions",
# v2 outputs with each image's JSON escaped into a string).
_WRAPPING = 4096
# A body TorchServe left as bytes that holds a JSON object (JSON whitespace may lead).
_JSON_OBJECT = re.compile(rb"[ \t\r\n]*\{")


class RequestError(ImageError):
    """A request whose shape is wrong; never quotes the request's bytes back."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One HTTP request: its protocol and the images (or per-image errors) it carries."""

    protocol: str
    images: list[bytes | ImageError] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # v2: the input each image came from
    request_id: str | None = None  # v2: the client's "id"
    error: ImageError | None = None  # the whole request is unusable
    options: dict[str, Any] = field(default_factory=dict)  # query parameters (pipeline/options)


def split_options(row: Any) -> tuple[Any, dict[str, Any]]:
    """(the row without its options, the options): URL query parameters, gRPC input keys or
    form fields named like an option. Beside a raw body every other key is a query parameter,
    so an unknown one reaches the option parser and gets its 400.

    TorchServe 0.12 hands query parameters to the handler on `/models/fd1/invoke`,
    `/invocations?model_name=fd1` and `/fd1/predict`, not on `/predictions/fd1`, whose route
    drops the query string in the frontend (InferenceRequestHandler.handlePredictions)."""
    if not isinstance(row, dict):
        return row, {}
    if "body" in row:  # model_name: /invocations' own routing parameter
        others = {k: v for k, v in row.items() if k not in ("body", "model_name")}
        return {"body": row["body"]}, others
    if "data" in row and isinstance(row["data"], (bytes, bytearray)):  # gRPC: data + options
        others = {k: v for k, v in row.items() if k != "data"}
        if all(isinstance(v, (bytes, bytearray, str)) and len(v) < 64 for v in others.values()):
            return {"data": row["data"]}, others
    options = {k: v for k, v in row.items() if k in OPTION_NAMES}
    return {k: v for k, v in row.items() if k not in options}, options


def _header(headers: dict | None, name: str) -> str:
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def _part_type(headers: dict | None, key: str) -> str | None:
    """The content type TorchServe recorded for one parameter (None when it recorded none)."""
    entry = (headers or {}).get(key)
    if isinstance(entry, dict):
        return entry.get("content-type") or None
    return None


def _check_multipart(row: dict, headers: dict | None) -> None:
    """One file per multipart request: refuse a second file, or a repeated field.

    TorchServe keeps one value per field name (the last), so a repeated field is only seen in
    the body's length: a body longer than the parts handed over, beyond their part headers.
    """
    files = [
        k for k, v in row.items() if isinstance(v, (bytes, bytearray)) and _part_type(headers, k)
    ]
    if len(files) > 1:
        raise RequestError(f"multipart body has {len(files)} files; send one image per request")
    length = _header(headers, "content-length").strip()
    carried = sum(len(k) + len(v) for k, v in row.items() if isinstance(v, (bytes, bytearray, str)))
    if length.isdigit() and int(length) > carried + _PART_OVERHEAD * (len(row) + 1):
        raise RequestError(
            "multipart body has parts that did not reach the model (a repeated field, or too "
            "many fields); send one image per request"
        )


def request_bytes(row: Any, headers: dict | None = None) -> bytes:
    """The image bytes of one raw or multipart request row.

    `headers` are the request's headers as TorchServe passes them (context.get_all_request_header):
    they tell a form-urlencoded body and the parts of a multipart body apart.
    """
    if isinstance(row, (bytes, bytearray)):
        return bytes(row)
    if not isinstance(row, dict):
        raise RequestError("unexpected request shape")
    if _header(headers, "content-type").split(";")[0].strip().lower() == _FORM:
        raise RequestError(
            "a form-urlencoded body is not an image; send the image bytes with "
            "Content-Type application/octet-stream or image/jpeg (curl -T or --data-binary "
            "with -H 'Content-Type: application/octet-stream')",
            415,
        )
    if "body" not in row:
        _check_multipart(row, headers)
    value = next((row[k] for k in _BODY_KEYS if row.get(k) is not None), None)
    if value is None:  # a file part (it has a content type) before any text field
        blobs = [k for k, v in row.items() if isinstance(v, (bytes, bytearray))]
        files = [k for k in blobs if _part_type(headers, k)]
        value = row[(files or blobs)[0]] if blobs else b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        raise RequestError(
            'unsupported JSON body: send {"instances": [{"data": "<base64>"}]} (KServe v1) or '
            '{"inputs": [{"name": ..., "datatype": "BYTES", "shape": [n], "data": [...]}]} (v2)'
        )
    raise RequestError(
        "expected raw image bytes; send the image with no Content-Type or "
        "application/octet-stream / image/jpeg"
    )


def b64_image(value: Any, where: str) -> bytes:
    """Decode one base64 image string; RequestError naming `where` when it is not one."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a base64 string")
    if len(value) > _MAX_B64:
        raise RequestError(f"{where}: base64 string too long", 413)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise RequestError(f"{where}: not valid base64") from None


def v1_instance(instance: Any, idx: int) -> bytes:
    """The image of one KServe v1 instance: "<b64>", {"data": "<b64>"} or {"b64": "<b64>"}."""
    where = f"instance {idx}"
    if isinstance(instance, dict):
        keys = [k for k in ("data", "b64", "image") if k in instance]
        if len(keys) != 1:
            raise RequestError(f'{where}: expected {{"data": "<base64>"}} or {{"b64": "<base64>"}}')
        instance = instance[keys[0]]
    return b64_image(instance, where)


def _v2_input(entry: Any, idx: int, envelope: bool) -> tuple[str, list[bytes | ImageError]]:
    """(name, images) of one KServe v2 input tensor; `envelope`: already cut to one element."""
    if not isinstance(entry, dict):
        raise RequestError(f"input {idx}: expected an object")
    name = entry.get("name")
    name = name if isinstance(name, str) and len(name) <= 64 else f"input-{idx}"
    if entry.get("datatype") != "BYTES":
        raise RequestError(f"input {idx}: datatype must be BYTES (base64 images)")
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise RequestError(f"input {idx}: shape must be a list of sizes")
    count = math.prod(shape)
    data = entry.get("data")
    if envelope:
        if count != 1:
            raise RequestError(
                f"input {idx}: TorchServe's kservev2 envelope passes only the first element of "
                "a BYTES input; send one image per input (shape [1])"
            )
        data = [data]
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]
    if not isinstance(data, list) or len(data) != count or count == 0:
        raise RequestError(f"input {idx}: data must hold shape's {count} base64 strings")
    images: list[bytes | ImageError] = []
    for j, value in enumerate(data):
        try:
            images.append(b64_image(value, f"input {idx} element {j}"))
        except ImageError as exc:
            images.append(exc)
    return name, images


def _json_body(row: dict) -> Any:
    body = row.get("body")
    if isinstance(body, (bytes, bytearray)) and _JSON_OBJECT.match(body):
        try:  # a JSON body TorchServe did not decode (TS_DECODE_INPUT_REQUEST=false)
            return json.loads(bytes(body))
        except (ValueError, RecursionError):  # nested past the parser's depth: not a request
            return None
    return body


def parse_request(row: Any, headers: dict | None = None) -> Request:
    """One request row (no envelope): raw/multipart image, or a whole KServe v1/v2 body."""
    row, options = split_options(row)
    request = _parse_request(row, headers)
    request.options = options
    return request


def _parse_request(row: Any, headers: dict | None) -> Request:
    body = _json_body(row) if isinstance(row, dict) else None
    if isinstance(body, dict) and "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            return Request(V1, error=RequestError('"instances" must be a non-empty list'))
        images: list[bytes | ImageError] = []
        for idx, instance in enumerate(instances):
            try:
                images.append(v1_instance(instance, idx))
            except ImageError as exc:
                images.append(exc)
        return Request(V1, images)
    if isinstance(body, dict) and "inputs" in body:
        request_id = body.get("id") if isinstance(body.get("id"), str) else None
        request = Request(V2, request_id=request_id)
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            request.error = RequestError('"inputs" must be a non-empty list')
            return request
        try:
            for idx, entry in enumerate(inputs):
                name, images = _v2_input(entry, idx, envelope=False)
                request.names += [name] * len(images)
                request.images += images
        except ImageError as exc:
            request.error, request.images, request.names = exc, [], []
        return request
    try:
        return Request(RAW, [request_bytes(row, headers)])
    except ImageError as exc:
        return Request(RAW, error=exc)


def over_budget(
    images: list[bytes | ImageError], max_images: int, max_pixels: int
) -> RequestError | None:
    """The 413 for a request of more than `max_images` images, or of several holding more than
    `max_pixels` pixels in all (read from their headers); None within both.

    One request must not cost more than one image at the limit: 20 MiB of tiny base64 images
    used to hold a worker past its response timeout (TorchServe then restarts it)."""
    if len(images) > max_images:
        return RequestError(
            f"{len(images)} images in one request; send at most {max_images} per request", 413
        )
    if len(images) < 2:
        return None  # one image: decoding checks its own size (400 "image too large")
    total = 0
    for image in images:
        if isinstance(image, bytes):
            try:
                _, width, height = image_size(image)
            except ImageError:
                continue  # a bad image gets its own answer
            total += width * height
    if total > max_pixels:
        return RequestError(
            f"the images of one request hold {total} pixels; send at most {max_pixels} in all",
            413,
        )
    return None


def answer_share(limit: int, images: int) -> int:
    """Bytes each of a request's `images` may take so that its whole answer fits `limit`."""
    return max(0, limit - _WRAPPING) // max(1, images)


def answer_too_large(size: int, limit: int) -> AnswerTooLarge:
    """The 413 of a request whose answer came out longer than the server may send."""
    return AnswerTooLarge(
        f"the answer would take {size} bytes, over the server's limit of {limit}: ask for "
        "fewer images or faces (max_faces), smaller crops, or crop_format=jpeg"
    )


def is_envelope_row(row: Any) -> bool:
    """True for what TorchServe's kserve/kservev2 envelopes hand over: an instance or input."""
    if isinstance(row, str):
        return True
    if not isinstance(row, dict) or "body" in row:
        return False
    if "datatype" in row:
        return True
    return any(isinstance(row.get(k), (str, dict)) for k in ("data", "b64", "image"))


def envelope_item(row: Any, idx: int) -> bytes:
    """The image of one row the envelope handed over (a v1 instance or a cut v2 input)."""
    if isinstance(row, dict) and "datatype" in row:
        _, images = _v2_input(row, idx, envelope=True)
        if isinstance(images[0], ImageError):
            raise images[0]
        return images[0]
    return v1_instance(row, idx)


def error_body(exc: ImageError) -> dict:
    """The JSON error of one image or request."""
    return {"error": str(exc)}


def answer_v1(results: list[Any]) -> dict:
    """KServe v1 response: one prediction per instance (faces, or {"error": ...})."""
    return {"predictions": [error_body(r) if isinstance(r, ImageError) else r for r in results]}


def v2_element(result: Any) -> str:
    """One element of a v2 BYTES output: the JSON text of the faces or of the error."""
    return json.dumps(error_body(result) if isinstance(result, ImageError) else result)


def answer_v2(
    request: Request, results: list[Any], model: str, version: str, fallback_id: str
) -> dict:
    """KServe v2 response: one BYTES output per input, one JSON text per image."""
    outputs: dict[str, list[str]] = {}
    for name, result in zip(request.names, results):
        outputs.setdefault(name, []).append(v2_element(result))
    return {
        "id": request.request_id or fallback_id,
        "model_name": model,
        "model_version": version,
        "outputs": [
            {"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}
            for name, data in outputs.items()
        ],
    }
