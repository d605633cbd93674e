"""Letterbox windows and the uint8 canvas agree with the full float canvas, pixel for pixel.

Written against the survivors of `make mutants` (docs/mutation.md): the banded model's crop and
the uint8 path were not checked by any fast test.
"""

from __future__ import annotations

import numpy as np
import pytest

from yolov5face.pipeline.letterbox import (
    PAD_VALUE,
    letterbox_batch,
    letterbox_batch_uint8,
    letterbox_geometry,
    resized_shape,
)

SIZE = 320
SHAPES = [(480, 640), (640, 480), (320, 320), (200, 120), (333, 1001), (1001, 333), (7, 5)]


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SHAPES]


def test_float_canvas_is_the_uint8_canvas_in_rgb_over_255():
    images = _images()
    canvas, geometry = letterbox_batch(images, SIZE)
    raw, raw_geometry = letterbox_batch_uint8(images, SIZE)
    assert canvas.dtype == np.float32 and canvas.shape == (len(images), 3, SIZE, SIZE)
    assert raw.dtype == np.uint8 and raw.shape == (len(images), SIZE, SIZE, 3)
    np.testing.assert_array_equal(geometry, raw_geometry)
    expected = raw[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(canvas, expected)


def test_content_and_padding_sit_where_the_geometry_says():
    images = _images(1)
    raw, geometry = letterbox_batch_uint8(images, SIZE)
    for image, canvas, row in zip(images, raw, geometry):
        w0, h0, w1, h1, left, top = (int(v) for v in row)
        assert (h0, w0) == image.shape[:2] and (h1, w1) == resized_shape(h0, w0, SIZE)
        assert (left, top) == ((SIZE - w1) // 2, (SIZE - h1) // 2)
        content = canvas[top : top + h1, left : left + w1]
        if (h1, w1) == (h0, w0):
            np.testing.assert_array_equal(content, image)  # no resize at or below the size
        border = np.ones((SIZE, SIZE), bool)
        border[top : top + h1, left : left + w1] = False
        assert (canvas[border] == PAD_VALUE).all()


def test_geometry_rows_are_float64_and_exact():
    geometry = letterbox_geometry([(480, 640, 3), (320, 320, 3)], SIZE)
    assert geometry.dtype == np.float64
    assert geometry.tolist() == [[640, 480, 320, 240, 0, 40], [320, 320, 320, 320, 0, 0]]


@pytest.mark.parametrize(
    ("crop", "wide"),
    [
        ((40, 280, 0, 320), True),
        ((0, 320, 0, 320), True),
        ((30, 290, 0, 320), True),
        ((40, 300, 0, 320), True),
        ((0, 320, 40, 280), False),  # the tall ones: a window across
        ((0, 320, 30, 300), False),
    ],
)
def test_a_crop_is_that_window_of_the_full_canvas(crop, wide):
    shapes = {img.shape[:2]: img for img in _images(2)}
    images = [shapes[(480, 640)], shapes[(333, 1001)]] if wide else [shapes[(640, 480)]]
    images += [shapes[(1001, 333)]] if not wide else []
    full, geometry = letterbox_batch(images, SIZE)
    window, window_geometry = letterbox_batch(images, SIZE, crop=crop)
    y0, y1, x0, x1 = crop
    np.testing.assert_array_equal(window_geometry, geometry)  # rows are for the full canvas
    np.testing.assert_array_equal(window, full[:, :, y0:y1, x0:x1])


@pytest.mark.parametrize(
    ("crop", "shape"),
    [
        ((41, 281, 0, 320), (480, 640)),
        ((0, 200, 0, 320), (480, 640)),
        ((30, 270, 0, 320), (480, 640)),  # top inside, bottom cut
        ((40, 280, 1, 320), (480, 640)),
        ((0, 320, 40, 270), (640, 480)),  # left inside, right cut
        ((0, 320, 41, 320), (640, 480)),
    ],
)
def test_a_crop_that_cuts_the_content_is_refused(crop, shape):
    (image,) = [img for img in _images(3) if img.shape[:2] == shape]
    with pytest.raises(ValueError, match="does not hold the content"):
        letterbox_batch([image], SIZE, crop=crop)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((320, 201), (320, 201)),  # long side at the size: untouched, odd side kept
        ((201, 320), (201, 320)),
        ((640, 335), (320, 166)),  # 167.5 floored to even, not truncated to 167
        ((335, 640), (166, 320)),
        ((1000, 1), (320, 1)),  # never below 1 pixel
        ((616, 1000), (196, 320)),  # 197.12 -> 196
    ],
)
def test_resized_shape_by_hand(shape, expected):
    assert resized_shape(*shape, SIZE) == expected


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 4), (20, 30, 1)])
def test_non_bgr_arrays_are_refused_by_both_paths(shape):
    image = np.zeros(shape, np.uint8)
    for letterbox in (letterbox_batch, letterbox_batch_uint8):
        with pytest.raises(ValueError, match=r"BGR images \(H, W, 3\)"):
            letterbox([image], SIZE)
