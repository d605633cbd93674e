"""TensorRT backend: one serialized engine with a dynamic batch profile, run through pycuda.

The engine is found in the cache, never built here when serving: `yolovface serve` and the
container build it before TorchServe starts (yolov5face/convert/tensorrt.py). Buffers, stream
and execution context are made once in the device's primary context; each call holds the
backend's lock with that context current (yolov5face/backends/cuda_context.py), so any thread
may call. Not run on the CPU-only development machines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.backends.band import Window
from yolov5face.backends.base import ModelInfo, warmup_batches, whole_canvases
from yolov5face.backends.cuda_context import PrimaryContext, SerialDevice
from yolov5face.convert.uint8_input import FLOAT_LAYOUT, UINT8_LAYOUT

logger = logging.getLogger(__name__)


class TensorRTBackend:
    """Runs a TensorRT engine whose input is uint8 NHWC BGR (ONNX route) or float NCHW RGB."""

    name = "tensorrt"
    on_cpu = False

    def __init__(
        self, engine_path: str | os.PathLike, info: ModelInfo, device: SerialDevice | None = None
    ):
        import tensorrt as trt

        from yolov5face.convert.onnx import INPUT_NAME, OUTPUT_NAME

        if not hasattr(trt.ICudaEngine, "num_io_tensors"):
            raise RuntimeError(
                f"TensorRT {trt.__version__} is too old: 8.5+ is needed (10.x tested)"
            )
        self.info, self.trt_version = info, trt.__version__
        self.path = Path(engine_path)
        self.device = device or SerialDevice(PrimaryContext())
        self._in, self._out = INPUT_NAME, OUTPUT_NAME
        with self.device.current():
            import pycuda.driver as cuda

            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"could not deserialize {self.path} (other TensorRT or GPU?)")
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            if {INPUT_NAME, OUTPUT_NAME} - names:
                raise RuntimeError(
                    f"engine tensors {sorted(names)} lack {INPUT_NAME}/{OUTPUT_NAME}"
                )
            in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(INPUT_NAME)))
            out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(OUTPUT_NAME)))
            _, _, high = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
            self.max_batch = int(high[0])
            row = tuple(int(d) for d in high[1:])
            self.input_layout = UINT8_LAYOUT if in_dtype == np.uint8 else FLOAT_LAYOUT
            n_pred = sum(3 * (info.img_size // s) ** 2 for s in info.strides)
            # Pinned host buffers for the largest batch; a call copies only its own rows.
            self.host_in = cuda.pagelocked_empty((self.max_batch, *row), in_dtype)
            self.host_out = cuda.pagelocked_empty((self.max_batch, n_pred, 16), out_dtype)
            self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
            self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
            self.stream = cuda.Stream()
            self.context = self.engine.create_execution_context()
            self.context.set_tensor_address(INPUT_NAME, int(self.dev_in))
            self.context.set_tensor_address(OUTPUT_NAME, int(self.dev_out))
        self.preferred_batch: int | None = self.max_batch

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike,
        img_size: int = 320,
        batch_size: int = 8,
        fp16: bool = True,
        build: bool = True,
    ) -> TensorRTBackend:
        """The cached engine for an ONNX file (or a checkpoint, exported first); built when
        missing only if `build` (the library and CLI; serving workers never build)."""
        from yolov5face.convert.onnx import cached_onnx, read_onnx_info
        from yolov5face.convert.tensorrt import prepare_engine

        path, _ = prepare_engine(weights, batch_size, fp16=fp16, img_size=img_size, build=build)
        return cls(path, read_onnx_info(cached_onnx(weights, img_size)))

    def input_window(self, geometry: np.ndarray) -> Window | None:
        """Whole canvases only."""
        return None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import pycuda.driver as cuda

        n = batch.shape[0]
        with self.device.current():
            self.host_in[:n] = batch
            cuda.memcpy_htod_async(self.dev_in, self.host_in[:n], self.stream)
            self.context.set_input_shape(self._in, batch.shape)
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError("TensorRT execution failed")
            cuda.memcpy_dtoh_async(self.host_out[:n], self.dev_out, self.stream)
            self.stream.synchronize()
            return self.host_out[:n].astype(np.float32, copy=True)

    def infer(self, batch: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Run a batch (in chunks of the profile's largest batch)."""
        whole_canvases(self, window)
        outs = [
            self._run(batch[s : s + self.max_batch]) for s in range(0, len(batch), self.max_batch)
        ]
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run dummy batches, the profile's largest among them."""
        warmup_batches(self, tuple(sorted(set(batch_sizes) | {self.max_batch})))

    def describe(self) -> dict[str, Any]:
        """Engine facts."""
        return {
            "backend": self.name,
            "tensorrt": self.trt_version,
            "engine": self.path.name,
            "max_batch": self.max_batch,
            "input": self.input_layout,
            "precision": "fp16 (engine)",
        }
