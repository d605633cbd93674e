"""Backends and conversion on the CPU: ONNX export round trip, batch invariance, engine cache."""

import json

import numpy as np
import onnx
import pytest

from yolov5face.backends import choose_backend
from yolov5face.convert.engine_cache import EngineCache, EngineKey
from yolov5face.tools.compare import compare_faces


def test_onnx_metadata_and_checker(onnx_model, weights):
    from yolov5face.model.checkpoint import sha256_file

    proto = onnx.load(onnx_model)
    onnx.checker.check_model(proto)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["yolov5face"])
    assert meta["sha256"] == sha256_file(weights)
    assert meta["img_size"] == 320 and meta["extra"]["opset"] == 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"


def test_onnx_graph_has_no_run_time_shape_arithmetic(onnx_model):
    """Only the batch axis is dynamic: reshapes use constant targets, no Shape/Gather chains."""
    ops = [node.op_type for node in onnx.load(onnx_model).graph.node]
    assert {"Shape", "Gather", "Mod", "Div"}.isdisjoint(ops), sorted(set(ops))
    assert "Conv" in ops and "Transpose" in ops


def test_onnxruntime_equals_torch_raw(detectors, images):
    from yolov5face.pipeline.decode import decode_image
    from yolov5face.pipeline.letterbox import letterbox_batch

    decoded = [decode_image((images / n).read_bytes()) for n in ("zidane.jpg", "test.jpg")]
    batch, _ = letterbox_batch(decoded, 320)
    ours = detectors["onnxruntime"].backend.infer(batch)
    ref = detectors["torch"].backend.infer(batch)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [1, 3, 8, 17, 32])
def test_dynamic_batch_same_as_batch_one(detector, size):
    rng = np.random.default_rng(size)
    batch = rng.uniform(0, 1, (size, 3, 320, 320)).astype(np.float32)
    together = detector.backend.infer(batch)
    alone = np.concatenate([detector.backend.infer(batch[i : i + 1]) for i in range(size)])
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [1, 3, 8])
def test_torch_and_onnxruntime_same_detections(detectors, images, golden_names, size):
    blobs = [(images / n).read_bytes() for n in golden_names]
    blobs = (blobs * size)[: max(size, 1)]
    a = detectors["torch"].detect(blobs)
    b = detectors["onnxruntime"].detect(blobs)
    for x, y in zip(a, b):
        assert compare_faces(x, y) == []


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("YOLOV5FACE_BACKEND", raising=False)
    assert choose_backend(None)[0] == "onnxruntime"  # no TensorRT on this machine
    assert choose_backend("torch") == ("torch", "requested explicitly")
    monkeypatch.setenv("YOLOV5FACE_BACKEND", "torch")
    assert choose_backend(None)[0] == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend("tflite")


KEY = EngineKey("ab" * 32, "fp16", (1, 8, 8), "uint8-nhwc-bgr", "10.5.0", "Tesla T4", "7.5")


@pytest.mark.parametrize(
    "field,value",
    [
        ("source_sha256", "cd" * 32),
        ("profile", (1, 16, 16)),
        ("profile", (1, 4, 8)),
        ("input_layout", "float32-nchw-rgb"),
        ("builder", 2),
        ("precision", "fp32"),
        ("tensorrt_version", "10.6.0"),
        ("gpu_name", "NVIDIA A10G"),
        ("compute_capability", "8.6"),
        ("method", "torch2trt"),
    ],
)
def test_engine_key_changes_with_every_field(field, value):
    from dataclasses import replace

    other = replace(KEY, **{field: value})
    assert other.digest() != KEY.digest() and other.filename() != KEY.filename()


def test_engine_cache_builds_once_and_reuses(tmp_path):
    cache = EngineCache(tmp_path)
    calls = []

    def build(path):
        calls.append(path)
        path.write_bytes(b"engine-bytes")

    first = cache.get_or_build(KEY, build)
    again = cache.get_or_build(KEY, build)
    assert first == again and len(calls) == 1 and first.read_bytes() == b"engine-bytes"
    from dataclasses import replace

    cache.get_or_build(replace(KEY, tensorrt_version="10.6.0"), build)
    assert len(calls) == 2  # a TensorRT upgrade invalidates


