"""Padding bands: run the network's first layers only where the canvas is not padding.

On a letterboxed canvas the rows (or columns) of padding give the early feature maps rows that
are the same for every image: those of an all-padding canvas. A banded model
(`yolov5face/convert/band.py`) takes only the window of the canvas that can change its first
feature map (the content plus that map's receptive field), runs the early layers on it, and
fills the rest of the map from the all-padding canvas's map stored in the model. The outputs are
those of the full canvas; 16:9 photos skip ~40% of the rows of the early layers.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

METADATA_KEY = "yolov5face_band"
# Inputs of a banded model beside the image window, in this order (int64, shape (1,) or (2,)).
WINDOW_INPUTS = ("band_r0", "band_r1", "band_c0", "band_c1", "band_keep0", "band_keep1")


def band_path(plain: str | os.PathLike) -> Path:
    """Where the banded model of a plain ONNX lives: `x.onnx` -> `x.band.onnx`."""
    return Path(plain).with_suffix(".band.onnx")


@dataclass(frozen=True)
class BandSpec:
    """Where the banded model cuts the network and what each cut cell sees of the canvas.

    Cell i of the cut map (rows; columns alike) is computed from canvas rows
    [stride * i + lo, stride * i + hi].
    """

    size: int
    stride: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    cut: str = ""
    source_sha256: str = ""  # the plain ONNX this was built from

    def to_json(self) -> str:
        """Serialise (into the banded model's metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BandSpec:
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls(
            size=int(d["size"]),
            stride=tuple(int(v) for v in d["stride"]),  # type: ignore[arg-type]
            lo=tuple(int(v) for v in d["lo"]),  # type: ignore[arg-type]
            hi=tuple(int(v) for v in d["hi"]),  # type: ignore[arg-type]
            cut=str(d.get("cut", "")),
            source_sha256=str(d.get("source_sha256", "")),
        )


@dataclass(frozen=True)
class Window:
    """The canvas crop to feed ([y0, y1) x [x0, x1)) and the banded model's window inputs."""

    y0: int
    y1: int
    x0: int
    x1: int
    inputs: dict[str, np.ndarray]
    full: bool  # the whole canvas: the plain model does the same work without the splice


def _axis(start: int, stop: int, size: int, stride: int, lo: int, hi: int) -> tuple[int, ...]:
    """One axis: cut cells [c0, c1) that see content [start, stop), the crop, kept cells."""
    cells = size // stride
    c0 = max(0, -((hi - start) // stride))  # first cell whose view reaches `start`
    c1 = min(cells, (stop - 1 - lo) // stride + 1)  # one past the last reaching `stop - 1`
    # The crop starts on the stride grid and holds every canvas pixel the kept cells read.
    a = max(0, (stride * c0 + lo) // stride * stride)
    b = min(size, -(-(stride * (c1 - 1) + hi + 1) // stride) * stride)
    return c0, c1, a, b, c0 - a // stride


def band_window(spec: BandSpec, geometry: np.ndarray) -> Window:
    """The window covering the content of every image of a batch (geometry rows from
    `letterbox_batch`: [w0, h0, w1, h1, padw, padh])."""
    padw, padh = geometry[:, 4].astype(int), geometry[:, 5].astype(int)
    w1, h1 = geometry[:, 2].astype(int), geometry[:, 3].astype(int)
    r0, r1, y0, y1, kr = _axis(
        int(padh.min()), int((padh + h1).max()), spec.size, spec.stride[0], spec.lo[0], spec.hi[0]
    )
    c0, c1, x0, x1, kc = _axis(
        int(padw.min()), int((padw + w1).max()), spec.size, spec.stride[1], spec.lo[1], spec.hi[1]
    )
    values = ([r0], [r1], [c0], [c1], [kr, kc], [kr + r1 - r0, kc + c1 - c0])
    inputs = {name: np.array(v, np.int64) for name, v in zip(WINDOW_INPUTS, values)}
    return Window(y0, y1, x0, x1, inputs, (y0, y1, x0, x1) == (0, spec.size, 0, spec.size))
