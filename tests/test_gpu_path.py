"""The GPU path's logic, checked on the CPU: uint8-input graph, engine key and cache, the
pre-start build step (ONNX Runtime standing in for TensorRT), the device lock, the torch2trt
channel-shuffle plan, backend choice without torch, and what `serve` refuses."""

import contextlib
import json
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from yolov5face.backends.cuda_context import SerialDevice
from yolov5face.convert.tensorrt import EngineMissing, engine_profile, prepare_engine
from yolov5face.convert.uint8_input import UINT8_LAYOUT, write_uint8_model
from yolov5face.serving.engines import prepare_served_engine, served_backend, served_batch
from yolov5face.tools.compare import golden_problems

STANDIN = Path(__file__).with_name("engine_standin.py")


@pytest.fixture(scope="module")
def uint8_model(onnx_model, tmp_path_factory):
    return write_uint8_model(onnx_model, tmp_path_factory.mktemp("u8") / "model.u8.onnx")


@pytest.fixture(scope="module")
def standin():
    sys.path.insert(0, str(STANDIN.parent))
    import engine_standin

    return {"target": engine_standin.TARGET, "builder": engine_standin.build_with_onnxruntime}


def _sessions(onnx_model, uint8_model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for p in (onnx_model, uint8_model)
    ]


def test_uint8_graph_gives_the_float_graphs_outputs_exactly(onnx_model, uint8_model, shared):
    """Every shared photo and the WIDER subset: the same raw predictions, bit for bit."""
    from yolov5face.pipeline.decode import decode_image
    from yolov5face.pipeline.letterbox import letterbox_batch, letterbox_batch_uint8

    plain, u8 = _sessions(onnx_model, uint8_model)
    assert u8.get_inputs()[0].type == "tensor(uint8)"
    paths = sorted((shared / "images").glob("*.jpg")) + sorted(
        (shared / "widerface").rglob("*.jpg")
    )
    checked = 0
    for path in paths:
        try:
            image = decode_image(path.read_bytes())
        except ValueError:
            continue  # bad_image.jpg
        floats, _ = letterbox_batch([image], 320)
        canvas, _ = letterbox_batch_uint8([image], 320)
        a = plain.run(None, {"images": floats})[0]
        b = u8.run(None, {"images": canvas})[0]
        assert np.array_equal(a, b), path.name
        checked += 1
    assert checked >= 100


def test_uint8_model_serves_the_goldens(uint8_model, images, shared, golden_names):
    from yolov5face.pipeline.detector import Detector

    detector = Detector(uint8_model, backend="onnxruntime")
    assert detector.backend.input_layout == UINT8_LAYOUT and detector.backend.band is None
    blobs = [(images / name).read_bytes() for name in golden_names]
    for name, faces in zip(golden_names, detector.detect(blobs)):
        golden = json.loads((shared / "golden" / "seed320" / f"{name}.json").read_text())
        assert golden_problems(golden, faces) == [], name


def test_engine_profile_follows_the_served_batch():
    assert engine_profile(8) == (1, 8, 8)
    assert served_batch({"batchSize": 8, "handler": {"max_batch": 32}}) == 8
    assert served_batch({"batchSize": 64, "handler": {"max_batch": 32}}) == 32
    with pytest.raises(ValueError):
        engine_profile(0)


def _mar(onnx_model: Path, tmp_path: Path) -> Path:
    mar = tmp_path / "fd1.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        archive.write(onnx_model, "fd1.onnx")
    return mar


def test_server_and_cli_compute_the_same_key(onnx_model, tmp_path, standin):
    """The pre-start step (from the archive) builds; `export engine --weights fd1.onnx` and the
    workers (load only) find that engine; another batch size is another key."""
    cache = tmp_path / "engines"
    config = {"batchSize": 4, "handler": {"max_batch": 32}}
    served = prepare_served_engine(_mar(onnx_model, tmp_path), config, cache, **standin)
    built = json.loads(Path(served["engine"]).with_suffix(".json").read_text())
    assert served["key"]["profile"] == [1, 4, 4]
    path, key = prepare_engine(onnx_model, 4, cache_dir=cache, **standin)
    assert str(path) == served["engine"] and key.to_json() == served["key"]
    assert json.loads(path.with_suffix(".json").read_text()) == built  # not rebuilt
    found, _ = prepare_engine(onnx_model, 4, cache_dir=cache, build=False, **standin)
    assert found == path
    with pytest.raises(EngineMissing, match="batch size 8.*yolov5face export engine"):
        prepare_engine(onnx_model, 8, cache_dir=cache, build=False, **standin)


def test_changed_onnx_is_a_new_engine(onnx_model, tmp_path, standin):
    import onnx

    cache = tmp_path / "engines"
    first, _ = prepare_engine(onnx_model, 2, cache_dir=cache, **standin)
    proto = onnx.load(str(onnx_model))
    proto.producer_version = "changed"  # same weights, other export: other bytes
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    second, _ = prepare_engine(other, 2, cache_dir=cache, **standin)
    assert first != second and len(list(cache.glob("*.engine"))) == 2


