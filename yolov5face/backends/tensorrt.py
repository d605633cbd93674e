"""TensorRT backend: serialized engines run with the TensorRT Python API, buffers via pycuda.

One engine with a dynamic batch profile (ONNX-parser route), or one engine per batch bucket
(torch2trt route); a request batch runs on the smallest engine that holds it, padded. Input
and output tensors are found by name. Not exercised on the CPU-only development machines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.backends.band import Window
from yolov5face.backends.base import ModelInfo, warmup_batches, whole_canvases

logger = logging.getLogger(__name__)


class _Engine:
    """One deserialized engine with pinned host and device buffers for its largest batch."""

    def __init__(self, runtime: Any, path: Path, max_batch: int, img_size: int, n_pred: int):
        import pycuda.driver as cuda
        import tensorrt as trt

        from yolov5face.convert.onnx import INPUT_NAME, OUTPUT_NAME

        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {path} (other TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.max_batch = max_batch
        self.input_name, self.output_name = INPUT_NAME, OUTPUT_NAME
        self.v3 = hasattr(self.engine, "num_io_tensors")  # TensorRT >= 8.5 tensor API
        if self.v3:
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            if {INPUT_NAME, OUTPUT_NAME} - names:
                raise RuntimeError(
                    f"engine tensors {sorted(names)} lack {INPUT_NAME}/{OUTPUT_NAME}"
                )
            in_dtype = trt.nptype(self.engine.get_tensor_dtype(INPUT_NAME))
            out_dtype = trt.nptype(self.engine.get_tensor_dtype(OUTPUT_NAME))
        else:
            self.in_index = self.engine.get_binding_index(INPUT_NAME)
            self.out_index = self.engine.get_binding_index(OUTPUT_NAME)
            in_dtype = trt.nptype(self.engine.get_binding_dtype(self.in_index))
            out_dtype = trt.nptype(self.engine.get_binding_dtype(self.out_index))
        self.host_in = cuda.pagelocked_empty((max_batch, 3, img_size, img_size), in_dtype)
        self.host_out = cuda.pagelocked_empty((max_batch, n_pred, 16), out_dtype)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.stream = cuda.Stream()
        if self.v3:
            self.fixed = self.engine.get_tensor_shape(INPUT_NAME)[0] != -1
        else:
            self.fixed = self.engine.get_binding_shape(self.in_index)[0] != -1

    def run(self, batch: np.ndarray) -> np.ndarray:
        import pycuda.driver as cuda

        n = batch.shape[0]
        self.host_in[:n] = batch
        self.host_in[n:] = 0.5  # padding rows of a fixed-batch engine; their outputs are dropped
        rows = self.max_batch if self.fixed else n
        shape = (rows, *batch.shape[1:])
        cuda.memcpy_htod_async(self.dev_in, self.host_in[:rows], self.stream)
        if self.v3:
            self.context.set_input_shape(self.input_name, shape)
            self.context.set_tensor_address(self.input_name, int(self.dev_in))
            self.context.set_tensor_address(self.output_name, int(self.dev_out))
            ok = self.context.execute_async_v3(self.stream.handle)
        else:
            self.context.set_binding_shape(self.in_index, shape)
            bindings = [0] * self.engine.num_bindings
            bindings[self.in_index], bindings[self.out_index] = int(self.dev_in), int(self.dev_out)
            ok = self.context.execute_async_v2(bindings, self.stream.handle)
        if not ok:
            raise RuntimeError("TensorRT execution failed")
        cuda.memcpy_dtoh_async(self.host_out[:rows], self.dev_out, self.stream)
        self.stream.synchronize()
        return self.host_out[:n].astype(np.float32, copy=True)


class TensorRTBackend:
    """Runs TensorRT engines: a dynamic one, or fixed-batch buckets."""

    name = "tensorrt"
    preferred_batch: int | None = None  # one engine profile covers 1..max_batch
    on_cpu = False

    def __init__(self, engines: dict[int, Path], info: ModelInfo):
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context of this process)
        import tensorrt as trt

        self.info = info
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        n_pred = sum(3 * (info.img_size // s) ** 2 for s in info.strides)
        self.engines = {
            b: _Engine(self.runtime, Path(p), b, info.img_size, n_pred)
            for b, p in sorted(engines.items())
        }
        self.max_batch = max(self.engines)
        self.trt_version = trt.__version__

    @classmethod
    def from_weights(
        cls, weights: str | os.PathLike, img_size: int = 320, max_batch: int = 32, fp16: bool = True
    ) -> TensorRTBackend:
        """Engine for an exported ONNX (or a checkpoint, exported first), through the cache."""
        from yolov5face.backends.onnxruntime import read_model_info
        from yolov5face.convert.engine_cache import EngineCache, default_cache_dir
        from yolov5face.convert.onnx import cached_onnx
        from yolov5face.convert.tensorrt import build_engine_onnx, engine_key

        cache = EngineCache(default_cache_dir())
        onnx_path = cached_onnx(weights, img_size)
        import onnxruntime as ort  # reads the metadata only; no session is kept

        info = read_model_info(
            ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        )
        key = engine_key(info.sha256, info.img_size, max_batch, fp16, "onnx")
        path = cache.get_or_build(
            key, lambda tmp: build_engine_onnx(onnx_path, tmp, max_batch=max_batch, fp16=fp16)
        )
        return cls({max_batch: path}, info)

    def input_window(self, geometry: np.ndarray) -> Window | None:
        """Whole canvases only."""
        return None

    def infer(self, batch: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Run a batch on the smallest engine that holds it (chunks beyond the largest)."""
        whole_canvases(self, window)
        outs = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            size = next(b for b in self.engines if b >= chunk.shape[0])
            outs.append(self.engines[size].run(chunk))
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run dummy batches on every engine."""
        warmup_batches(self, tuple(sorted(set(batch_sizes) | set(self.engines))))

    def describe(self) -> dict[str, Any]:
        """Engine facts."""
        return {
            "backend": self.name,
            "tensorrt": self.trt_version,
            "engines": sorted(self.engines),
            "precision": "fp16 (engine)",
        }
