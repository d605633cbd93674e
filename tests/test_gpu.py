"""GPU paths: torch CUDA fp16 (+ CUDA graphs) and TensorRT engines. Skipped without a GPU."""

import importlib.util
import json

import pytest

from yolov5face.tools.compare import compare_faces

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
needs_trt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None,
    reason="TensorRT and pycuda are not installed (they come with the NVIDIA TensorRT image)",
)
needs_torch2trt = pytest.mark.skipif(
    importlib.util.find_spec("torch2trt") is None, reason="torch2trt is not installed"
)


def _golden(shared, name):
    return json.loads((shared / "golden" / "seed320" / f"{name}.json").read_text())


@pytest.mark.parametrize("graphs", [False, True])
def test_torch_cuda_fp16_parity(weights, images, shared, golden_names, graphs):
    from yolov5face.backends.torch import TorchBackend
    from yolov5face.pipeline.detector import Detector

    detector = Detector(weights, backend="torch", device="cuda")
    detector.backend = TorchBackend(str(weights), device="cuda", cuda_graphs=graphs)
    assert detector.backend.half
    for name in golden_names:
        (faces,) = detector.detect([(images / name).read_bytes()])
        assert compare_faces(_golden(shared, name), faces) == [], name


def _engine_files(cache) -> dict:
    """Every engine in the cache by its identity: a rebuild writes a new file (new inode) or
    rewrites this one (new mtime, maybe size), even under the same name."""
    return {
        str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(cache.rglob("*.engine"))
    }


@needs_trt
def test_tensorrt_onnx_engine_parity(weights, images, shared, golden_names, tmp_path, monkeypatch):
    from yolov5face.pipeline.detector import Detector

    monkeypatch.setenv("YOLOV5FACE_ENGINE_CACHE", str(tmp_path))
    detector = Detector(weights, backend="tensorrt")
    blobs = [(images / n).read_bytes() for n in golden_names]
    for name, faces in zip(golden_names, detector.detect(blobs)):
        assert compare_faces(_golden(shared, name), faces) == [], name
    built = _engine_files(tmp_path)
    assert len(built) == 1, built
    Detector(weights, backend="tensorrt")  # second start: a cache hit, no build at all
    assert _engine_files(tmp_path) == built  # same file: a rebuild under the name would differ


@needs_trt
@needs_torch2trt
def test_torch2trt_dynamic_batch_engine(weights, images, shared, golden_names, tmp_path):
    """One torch2trt engine (the project's channel-shuffle converter) serves batches 1..8."""
    from yolov5face.backends.tensorrt import TensorRTBackend
    from yolov5face.convert.onnx import cached_onnx, read_onnx_info
    from yolov5face.convert.tensorrt import prepare_engine
    from yolov5face.pipeline.detector import Detector

    path, key = prepare_engine(weights, 8, method="torch2trt", cache_dir=tmp_path)
    assert key.profile == (1, 8, 8) and key.input_layout == "float32-nchw-rgb"
    detector = Detector(weights, backend="onnxruntime", band=False)
    detector.backend = TensorRTBackend(path, read_onnx_info(cached_onnx(weights, 320)))
    assert detector.backend.max_batch == 8
    blobs = [(images / n).read_bytes() for n in golden_names]
    for n in (1, len(blobs)):
        for name, faces in zip(golden_names, detector.detect(blobs[:n])):
            assert compare_faces(_golden(shared, name), faces) == [], name
