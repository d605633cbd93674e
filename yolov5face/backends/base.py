"""The small interface every inference backend implements."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from yolov5face.backends.band import Window

# What a backend's `infer` takes (yolov5face/convert/uint8_input.py):
FLOAT_LAYOUT = "float32-nchw-rgb"  # (B, 3, S, S) float32 RGB in [0, 1]
UINT8_LAYOUT = "uint8-nhwc-bgr"  # (B, S, S, 3) uint8 BGR canvases; the model converts them


@dataclass(frozen=True)
class ModelInfo:
    """What post-processing needs to know about a network, whatever runs it."""

    img_size: int
    strides: tuple[int, ...] = (8, 16, 32)
    anchors: tuple[float, ...] = ()  # flat pixel anchors, 3 (w, h) pairs per stride
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise (e.g. into ONNX metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls(
            img_size=int(d["img_size"]),
            strides=tuple(int(s) for s in d["strides"]),
            anchors=tuple(float(a) for a in d["anchors"]),
            sha256=str(d.get("sha256", "")),
            extra=dict(d.get("extra", {})),
        )


class Backend(Protocol):
    """Runs the network: a batch in its `input_layout` -> raw (B, N, 16) float32 predictions."""

    name: str
    info: ModelInfo
    # Largest batch per `infer` call that is still the fastest per image (None: any size).
    preferred_batch: int | None
    # True when the network runs on the host's CPU cores (serving may split batches across them).
    on_cpu: bool
    # FLOAT_LAYOUT or UINT8_LAYOUT (a backend without the attribute takes FLOAT_LAYOUT).
    input_layout: str

    def input_window(self, geometry: np.ndarray) -> Window | None:
        """The part of the canvas this batch needs (letterbox geometry rows), None for all of it.

        Only a banded model (yolov5face/backends/band.py) answers a window; every other
        backend takes whole canvases.
        """
        ...

    def infer(self, batch: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Run one batch: whole canvases, or the crops `input_window` asked for."""
        ...

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run dummy batches so the first real request is not slow."""
        ...

    def describe(self) -> dict[str, Any]:
        """Human-readable facts (provider, device, precision, threads) for logs and reports."""
        ...


def whole_canvases(backend: Backend, window: Window | None) -> None:
    """Refuse a window in a backend that has no banded model."""
    if window is not None and not window.full:
        raise ValueError(f"the {backend.name} backend takes whole canvases, not windows")


def input_layout(backend: Backend) -> str:
    """The layout `backend.infer` takes."""
    return getattr(backend, "input_layout", FLOAT_LAYOUT)


def warmup_batches(backend: Backend, batch_sizes: tuple[int, ...]) -> None:
    """Shared warm-up: one mid-grey batch of each size, in the backend's input layout."""
    size = backend.info.img_size
    for n in batch_sizes:
        if input_layout(backend) == UINT8_LAYOUT:
            backend.infer(np.full((n, size, size, 3), 128, np.uint8))
        else:
            backend.infer(np.full((n, 3, size, size), 0.5, np.float32))
