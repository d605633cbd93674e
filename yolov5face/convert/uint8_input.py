"""Give an exported model uint8 pixels: the host letterboxes into a uint8 canvas, the graph
converts it (cast, HWC -> CHW, BGR -> RGB, / 255) on whatever device runs it.

The host then sends a quarter of the bytes (one uint8 per value instead of a float32) and skips
its own float conversion. The division is the same float32 `x / 255` the host does today, on
the same uint8 values, so answers are unchanged. Made by editing the exported ONNX graph, so no
torch is needed: any ONNX file from `yolov5face export onnx` (or in an archive) converts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from yolov5face.backends.base import FLOAT_LAYOUT, UINT8_LAYOUT

logger = logging.getLogger(__name__)

__all__ = ["FLOAT_LAYOUT", "LAYOUT_KEY", "UINT8_LAYOUT", "uint8_input_model", "write_uint8_model"]

LAYOUT_KEY = "input_layout"  # in ModelInfo.extra


def uint8_input_model(model: object) -> object:
    """A copy of the float-input ModelProto `model` whose input is (B, S, S, 3) uint8 BGR."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from yolov5face.convert.onnx import INPUT_NAME, METADATA_KEY

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    (old,) = [i for i in graph.input if i.name == INPUT_NAME]
    dims = old.type.tensor_type.shape.dim
    if old.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4:
        raise ValueError(f"{INPUT_NAME} is not a float (B, 3, S, S) input; already uint8?")
    channels, height, width = (d.dim_value for d in dims[1:])
    if channels != 3:
        raise ValueError(f"expected 3 input channels, got {channels}")
    batch = dims[0].dim_param or "batch"
    floats = f"{INPUT_NAME}_float"
    for node in graph.node:  # every consumer now reads the converted tensor
        node.input[:] = [floats if name == INPUT_NAME else name for name in node.input]
    graph.input.remove(old)
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, height, width, 3])
    )
    prefix = f"{INPUT_NAME}_u8"
    graph.initializer.extend(
        [
            helper.make_tensor(f"{prefix}_bgr_to_rgb", TensorProto.INT64, [3], [2, 1, 0]),
            helper.make_tensor(f"{prefix}_255", TensorProto.FLOAT, [], [255.0]),
        ]
    )
    # Cast first: TensorRT allows a uint8 network input only straight into a cast.
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], [f"{prefix}_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [f"{prefix}_f"], [f"{prefix}_chw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Gather", [f"{prefix}_chw", f"{prefix}_bgr_to_rgb"], [f"{prefix}_rgb"], axis=1
        ),
        helper.make_node("Div", [f"{prefix}_rgb", f"{prefix}_255"], [floats]),
    ]
    for k, node in enumerate(nodes):
        node.name = f"{prefix}_{k}"
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    for entry in out.metadata_props:
        if entry.key == METADATA_KEY:
            info = json.loads(entry.value)
            info.setdefault("extra", {})[LAYOUT_KEY] = UINT8_LAYOUT
            entry.value = json.dumps(info, sort_keys=True)
    onnx.checker.check_model(out)
    return out


def uint8_path(float_model: str | os.PathLike) -> Path:
    """Where the uint8-input model of `float_model` is kept: `<stem>.u8.onnx` beside it."""
    path = Path(float_model)
    return path.with_name(f"{path.stem}.u8.onnx")


def write_uint8_model(float_model: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the uint8-input model of `float_model` (atomically); returns its path."""
    import onnx

    from yolov5face.paths import write_atomically

    target = Path(out) if out is not None else uint8_path(float_model)
    target.parent.mkdir(parents=True, exist_ok=True)
    proto = uint8_input_model(onnx.load(str(float_model)))
    write_atomically(target, proto.SerializeToString())
    logger.info("uint8-input model %s -> %s", float_model, target)
    return target