def test_engine_cache_crash_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def crash(path):
        path.write_bytes(b"half an eng")
        raise RuntimeError("builder died")

    with pytest.raises(RuntimeError, match="builder died"):
        cache.get_or_build(KEY, crash)
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob(".build-*"))
    assert cache.lookup(KEY) is None


def test_engine_cache_detects_tampered_entry(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.get_or_build(KEY, lambda p: p.write_bytes(b"x" * 100))
    path.write_bytes(b"x" * 50)  # truncated after the fact
    assert cache.lookup(KEY) is None
    rebuilt = cache.get_or_build(KEY, lambda p: p.write_bytes(b"y" * 100))
    assert rebuilt.read_bytes() == b"y" * 100


def test_cpu_detector_runs_big_batches_in_chunks_of_four(detector, images, golden_names):
    """9 images -> backend calls of 4, 4 and 1; answers equal to one image at a time."""
    assert detector.backend.preferred_batch == 4 and detector.chunk == 4
    blobs = [(images / n).read_bytes() for n in golden_names]
    blobs = (blobs * 2)[:9]
    calls: list[int] = []
    infer = detector.backend.infer

    def counting(batch, *window):
        calls.append(len(batch))
        return infer(batch, *window)

    detector.backend.infer = counting
    try:
        together = detector.detect(blobs)
    finally:
        del detector.backend.infer
    assert calls == [4, 4, 1]
    for blob, answer in zip(blobs, together):
        assert compare_faces(detector.detect([blob])[0], answer) == []


def test_split_batch_runs_on_two_threads_with_the_same_answers(
    detector, images, golden_names, tmp_path
):
    """The serving splitter: parts on two threads, answers (a bad image too) in request order."""
    import threading

    from yolov5face.pipeline.decode import ImageError
    from yolov5face.serving.split import BatchSplitter

    blobs = [(images / n).read_bytes() for n in golden_names] + [b"not an image"]
    blobs = blobs[:3] + blobs[-1:] + blobs[3:-1]
    threads: set[str] = set()
    infer = detector.backend.infer

    def recording(batch, *window):
        threads.add(threading.current_thread().name)
        return infer(batch, *window)

    serial_timings: dict = {}
    serial = detector.detect(blobs, serial_timings)
    detector.backend.infer = recording
    split_timings: dict = {}
    try:
        split = BatchSplitter(detector, tmp_path / "board", cores=2).detect_parts(
            blobs, 2, split_timings
        )
    finally:
        del detector.backend.infer
    assert len(threads) == 2
    assert json.dumps(split, default=str) == json.dumps(serial, default=str)
    assert isinstance(split[3], ImageError)
    assert (
        set(split_timings)
        == set(serial_timings)
        == {"decode", "preprocess", "infer", "postprocess"}
    )


def test_split_bounds_cover_the_batch_in_order():
    """Slices are consecutive, non-empty, near-equal and never more than the items."""
    from yolov5face.serving.split import split_bounds

    assert split_bounds(7, 2) == [(0, 4), (4, 7)]
    assert split_bounds(2, 5) == [(0, 1), (1, 2)]
    assert split_bounds(1, 1) == [(0, 1)]
    for n in range(1, 20):
        for parts in range(1, 6):
            bounds = split_bounds(n, parts)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a < b for a, b in bounds)
            assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_backends_without_a_banded_model_take_whole_canvases(detectors):
    """input_window is None without a banded model, and a crop window is refused."""
    from yolov5face.backends.band import BandSpec, band_window

    torch_backend = detectors["torch"].backend
    geometry = np.array([[1280, 720, 320, 180, 0, 70]], np.float64)
    assert torch_backend.input_window(geometry) is None
    window = band_window(BandSpec(320, (8, 8), (-7, -7), (7, 7)), geometry)
    assert not window.full
    with pytest.raises(ValueError, match="whole canvases"):
        torch_backend.infer(np.zeros((1, 3, 320, 320), np.float32), window)
