"""TorchServe handler for `fd1`: thin glue between TorchServe's batch and `Detector`."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from yolov5face import settings
from yolov5face.pipeline.decode import ImageError
from yolov5face.pipeline.detector import STAGES, Detector
from yolov5face.serving.busy_board import usable_cores
from yolov5face.serving.engines import served_backend, served_batch
from yolov5face.serving.malloc_tuning import keep_freed_buffers
from yolov5face.serving.split import BatchSplitter

logger = logging.getLogger(__name__)

# Field names real clients use: raw body ("body"), gRPC input key and form field ("data"),
# and common multipart field names.
_BODY_KEYS = ("body", "data", "file", "image")


def request_bytes(row: Any) -> bytes:
    """The image bytes of one request row (raw body, gRPC `data` or a multipart field)."""
    if isinstance(row, (bytes, bytearray)):
        return bytes(row)
    if not isinstance(row, dict):
        raise ImageError("unexpected request shape")
    value = next((row[k] for k in _BODY_KEYS if row.get(k) is not None), None)
    if value is None:
        value = next((v for v in row.values() if isinstance(v, (bytes, bytearray))), b"")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ImageError(
        "expected raw image bytes; send the image with no Content-Type or "
        "application/octet-stream / image/jpeg"
    )


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
            max_pixels=int(config.get("max_pixels", 40_000_000)),
            max_batch=served_batch({"batchSize": batch_size, "handler": config}),
            fast_decode=_flag(config, "fast_decode", "YOLOV5FACE_FAST_DECODE"),
            build_engine=False,
        )
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

    def handle(self, data: list, context: Any) -> list[bytes]:
        """One TorchServe batch -> one JSON body per request; bad ones get their own 400."""
        assert self.detector is not None, "handler used before initialize()"
        start = time.perf_counter()
        blobs: list[bytes | ImageError] = []
        for row in data:
            try:
                blobs.append(request_bytes(row))
            except ImageError as exc:
                blobs.append(exc)
        good = [b for b in blobs if isinstance(b, bytes)]
        timings: dict[str, float] = {}
        parts = 1
        if self.splitter is None:
            answers = iter(self.detector.detect(good, timings))
        else:
            results, parts = self.splitter.detect(good, timings)
            answers = iter(results)
        out, bad = [], 0
        for idx, blob in enumerate(blobs):
            answer = blob if isinstance(blob, ImageError) else next(answers)
            context.set_response_content_type(idx, "application/json")
            if isinstance(answer, ImageError):
                bad += 1
                context.set_response_status(answer.status, str(answer), idx=idx)
                out.append(json.dumps({"error": str(answer)}).encode())
            else:
                out.append(json.dumps(answer).encode())
        self._record(timings, len(blobs), bad, parts > 1)
        logger.debug("batch of %d in %.1f ms", len(blobs), (time.perf_counter() - start) * 1e3)
        return out


_service = FaceDetectionHandler()


def handle(data: list | None, context: Any) -> list[bytes] | None:
    """TorchServe entry point (module-level function style)."""
    if _service.detector is None:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
