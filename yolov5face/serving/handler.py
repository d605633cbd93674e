"""TorchServe handler for `fd1`: thin glue between TorchServe's batch and `Detector`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from yolov5face import settings
from yolov5face.pipeline.decode import DEFAULT_MAX_PIXELS, ImageError
from yolov5face.pipeline.detector import STAGES, Detector
from yolov5face.pipeline.options import DEFAULT as DEFAULT_OPTIONS
from yolov5face.pipeline.options import OptionError, Options, parse_options
from yolov5face.serving.busy_board import usable_cores
from yolov5face.serving.engines import served_backend, served_batch
from yolov5face.serving.malloc_tuning import keep_freed_buffers
from yolov5face.serving.requests import (
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_IMAGES,
    RAW,
    V1,
    Request,
    RequestError,
    answer_share,
    answer_too_large,
    answer_v1,
    answer_v2,
    envelope_item,
    error_body,
    is_envelope_row,
    over_budget,
    parse_request,
    request_bytes,
    v2_element,
)
from yolov5face.serving.split import BatchSplitter

logger = logging.getLogger(__name__)

__all__ = ["FaceDetectionHandler", "handle", "request_bytes"]


def _flag(config: dict, key: str, env: str) -> bool:
    """A yes/no handler setting: the environment variable wins over the model config."""
    value = config.get(key)
    default = None if value is None else settings.parse_flag(value, f"handler: {key}")
    return settings.flag(env, default)


class MetricSums:
    """Per-batch counters summed in memory and handed to TorchServe by one background thread.

    Each metric TorchServe gets is a line on the worker's stdout that the frontend parses;
    emitting seven per batch cost both processes CPU at every batch. Prometheus counters only
    need the running totals, so they are flushed once per `interval` seconds instead.
    """

    def __init__(self, metrics: dict[str, Any], dims: list[str], interval: float):
        self._metrics, self._dims, self._interval = metrics, dims, interval
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._flusher = threading.Thread(target=self._run, name="fd1-metrics", daemon=True)
        self._flusher.start()

    def add(self, values: dict[str, float]) -> None:
        """Add one batch's values."""
        with self._lock:
            for name, value in values.items():
                self._pending[name] = self._pending.get(name, 0.0) + value

    def flush(self) -> None:
        """Emit what was summed since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for name, value in pending.items():
            self._metrics[name].add_or_update(value, self._dims)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.flush()
            except Exception:  # a metrics hiccup must never take the worker down
                logger.exception("flushing fd1 metrics failed")


class _DropPerBatchLines(logging.Filter):
    """Drops TorchServe's own per-batch INFO line ("Backend received inference at ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Backend received inference")


