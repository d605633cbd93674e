"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers when installed."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from yolov5face import settings
from yolov5face.backends.band import METADATA_KEY as BAND_KEY
from yolov5face.backends.band import BandSpec, Window, band_path, band_window
from yolov5face.backends.base import FLOAT_LAYOUT, UINT8_LAYOUT, ModelInfo, warmup_batches
from yolov5face.model.checkpoint import sha256_file

logger = logging.getLogger(__name__)

# On a GPU, CUDA only: TensorRT is this project's own backend, with its engine built once before
# serving; ONNX Runtime's TensorRT provider would build another one in every worker at start.
_GPU_PROVIDERS = ("CUDAExecutionProvider",)
CPU_PREFERRED_BATCH = 4


def read_model_info(session: Any) -> ModelInfo:
    """The ModelInfo stored in an exported model's metadata."""
    from yolov5face.convert.onnx import METADATA_KEY

    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(
            "ONNX model has no yolov5face metadata: export it with `yolov5face export onnx`"
        )
    return ModelInfo.from_json(meta[METADATA_KEY])


def _band_spec(session: Any) -> BandSpec | None:
    """The BandSpec in a banded model's metadata (None for a plain model)."""
    meta = session.get_modelmeta().custom_metadata_map
    return BandSpec.from_json(meta[BAND_KEY]) if BAND_KEY in meta else None


class OnnxRuntimeBackend:
    """Runs an exported ONNX model in an InferenceSession."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        providers: list[str] | None = None,
        band: bool | None = None,
    ):
        """`band`: run the banded model beside `model_path` on the CPU when there is one
        (default: yes, unless YOLOV5FACE_BAND is off)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One intra-op thread by default: a serving worker owns one core; more workers scale.
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        if band is None:
            band = settings.flag("YOLOV5FACE_BAND")
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        # The banded model runs windows; whole canvases (square images) skip its splice.
        self.band: BandSpec | None = None
        self._banded: Any = None
        banded = band_path(model_path)
        self.on_cpu = self.session.get_providers() == ["CPUExecutionProvider"]
        # A uint8-input model (yolov5face/convert/uint8_input.py) takes the canvas as it is.
        uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.input_layout = UINT8_LAYOUT if uint8 else FLOAT_LAYOUT
        if band and self.on_cpu and not uint8 and banded.exists():
            self._banded = ort.InferenceSession(str(banded), options, providers=providers)
            self.band = _band_spec(self._banded)
            if self.band is None or self.band.source_sha256 != sha256_file(model_path):
                logger.warning("%s is not made from %s: plain model only", banded, model_path)
                self.band, self._banded = None, None
        self.info = read_model_info(self.session)
        self.threads = options.intra_op_num_threads
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        # On the CPU, batches of 4 run fastest per image: the activations of 4 images at 320 px
        # stay in the caches, 8 spill (2 processes on 8-image batches: 1-4% fewer images/s).
        self.preferred_batch: int | None = CPU_PREFERRED_BATCH if self.on_cpu else None

    def input_window(self, geometry: np.ndarray) -> Window | None:
        """The banded model's window for these letterbox rows (None without a banded model)."""
        return None if self.band is None else band_window(self.band, geometry)

    def infer(self, batch: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Run one batch: whole canvases, or with a banded model the crop `window` describes."""
        if window is None or window.full:
            return self.session.run([self._output], {self._input: batch})[0]
        if self._banded is None:
            raise ValueError("a window needs the banded model, and this backend has none")
        return self._banded.run([self._output], {self._input: batch, **window.inputs})[0]

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run dummy batches."""
        warmup_batches(self, batch_sizes)

    def describe(self) -> dict[str, Any]:
        """Providers and thread settings."""
        return {
            "backend": self.name,
            "providers": self.session.get_providers(),
            "threads": self.threads,
            "precision": "fp32",
            "band": self.band is not None,
        }
