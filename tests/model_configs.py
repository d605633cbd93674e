"""Architecture configs of the yolov5-face variants (layer lists as published upstream)."""

from __future__ import annotations

import copy
from typing import Any

ANCHORS: list[list[int]] = [
    [4, 5, 8, 10, 13, 16],
    [23, 29, 43, 55, 73, 105],
    [146, 217, 231, 300, 335, 433],
]

# Layer rows: [from, repeats, module, args]; widths/depths are scaled by the multiples.
_SHUFFLE_BACKBONE = [
    [-1, 1, "StemBlock", [32, 3, 2]],
    [-1, 1, "ShuffleV2Block", [128, 2]],
    [-1, 3, "ShuffleV2Block", [128, 1]],
    [-1, 1, "ShuffleV2Block", [256, 2]],
    [-1, 7, "ShuffleV2Block", [256, 1]],
    [-1, 1, "ShuffleV2Block", [512, 2]],
    [-1, 3, "ShuffleV2Block", [512, 1]],
]
_SHUFFLE_HEAD = [
    [-1, 1, "Conv", [128, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 1, "C3", [128, False]],
    [-1, 1, "Conv", [128, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 2], 1, "Concat", [1]],
    [-1, 1, "C3", [128, False]],
    [-1, 1, "Conv", [128, 3, 2]],
    [[-1, 11], 1, "Concat", [1]],
    [-1, 1, "C3", [128, False]],
    [-1, 1, "Conv", [128, 3, 2]],
    [[-1, 7], 1, "Concat", [1]],
    [-1, 1, "C3", [128, False]],
    [[14, 17, 20], 1, "Detect", ["nc", "anchors"]],
]
_CSP_BACKBONE = [
    [-1, 1, "StemBlock", [64, 3, 2]],
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 9, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 1, "SPP", [1024, [3, 5, 7]]],
    [-1, 3, "C3", [1024, False]],
]
_CSP_HEAD = [
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 5], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 3], 1, "Concat", [1]],
    [-1, 3, "C3", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 13], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 9], 1, "Concat", [1]],
    [-1, 3, "C3", [1024, False]],
    [[16, 19, 22], 1, "Detect", ["nc", "anchors"]],
]


def _config(depth: float, width: float, backbone: list, head: list) -> dict[str, Any]:
    return {
        "nc": 1,
        "depth_multiple": depth,
        "width_multiple": width,
        "anchors": ANCHORS,
        "backbone": backbone,
        "head": head,
    }


CONFIGS: dict[str, dict[str, Any]] = {
    "yolov5n-0.5": _config(1.0, 0.5, _SHUFFLE_BACKBONE, _SHUFFLE_HEAD),
    "yolov5n": _config(1.0, 1.0, _SHUFFLE_BACKBONE, _SHUFFLE_HEAD),
    "yolov5s": _config(0.33, 0.5, _CSP_BACKBONE, _CSP_HEAD),
    "yolov5m": _config(0.67, 0.75, _CSP_BACKBONE, _CSP_HEAD),
    "yolov5l": _config(1.0, 1.0, _CSP_BACKBONE, _CSP_HEAD),
}


def get_config(name: str) -> dict[str, Any]:
    """Return a deep copy of the named architecture config."""
    try:
        return copy.deepcopy(CONFIGS[name])
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}") from None
