"""Banded CPU models: the window arithmetic, and outputs equal to the plain model's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from yolov5face.backends.band import BandSpec, band_path, band_window
from yolov5face.pipeline.letterbox import letterbox_batch, letterbox_geometry

# The n-0.5 model's cut: cells every 8 px, each seeing 7 px either side
# (yolov5face/convert/band.py).
SPEC = BandSpec(size=320, stride=(8, 8), lo=(-7, -7), hi=(7, 7))


def _geometry(*shapes: tuple[int, int]) -> np.ndarray:
    return letterbox_geometry([(h, w, 3) for h, w in shapes], 320)


def test_window_of_a_16_9_photo():
    window = band_window(SPEC, _geometry((720, 1280)))  # content rows 70..249
    assert (window.y0, window.y1, window.x0, window.x1) == (56, 264, 0, 320)
    assert window.inputs["band_r0"].tolist() == [8] and window.inputs["band_r1"].tolist() == [33]
    assert window.inputs["band_keep0"].tolist() == [1, 0]
    assert window.inputs["band_keep1"].tolist() == [26, 40]


def test_window_of_a_square_and_a_portrait_and_of_a_batch():
    square = band_window(SPEC, _geometry((500, 500)))
    assert (square.y0, square.y1, square.x0, square.x1) == (0, 320, 0, 320)
    portrait = band_window(SPEC, _geometry((1080, 810)))  # content columns 40..279
    assert (portrait.y0, portrait.y1) == (0, 320) and (portrait.x0, portrait.x1) == (32, 288)
    wide = band_window(SPEC, _geometry((720, 1280), (480, 640)))  # rows 70..249 and 40..279
    assert (wide.y0, wide.y1, wide.x0, wide.x1) == (32, 288, 0, 320)
    mixed = band_window(SPEC, _geometry((720, 1280), (1080, 810)))
    assert (mixed.y0, mixed.y1, mixed.x0, mixed.x1) == (0, 320, 0, 320)


@pytest.mark.parametrize("seed", range(5))
def test_window_covers_every_cell_that_sees_content(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        shapes = [
            tuple(int(v) for v in rng.integers(1, 2000, 2)) for _ in range(rng.integers(1, 4))
        ]
        geometry = _geometry(*shapes)
        w = band_window(SPEC, geometry)
        for ax, (lo_px, hi_px, start) in enumerate(
            [(w.y0, w.y1, geometry[:, 5]), (w.x0, w.x1, geometry[:, 4])]
        ):
            stop = start + geometry[:, 3 - ax]
            c0 = w.inputs["band_r0" if ax == 0 else "band_c0"][0]
            c1 = w.inputs["band_r1" if ax == 0 else "band_c1"][0]
            keep = w.inputs["band_keep0"][ax]
            assert lo_px % 8 == 0 and (hi_px % 8 == 0 or hi_px == 320)
            cells = np.arange(40)
            sees = (8 * cells + 7 >= start.min()) & (8 * cells - 7 <= stop.max() - 1)
            assert sees[c0:c1].all() and not sees[:c0].any() and not sees[c1:].any()
            # Kept cells read only pixels inside the crop (or the canvas edge's own padding).
            assert 8 * c0 - 7 >= lo_px or lo_px == 0
            assert 8 * (c1 - 1) + 7 < hi_px or hi_px == 320
            assert keep == c0 - lo_px // 8
        assert (geometry[:, 5] >= w.y0).all() and (geometry[:, 5] + geometry[:, 3] <= w.y1).all()


def test_letterbox_crop_is_the_canvas_window():
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (720, 1280, 3), np.uint8),
        rng.integers(0, 256, (90, 40, 3), np.uint8),
    ]
    full, geometry = letterbox_batch(images, 320)
    crop, cropped_geometry = letterbox_batch(images, 320, (56, 264, 0, 320))
    assert np.array_equal(crop, full[:, :, 56:264])
    assert np.array_equal(geometry, cropped_geometry)
    with pytest.raises(ValueError, match="does not hold"):
        letterbox_batch(images, 320, (80, 264, 0, 320))


@pytest.fixture(scope="module")
def backends(onnx_model):
    from yolov5face.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(onnx_model, band=False), OnnxRuntimeBackend(onnx_model, band=True)


def test_export_writes_a_banded_model_with_the_expected_cut(onnx_model, backends):
    assert band_path(onnx_model).is_file()
    plain, banded = backends
    assert plain.band is None
    spec = banded.band
    assert spec is not None and banded.describe()["band"] is True
    assert (spec.size, spec.stride, spec.lo, spec.hi) == (SPEC.size, SPEC.stride, SPEC.lo, SPEC.hi)


def test_banded_outputs_equal_the_plain_model(backends, images):
    """Raw outputs on every shared photo, alone and in mixed batches, crop against canvas."""
    import cv2

    from yolov5face.convert.band import TOLERANCE

    plain, banded = backends
    photos = [cv2.imread(str(p)) for p in sorted(images.glob("*.jpg")) if p.name != "bad_image.jpg"]
    batches = [[p] for p in photos] + [photos[:3], photos[3:]]
    worst, cropped = 0.0, 0
    for batch in batches:
        canvas, geometry = letterbox_batch(batch, 320)
        window = band_window(banded.band, geometry)
        cropped += not window.full
        crop, _ = letterbox_batch(batch, 320, (window.y0, window.y1, window.x0, window.x1))
        worst = max(worst, float(np.abs(banded.infer(crop, window) - plain.infer(canvas)).max()))
        # The banded graph itself also takes whole canvases (the backend gives those to the
        # plain one, which skips the splice).
        whole = band_window(banded.band, np.array([[320, 320, 320, 320, 0, 0]] * len(batch)))
        assert whole.full
        direct = banded._banded.run(None, {"images": canvas, **whole.inputs})[0]
        assert np.abs(direct - plain.infer(canvas)).max() <= TOLERANCE
    assert worst <= TOLERANCE
    assert cropped >= 4  # zidane, test, bus, head at least: the banded session really ran


def test_banded_detector_answers_exactly_like_the_plain_one(onnx_model, images, monkeypatch):
    from yolov5face.pipeline.detector import Detector

    banded = Detector(onnx_model, backend="onnxruntime", threads=1)
    monkeypatch.setenv("YOLOV5FACE_BAND", "0")
    plain = Detector(onnx_model, backend="onnxruntime", threads=1)
    assert banded.backend.band is not None and plain.backend.band is None
    blobs = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    for got, want in zip(banded.detect(blobs), plain.detect(blobs)):
        if isinstance(want, Exception):
            assert type(got) is type(want)
        else:
            assert json.dumps(got) == json.dumps(want)


def test_a_banded_model_of_another_file_is_not_used(onnx_model, tmp_path):
    import onnx

    from yolov5face.backends.onnxruntime import OnnxRuntimeBackend

    proto = onnx.load(onnx_model)
    proto.doc_string = "another export"
    other = tmp_path / "other.onnx"
    onnx.save(proto, other)
    shutil.copy(band_path(onnx_model), band_path(other))
    assert OnnxRuntimeBackend(other).band is None


def _toy_model(path, middle: list) -> None:
    """images -> 3x3 conv, stride 2 -> `middle` (c -> m) -> 1x1 conv -> out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 1, 0.25, 0.25], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["images", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        ),
        *middle,
        helper.make_node("Conv", ["m", "w2"], ["out"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_receptive_fields_are_followed_and_a_resize_stops_the_band(tmp_path):
    from onnx import helper

    from yolov5face.convert.band import export_banded

    conv = helper.make_node(
        "Conv", ["c", "w1"], ["m"], kernel_shape=[3, 3], strides=[4, 4], pads=[1] * 4
    )
    _toy_model(tmp_path / "conv.onnx", [conv])
    spec = export_banded(tmp_path / "conv.onnx")  # checked on the probe canvases too
    # k3 s2 p1 sees [-1, +1]; then k3 s4 p1 on that 2 px grid: [-1 - 2, +1 + 2].
    assert spec is not None and (spec.stride, spec.lo, spec.hi) == ((8, 8), (-3, -3), (3, 3))
    assert band_path(tmp_path / "conv.onnx").is_file()

    # Resize moves features between positions in ways the band does not follow.
    resize = helper.make_node("Resize", ["c", "", "scales"], ["m"])
    _toy_model(tmp_path / "resize.onnx", [resize])
    assert export_banded(tmp_path / "resize.onnx") is None
    assert not band_path(tmp_path / "resize.onnx").exists()
