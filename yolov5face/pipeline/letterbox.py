"""Resize and pad images onto a square canvas, exactly as the serving convention specifies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_VALUE = 128


def resized_shape(h0: int, w0: int, size: int) -> tuple[int, int]:
    """Content size (h1, w1): long side to `size` when larger, short side floored to even."""
    if max(h0, w0) <= size:
        return h0, w0
    # Python-float arithmetic on purpose: the convention's rounding quirks (616 -> 318) follow.
    if h0 > w0:
        return size, max(int(w0 * (size / h0) // 2 * 2), 1)
    return max(int(h0 * (size / w0) // 2 * 2), 1), size


def letterbox_geometry(shapes: Sequence[tuple[int, ...]], size: int) -> np.ndarray:
    """(B, 6) float64 rows [w0, h0, w1, h1, padw, padh] for images of these (H, W, ...) shapes.

    Original size, content size and the left/top padding: what post-processing needs to map
    boxes back to ratios.
    """
    geometry = np.empty((len(shapes), 6), np.float64)
    for k, shape in enumerate(shapes):
        h0, w0 = shape[:2]
        h1, w1 = resized_shape(h0, w0, size)
        geometry[k] = (w0, h0, w1, h1, (size - w1) // 2, (size - h1) // 2)
    return geometry


def letterbox_batch(
    images: Sequence[np.ndarray], size: int, crop: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 images -> (B, 3, S, S) float32 RGB in [0, 1] and their geometry rows.

    `crop` = (y0, y1, x0, x1) returns only that window of each canvas; it must hold every
    image's content (a banded model's window, yolov5face/backends/band.py).
    """
    import cv2

    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"letterbox expects BGR images (H, W, 3), got shape {image.shape}")
    geometry = letterbox_geometry([image.shape for image in images], size)
    y0, y1, x0, x1 = crop if crop is not None else (0, size, 0, size)
    batch = np.empty((len(images), 3, y1 - y0, x1 - x0), np.float32)
    pad = np.float32(PAD_VALUE) / np.float32(255)
    for k, image in enumerate(images):
        w0, h0, w1, h1, padw, padh = (int(v) for v in geometry[k])
        if (h1, w1) != (h0, w0):
            image = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_LINEAR)
        top, left = padh - y0, padw - x0  # the content's place in the window
        if top < 0 or left < 0 or top + h1 > y1 - y0 or left + w1 > x1 - x0:
            raise ValueError(f"crop {crop} does not hold the content of image {k}")
        out = batch[k]
        # Fill only the border, then write each colour plane straight into its RGB slot:
        # contiguous uint8 planes convert several times faster than a strided HWC read.
        out[:, :top] = pad
        out[:, top + h1 :] = pad
        out[:, top : top + h1, :left] = pad
        out[:, top : top + h1, left + w1 :] = pad
        for channel, plane in enumerate(reversed(cv2.split(image))):
            np.divide(
                plane,
                np.float32(255),
                out=out[channel, top : top + h1, left : left + w1],
                dtype=np.float32,
            )
    return batch, geometry


def letterbox_batch_uint8(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 images -> (B, S, S, 3) uint8 BGR canvases and their geometry rows.

    For a model that converts pixels itself (yolov5face/convert/uint8_input.py): the same
    resized content and padding as `letterbox_batch`, before its float conversion.
    """
    import cv2

    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"letterbox expects BGR images (H, W, 3), got shape {image.shape}")
    geometry = letterbox_geometry([image.shape for image in images], size)
    batch = np.empty((len(images), size, size, 3), np.uint8)
    for k, image in enumerate(images):
        w0, h0, w1, h1, left, top = (int(v) for v in geometry[k])
        if (h1, w1) != (h0, w0):
            image = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_LINEAR)
        out = batch[k]
        out[:top] = PAD_VALUE
        out[top + h1 :] = PAD_VALUE
        out[top : top + h1, :left] = PAD_VALUE
        out[top : top + h1, left + w1 :] = PAD_VALUE
        out[top : top + h1, left : left + w1] = image
    return batch, geometry