class FaceDetectionHandler:
    """Loads the exported model at worker start and answers each batch in one inference."""

    def __init__(self) -> None:
        self.detector: Detector | None = None
        self.metrics: MetricSums | None = None
        self.splitter: BatchSplitter | None = None
        self.model_name = "fd1"
        self.budget = (DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS)  # per request: images, pixels
        self.max_answer_bytes = DEFAULT_MAX_ANSWER_BYTES

    def initialize(self, context: Any) -> None:
        """Build the Detector from the archived model and warm it up."""
        model_dir = Path(context.system_properties["model_dir"])
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.model_name = context.manifest.get("model", {}).get("modelName", "fd1")
        # The plain model; the ONNX Runtime backend finds the banded one beside it itself.
        onnx_files = sorted(
            p for p in model_dir.glob("*.onnx") if not p.name.endswith(".band.onnx")
        )
        if not onnx_files:
            raise RuntimeError(f"no .onnx model in the archive ({model_dir})")
        threads = settings.integer(
            "YOLOV5FACE_THREADS", int(config["threads"]) if "threads" in config else None
        )
        if config.get("reuse_freed_memory", True):
            keep_freed_buffers()
        batch_size = int(context.system_properties.get("batch_size") or 1)
        # The same backend check and batch size as serve's pre-start step (serving/engines.py):
        # a TensorRT engine is looked up under that key and never built in a worker.
        self.detector = Detector(
            weights=onnx_files[0],
            backend=served_backend(settings.text("YOLOV5FACE_BACKEND", config.get("backend"))),
            threads=threads,
            max_pixels=int(config.get("max_pixels", DEFAULT_MAX_PIXELS)),
            max_batch=served_batch({"batchSize": batch_size, "handler": config}),
            fast_decode=_flag(config, "fast_decode", "YOLOV5FACE_FAST_DECODE"),
            build_engine=False,
        )
        self.budget = (
            int(config.get("max_images", DEFAULT_MAX_IMAGES)),
            int(config.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )
        self.max_answer_bytes = answer_limit(config)
        cores = usable_cores()
        split = _flag(config, "split_batches", "YOLOV5FACE_SPLIT_BATCHES")
        if split and cores > 1 and self.detector.backend.on_cpu:
            # The workers of one model share the extracted archive's folder for their board.
            self.splitter = BatchSplitter(self.detector, model_dir / ".busy", cores)
        self.detector.warmup(tuple(sorted({1, batch_size})))
        if self.splitter is not None:
            self.splitter.warmup((batch_size,))
        self._init_metrics(context, float(config.get("metrics_interval_s", 1.0)))
        for log_handler in logging.getLogger().handlers:
            log_handler.addFilter(_DropPerBatchLines())
        logger.info("fd1 ready: %s", json.dumps(self.detector.describe()))

    def _init_metrics(self, context: Any, interval: float) -> None:
        store = getattr(context, "metrics", None)
        if store is None or not hasattr(store, "add_metric_to_cache"):
            return
        from ts.metrics.metric_type_enum import MetricTypes

        metrics = {
            name: store.add_metric_to_cache(f"Fd1{name}", unit, ["ModelName"], MetricTypes.COUNTER)
            for name, unit in [(f"{stage.capitalize()}Ms", "ms") for stage in STAGES]
            + [("Images", "count"), ("BadImages", "count"), ("Batches", "count")]
            + [("SplitBatches", "count")]
        }
        self.metrics = MetricSums(metrics, [self.model_name], interval)

    def _record(self, timings: dict[str, float], images: int, bad: int, split: bool) -> None:
        if self.metrics is None:
            return
        values = {f"{stage.capitalize()}Ms": timings.get(stage, 0.0) * 1e3 for stage in STAGES}
        counts = {"Images": images, "BadImages": bad, "Batches": 1, "SplitBatches": int(split)}
        self.metrics.add({**values, **counts})

    def _detect(
        self, images: list[bytes | ImageError], options: list[Options] | None = None
    ) -> tuple[list[Any], dict, int]:
        """Faces (or the error) per image, with the stage timings and the split count.

        `options`: one per image; every image still goes through one network pass.
        """
        assert self.detector is not None, "handler used before initialize()"
        good = [b for b in images if isinstance(b, bytes)]
        kept = None
        if options is not None:
            kept = [o for b, o in zip(images, options) if isinstance(b, bytes)]
        timings: dict[str, float] = {}
        parts = 1
        if self.splitter is None:
            answers = iter(self.detector.detect(good, timings, kept))
        else:
            results, parts = self.splitter.detect(good, timings, kept)
            answers = iter(results)
        out = [b if isinstance(b, ImageError) else next(answers) for b in images]
        return out, timings, parts

    def handle(self, data: list, context: Any) -> list:
        """One TorchServe batch -> one answer per request; bad ones get their own 4xx."""
        start = time.perf_counter()
        if _from_envelope(data, context):
            return self._handle_envelope(data, context)
        requests = [parse_request(row, _headers(context, idx)) for idx, row in enumerate(data)]
        for request in requests:
            refused = request.error or over_budget(request.images, *self.budget)
            if refused is not None:  # none of its images reach the network
                request.error, request.images = refused, []
        options = [self._options(request) for request in requests]
        images = [image for request in requests for image in request.images]
        per_image = [
            replace(o, answer_bytes=answer_share(self.max_answer_bytes, len(request.images)))
            for request, o in zip(requests, options)
            for _ in request.images
        ]
        results, timings, parts = self._detect(images, per_image)
        out, at = [], 0
        for idx, request in enumerate(requests):
            mine = results[at : at + len(request.images)]
            at += len(request.images)
            context.set_response_content_type(idx, "application/json")
            body = json.dumps(self._answer(request, mine, context, idx)).encode()
            if len(body) > self.max_answer_bytes:  # TorchServe would drop the worker instead
                request.error = answer_too_large(len(body), self.max_answer_bytes)
                body = json.dumps(self._answer(request, mine, context, idx)).encode()
            out.append(body)
        bad = sum(isinstance(r, ImageError) for r in results)
        self._record(timings, len(images), bad, parts > 1)
        logger.debug("batch of %d in %.1f ms", len(data), (time.perf_counter() - start) * 1e3)
        return out

    def _options(self, request: Request) -> Options:
        """The request's options; a bad one becomes the request's own 400 (its images skip
        the network)."""
        assert self.detector is not None
        try:
            return parse_options(request.options, threshold=self.detector.conf)
        except OptionError as exc:
            request.error = request.error or exc
            request.images = [exc for _ in request.images]
            return DEFAULT_OPTIONS

    def _answer(self, request: Request, results: list[Any], context: Any, idx: int) -> Any:
        """The body of one request in its protocol's shape; sets its status when it failed."""
        failed = request.error or next((r for r in results if isinstance(r, ImageError)), None)
        if failed is not None:
            context.set_response_status(failed.status, str(failed), idx=idx)
        if request.error is not None or request.protocol == RAW:
            return error_body(failed) if failed is not None else results[0]
        if request.protocol == V1:
            return answer_v1(results)
        version = str(context.manifest.get("model", {}).get("modelVersion", "1.0"))
        request_id = context.get_request_id(idx) or ""
        return answer_v2(request, results, self.model_name, version, request_id)

    def _handle_envelope(self, data: list | None, context: Any) -> list:
        """Rows from TorchServe's kserve/kservev2 envelope: the items of one request.

        The envelope wraps the list returned here into that request's single answer, so
        statuses go to request 0; with more than one request per batch it fails the batch.
        """
        if len(getattr(context, "request_ids", None) or {}) > 1:
            logger.error("service_envelope kserve/kservev2 needs batchSize 1 for fd1")
        v2 = isinstance(getattr(context, "input_names", None), list)
        context.set_response_content_type(0, "application/json")
        if not data:
            exc = RequestError('"instances" (v1) or "inputs" (v2) must be a non-empty list')
            return _envelope_error(exc, v2, context)
        images: list[bytes | ImageError] = []
        for idx, row in enumerate(data):
            try:
                images.append(envelope_item(row, idx))
            except ImageError as exc:
                images.append(exc)
        refused = over_budget(images, *self.budget)
        if refused is not None:
            return _envelope_error(refused, v2, context)
        results, timings, parts = self._detect(images)
        failed = next((r for r in results if isinstance(r, ImageError)), None)
        if failed is not None:
            context.set_response_status(failed.status, str(failed), idx=0)
        bad = sum(isinstance(r, ImageError) for r in results)
        self._record(timings, len(images), bad, parts > 1)
        answer = [v2_element(r) for r in results] if v2 else answer_v1(results)["predictions"]
        size = len(json.dumps(answer))
        if size > answer_share(self.max_answer_bytes, 1):  # room for the envelope's wrapping
            return _envelope_error(answer_too_large(size, self.max_answer_bytes), v2, context)
        return answer


def answer_limit(config: dict) -> int:
    """Bytes one answer may take: `handler.max_answer_bytes`, or TorchServe's own
    `TS_MAX_RESPONSE_SIZE` when that is set lower (the frontend enforces the smaller)."""
    limit = int(config.get("max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES))
    frontend = os.environ.get("TS_MAX_RESPONSE_SIZE", "").strip()
    return min(limit, int(frontend)) if frontend.isdigit() else limit


def _envelope_error(exc: ImageError, v2: bool, context: Any) -> list:
    """The envelope's answer when its whole request is refused (status on request 0)."""
    context.set_response_status(exc.status, str(exc), idx=0)
    if v2:
        context.input_names = ["error"]
        return [v2_element(exc)]
    return [error_body(exc)]


def _from_envelope(data: list, context: Any) -> bool:
    """Whether `data` holds what a kserve/kservev2 envelope unwrapped, not TorchServe's rows.

    A row TorchServe built has one key per parameter of its request, and TorchServe records a
    content type for each of those in the request's headers; an envelope's rows (the
    instances or inputs of request 0) do not line up with the requests that way.
    """
    if not data or isinstance(getattr(context, "input_names", None), list):
        return True
    ids = getattr(context, "request_ids", None)
    if ids is not None and len(ids) != len(data):
        return True
    for idx, row in enumerate(data):
        headers = _headers(context, idx)
        if headers is None:
            return is_envelope_row(row)
        if not isinstance(row, dict):
            return not isinstance(row, (bytes, bytearray))
        if any(not isinstance(headers.get(key), dict) for key in row):
            return True
    return False


def _headers(context: Any, idx: int) -> dict | None:
    """The request's headers as TorchServe passes them, None outside TorchServe."""
    getter = getattr(context, "get_all_request_header", None)
    return getter(idx) if getter is not None else None


_service = FaceDetectionHandler()


def handle(data: list | None, context: Any) -> list | None:
    """TorchServe entry point (module-level function style).

    TorchServe calls it once with no data to initialize; later, no data can only come from
    the kserve envelope (a body without "instances"), which gets its 400.
    """
    if _service.detector is None:
        _service.initialize(context)
        if data is None:
            return None
    return _service.handle(data or [], context)