def test_two_pre_start_steps_on_an_empty_cache_build_once(onnx_model, tmp_path):
    cache = tmp_path / "engines"
    cmd = [sys.executable, str(STANDIN), str(onnx_model), str(cache), "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results[0]["engine"] == results[1]["engine"]
    assert sorted(r["built_here"] for r in results) == [False, True]
    assert len(list(cache.glob("*.engine"))) == 1


def test_pre_start_failure_stops_serve_unless_fallback_is_on(onnx_model, tmp_path, monkeypatch):
    """No TensorRT here: asking for it fails the step; the fallback flag serves ONNX Runtime."""
    from yolov5face.serving.engines import pre_start

    mar = _mar(onnx_model, tmp_path)
    config = {"batchSize": 2, "handler": {}}
    monkeypatch.setenv("YOLOV5FACE_ENGINE_CACHE", str(tmp_path / "engines"))
    monkeypatch.setenv("YOLOV5FACE_BACKEND", "tensorrt")
    monkeypatch.delenv("YOLOV5FACE_GPU_FALLBACK", raising=False)
    with pytest.raises(RuntimeError, match="engine build failed.*TensorRT is not installed"):
        pre_start(mar, config)
    monkeypatch.setenv("YOLOV5FACE_GPU_FALLBACK", "1")
    assert pre_start(mar, config) == {"YOLOV5FACE_BACKEND": "onnxruntime"}
    monkeypatch.setenv("YOLOV5FACE_BACKEND", "onnxruntime")
    assert pre_start(mar, config) == {}


def test_torch_is_not_a_served_backend():
    assert served_backend("tensorrt") == "tensorrt" and served_backend("auto") == "auto"
    with pytest.raises(ValueError, match="cannot be served.*auto, onnxruntime, tensorrt"):
        served_backend("torch")


def test_serve_refuses_the_torch_backend_before_building_anything(tmp_path, weights):
    env = {
        **__import__("os").environ,
        "YOLOV5FACE_BACKEND": "torch",
        "YOLOV5FACE_WEIGHTS": str(weights),
    }
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "yolov5face.tools.cli", "serve", "--model-store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot be served" in proc.stderr and not (store / "fd1.mar").exists()


def test_export_engine_without_tensorrt_says_so(onnx_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "yolov5face.tools.cli", "export", "engine"]
        + ["--weights", str(onnx_model), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "TensorRT is not installed" in proc.stderr


def test_auto_backend_asks_the_driver_not_torch():
    code = (
        "import sys\n"
        "from yolov5face.backends import _cuda_available, choose_backend\n"
        "name, _ = choose_backend('auto')\n"
        "print(name, _cuda_available(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["onnxruntime", "False", "False"]


class _RecordingContext:
    """A DeviceContext that records which thread holds it and checks the stack discipline."""

    def __init__(self):
        self.stack: list[int] = []
        self.overlaps = 0
        self.pushes = 0

    def push(self):
        if self.stack and self.stack[-1] != threading.get_ident():
            self.overlaps += 1
        self.stack.append(threading.get_ident())
        self.pushes += 1

    def pop(self):
        assert self.stack.pop() == threading.get_ident()


def test_device_calls_from_many_threads_take_turns():
    context = _RecordingContext()
    device = SerialDevice(context)
    inside = []

    def call(k):
        with device.current():
            time.sleep(0)  # give other threads the interpreter inside the block
            inside.append(k)
            assert context.stack == [threading.get_ident()]
            inside.remove(k)
            if k % 7 == 0:
                raise RuntimeError("a failing call still releases the context")

    def worker(start):
        for k in range(start, start + 50):
            with contextlib.suppress(RuntimeError):
                call(k)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    threads = [threading.Thread(target=worker, args=(100 * t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.setswitchinterval(switch)
    assert context.overlaps == 0 and context.stack == [] and context.pushes == 400
    with device.current(), device.current():  # re-entrant on one thread (build inside load)
        assert len(context.stack) == 2


def _trt_shuffle(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """TensorRT's shuffle reshape: a 0 copies the input's dimension at that position."""
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_torch2trt_shuffle_plan_keeps_the_batch_dynamic(batch):
    torch = pytest.importorskip("torch")
    from yolov5face.convert.torch2trt_converters import shuffle_plan
    from yolov5face.model.network import interleave_channels

    plan = shuffle_plan(6, 5, 4)  # made without any batch size
    assert plan.unsqueeze[0] == 0 and plan.merge[0] == 0
    rng = np.random.default_rng(batch)
    a, b = (rng.standard_normal((batch, 6, 5, 4)).astype(np.float32) for _ in range(2))
    parts = [_trt_shuffle(t, plan.unsqueeze) for t in (a, b)]
    ours = _trt_shuffle(np.concatenate(parts, axis=plan.axis), plan.merge)
    expected = interleave_channels(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.array_equal(ours, expected)


def test_gpu_check_runs_here_with_every_gpu_part_skipped(tmp_path, weights, shared):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--out", str(out)]
        + ["--weights", str(weights), "--shared", str(shared)],
        cwd=STANDIN.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert parts["stack"]["status"] == "ok" and parts["stack"]["gpus"] == []
    gpu_parts = [name for name in parts if name != "stack"]
    assert len(gpu_parts) == 6
    for name in gpu_parts:
        assert parts[name]["status"] == "skipped" and parts[name]["reason"], name
