"""Build the banded CPU model (yolov5face/backends/band.py) from an exported ONNX; export time only.

The cut is the first tensor at the requested stride that every later layer reaches only through
it. Every layer before it must map canvas positions to feature positions in a way this module
can follow (convolutions, pooling, element-wise ops, channel concat/split/shuffle); otherwise no
banded model is made. Its outputs are checked against the plain model on probe canvases before
it is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.backends.band import METADATA_KEY, WINDOW_INPUTS, BandSpec, band_path, band_window

logger = logging.getLogger(__name__)

# Ops that keep every feature at its position; Clip/LeakyRelu carry constant parameters only.
_POINTWISE = {"Sigmoid", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Tanh", "Clip"}
_BINARY = {"Mul", "Add", "Sub", "Div"}
# Ops that move data between channels only (checked against the static shapes).
_CHANNEL = {"Concat", "Split", "Slice", "Unsqueeze", "Reshape"}
_WINDOWED = {"Conv", "MaxPool", "AveragePool"}
# Largest difference from the plain model accepted on the probe canvases (raw outputs).
TOLERANCE = 1e-4

Field = tuple[tuple[int, int, int], tuple[int, int, int]]  # per axis: (stride, lo, hi)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _windowed(node: Any, field: Field, consts: dict[str, np.ndarray]) -> Field | None:
    """Field of a Conv/pool output from its input's, or None if it cannot be followed."""
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if node.op_type == "Conv":
        if node.input[1] not in consts:
            return None
        kernel = a.get("kernel_shape", consts[node.input[1]].shape[2:])
    else:
        kernel = a["kernel_shape"]
    if len(kernel) != 2:
        return None
    strides = a.get("strides", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    dilations = a.get("dilations", [1, 1])
    # ceil_mode only matters on a tail the stride does not divide; windows that tile the input
    # leave none, since every crop is a multiple of the cut's stride.
    if a.get("ceil_mode", 0) and (list(kernel) != list(strides) or any(pads)):
        return None
    out = []
    for ax in range(2):
        s, lo, hi = field[ax]
        span = (kernel[ax] - 1) * dilations[ax]
        out.append((s * strides[ax], lo - s * pads[ax], hi + s * (span - pads[ax])))
    return out[0], out[1]


def _spatial_axes_untouched(node: Any, rank: int, consts: dict[str, np.ndarray]) -> bool:
    """Whether a channel op's axis arguments avoid the last two (spatial) axes."""
    a = _attrs(node)
    axes: list[int] = []
    if node.op_type in ("Concat", "Split"):
        axes = [a.get("axis", 0)]
    elif node.op_type == "Slice":
        if len(node.input) < 4 or node.input[3] not in consts:
            return False
        axes = [int(v) for v in consts[node.input[3]]]
    return all((ax % rank) < rank - 2 for ax in axes)


def _trace(model: Any, shapes: dict[str, list[int]], size: int, stride: int) -> tuple | None:
    """Follow the canvas fields through the first layers; return (cut, its field, cut index)."""
    from onnx import numpy_helper

    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    last_use: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = k
    for out in graph.output:
        last_use[out.name] = len(graph.node)
    image = graph.input[0].name
    fields: dict[str, Field] = {image: ((1, 0, 0), (1, 0, 0))}
    live = {image}
    for k, node in enumerate(graph.node):
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
            continue
        tracked = [n for n in node.input if n and n not in consts]
        if not tracked or any(n not in fields for n in tracked):
            return None
        field: Field | None = fields[tracked[0]]
        if node.op_type in _WINDOWED:
            field = _windowed(node, fields[node.input[0]], consts)
        elif node.op_type in _BINARY or node.op_type == "Concat":
            group = [fields[n] for n in tracked]
            if any((f[0][0], f[1][0]) != (field[0][0], field[1][0]) for f in group):
                return None
            field = tuple(  # type: ignore[assignment]
                (field[ax][0], min(f[ax][1] for f in group), max(f[ax][2] for f in group))
                for ax in range(2)
            )
            for name in node.input:  # a constant operand must not vary over positions
                if name in consts and any(d != 1 for d in consts[name].shape[-2:]):
                    return None
        elif node.op_type not in _POINTWISE and node.op_type not in _CHANNEL or len(tracked) > 1:
            return None
        if field is None:
            return None
        rank = len(shapes.get(tracked[0], []))
        if node.op_type in _CHANNEL and not _spatial_axes_untouched(node, rank, consts):
            return None
        expect = [size // field[0][0], size // field[1][0]]
        for out in node.output:
            shape = shapes.get(out)
            if shape is None or len(shape) < 4 or shape[-2:] != expect:
                return None
            if size % field[0][0] or size % field[1][0]:
                return None
            fields[out] = field
        live = {n for n in live | set(node.output) if last_use.get(n, -1) > k}
        if len(live) == 1 and next(iter(live)) in node.output:
            (cut,) = live
            f = fields[cut]
            if (f[0][0], f[1][0]) == (stride, stride) and len(shapes[cut]) == 4:
                return cut, f, k
    return None


def _static_shapes(model: Any) -> dict[str, list[int]]:
    """Every tensor's shape for a batch of one."""
    import onnx
    from onnx import shape_inference

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(copy)
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    values += list(inferred.graph.input)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _pad_map(model: Any, cut: str, size: int) -> np.ndarray:
    """The cut tensor of an all-padding canvas (run through ONNX Runtime, like serving)."""
    import onnx.shape_inference
    import onnx.utils
    import onnxruntime as ort

    from yolov5face.pipeline.letterbox import PAD_VALUE

    inferred = onnx.shape_inference.infer_shapes(model)
    head = onnx.utils.Extractor(inferred).extract_model([model.graph.input[0].name], [cut])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        head.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    canvas = np.full((1, 3, size, size), np.float32(PAD_VALUE) / np.float32(255), np.float32)
    return session.run(None, {model.graph.input[0].name: canvas})[0]


def _banded_graph(model: Any, cut: str, cut_index: int, pad: np.ndarray) -> Any:
    """The model with the window inputs, dynamic image size and the pad map spliced in."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    image = graph.input[0].name
    consts = {n.output[0]: _attrs(n)["value"] for n in graph.node if n.op_type == "Constant"}
    consts.update({init.name: init for init in graph.initializer})
    nodes: list[Any] = []
    for k, node in enumerate(graph.node):
        if k <= cut_index and node.op_type == "Reshape":
            # A static (..., H, W) target takes H and W from its input: the window varies.
            target = numpy_helper.to_array(consts[node.input[1]])
            base = node.name or node.output[0]
            prefix, hw, shape = f"{base}/band_prefix", f"{base}/band_hw", f"{base}/band_shape"
            nodes += [
                helper.make_node(
                    "Constant", [], [prefix], value=numpy_helper.from_array(target[:-2], prefix)
                ),
                helper.make_node("Shape", [node.input[0]], [hw], start=-2),
                helper.make_node("Concat", [prefix, hw], [shape], axis=0),
            ]
            node.input[1] = shape
        nodes.append(node)
        if k == cut_index:
            for i, name in enumerate(node.output):
                if name == cut:
                    node.output[i] = f"{cut}/band"
            nodes += _splice_nodes(cut, image, pad.shape)
    used = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    graph.initializer.append(numpy_helper.from_array(pad.astype(np.float32), "band/pad_map"))
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "band_height", "band_width"
    for name in WINDOW_INPUTS:
        n = 2 if name.startswith("band_keep") else 1
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, [n]))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _splice_nodes(cut: str, image: str, pad_shape: tuple[int, ...]) -> list[Any]:
    """Nodes that rebuild the full cut map: the window's cells inside the pad map's."""
    from onnx import helper, numpy_helper

    def const(name: str, values: list[int]) -> Any:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name)
        )

    r0, r1, c0, c1, keep0, keep1 = WINDOW_INPUTS
    pad = "band/pad_map"
    s = "band/"
    return [
        const(s + "zero", [0]),
        const(s + "rows", [pad_shape[2]]),
        const(s + "cols", [pad_shape[3]]),
        const(s + "ax_h", [2]),
        const(s + "ax_w", [3]),
        const(s + "ax_hw", [2, 3]),
        const(s + "ones", [1, 1, 1]),
        helper.make_node("Shape", [image], [s + "n"], start=0, end=1),
        helper.make_node("Concat", [s + "n", s + "ones"], [s + "expand"], axis=0),
        helper.make_node("Slice", [f"{cut}/band", keep0, keep1, s + "ax_hw"], [s + "mid"]),
        helper.make_node("Slice", [pad, s + "zero", r0, s + "ax_h"], [s + "top1"]),
        helper.make_node("Slice", [pad, r1, s + "rows", s + "ax_h"], [s + "bottom1"]),
        helper.make_node("Slice", [pad, r0, r1, s + "ax_h"], [s + "band_rows"]),
        helper.make_node("Slice", [s + "band_rows", s + "zero", c0, s + "ax_w"], [s + "left1"]),
        helper.make_node("Slice", [s + "band_rows", c1, s + "cols", s + "ax_w"], [s + "right1"]),
        *(
            helper.make_node("Expand", [s + part + "1", s + "expand"], [s + part])
            for part in ("top", "bottom", "left", "right")
        ),
        helper.make_node("Concat", [s + "left", s + "mid", s + "right"], [s + "row"], axis=3),
        helper.make_node("Concat", [s + "top", s + "row", s + "bottom"], [cut], axis=2),
    ]


def _probe_images(seed: int = 0) -> list[list[np.ndarray]]:
    """Batches of random BGR images of the shapes a banded model must get right."""
    rng = np.random.default_rng(seed)
    shapes = [(720, 1280), (1080, 810), (320, 320), (100, 300), (240, 31), (5, 640), (333, 333)]
    batches = [[rng.integers(0, 256, (*s, 3), np.uint8)] for s in shapes]
    batches.append([rng.integers(0, 256, (*s, 3), np.uint8) for s in [(720, 1280), (1000, 500)]])
    batches.append([rng.integers(0, 256, (*s, 3), np.uint8) for s in [(480, 640), (720, 1280)]])
    return batches


def check_banded(plain: Any, banded: Any, spec: BandSpec) -> float:
    """Largest raw-output difference between the two sessions over the probe batches."""
    from yolov5face.pipeline.letterbox import letterbox_batch, letterbox_geometry

    worst = 0.0
    for images in _probe_images():
        full, _ = letterbox_batch(images, spec.size)
        geometry = letterbox_geometry([im.shape for im in images], spec.size)
        window = band_window(spec, geometry)
        crop, _ = letterbox_batch(images, spec.size, (window.y0, window.y1, window.x0, window.x1))
        want = plain.run(None, {plain.get_inputs()[0].name: full})[0]
        got = banded.run(None, {banded.get_inputs()[0].name: crop, **window.inputs})[0]
        worst = max(worst, float(np.abs(want - got).max()))
    return worst


def export_banded(
    plain: str | os.PathLike, out: str | os.PathLike | None = None, stride: int = 8
) -> BandSpec | None:
    """Write the banded model of an exported ONNX (default `band_path(plain)`), or None if
    its first layers cannot be banded; the file is checked before it is written."""
    import onnx
    import onnxruntime as ort

    from yolov5face.model.checkpoint import sha256_file
    from yolov5face.paths import write_atomically

    plain, out = Path(plain), Path(out) if out is not None else band_path(plain)
    model = onnx.load(plain)
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    traced = _trace(model, _static_shapes(model), size, stride)
    if traced is None:
        logger.info("%s: no stride-%d cut the band can follow; no banded model", plain, stride)
        return None
    cut, field, cut_index = traced
    spec = BandSpec(
        size=size,
        stride=(field[0][0], field[1][0]),
        lo=(field[0][1], field[1][1]),
        hi=(field[0][2], field[1][2]),
        cut=cut,
        source_sha256=sha256_file(plain),
    )
    banded = _banded_graph(model, cut, cut_index, _pad_map(model, cut, size))
    entry = banded.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    cpu = ["CPUExecutionProvider"]
    plain_session = ort.InferenceSession(str(plain), options, providers=cpu)
    banded_session = ort.InferenceSession(banded.SerializeToString(), options, providers=cpu)
    worst = check_banded(plain_session, banded_session, spec)
    if worst > TOLERANCE:
        logger.warning("banded model differs from %s by %.3g; not written", plain, worst)
        return None
    write_atomically(out, banded.SerializeToString())
    logger.info(
        "banded model %s: cut %s, cells see rows [%+d, %+d], max diff %.2g",
        out,
        cut,
        spec.lo[0],
        spec.hi[0],
        worst,
    )
    return spec
