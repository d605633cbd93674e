"""PyTorch backend: CPU float32, or CUDA with float16 and optional CUDA graphs."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from yolov5face.backends.band import Window
from yolov5face.backends.base import ModelInfo, warmup_batches, whole_canvases

logger = logging.getLogger(__name__)


def model_info(model: Any, img_size: int, sha256: str = "") -> ModelInfo:
    """ModelInfo of a built `YoloFace`."""
    return ModelInfo(
        img_size=img_size,
        strides=tuple(model.strides),
        anchors=tuple(float(a) for a in model.anchors.flatten().tolist()),
        sha256=sha256,
    )


class TorchBackend:
    """Runs a `YoloFace` module eagerly (CPU fp32; CUDA fp16 by default)."""

    name = "torch"
    preferred_batch: int | None = None

    def __init__(
        self,
        weights: str,
        img_size: int = 320,
        device: str | None = None,
        half: bool | None = None,
        threads: int | None = None,
        cuda_graphs: bool = False,
    ):
        import torch

        from yolov5face.model.checkpoint import load_model, sha256_file

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.on_cpu = self.device.type == "cpu"
        self.half = self.device.type == "cuda" if half is None else half
        model = load_model(weights).to(self.device)
        self.model = model.half() if self.half else model
        self.info = model_info(model, img_size, sha256_file(weights))
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    def _graph(self, n: int):
        """Capture (once) a CUDA graph for batch size n; returns (graph, input, output)."""
        if n not in self._graphs:
            torch = self._torch
            size = self.info.img_size
            dtype = torch.float16 if self.half else torch.float32
            static_in = torch.zeros((n, 3, size, size), dtype=dtype, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self.model(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    def input_window(self, geometry: np.ndarray) -> Window | None:
        """Whole canvases only."""
        return None

    def infer(self, batch: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Run one batch and return float32 numpy predictions."""
        whole_canvases(self, window)
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        if self.half:
            x = x.half()
        with torch.inference_mode():
            if self.cuda_graphs:
                graph, static_in, static_out = self._graph(x.shape[0])
                static_in.copy_(x)
                graph.replay()
                out = static_out
            else:
                out = self.model(x)
        return out.float().cpu().numpy()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run dummy batches (and capture graphs when enabled)."""
        warmup_batches(self, batch_sizes)

    def describe(self) -> dict[str, Any]:
        """Device, precision and thread facts."""
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": "fp16" if self.half else "fp32",
            "threads": self._torch.get_num_threads(),
            "cuda_graphs": self.cuda_graphs,
        }
