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


def letterbox_batch(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 images -> (B, 3, S, S) float32 RGB in [0, 1] and (B, 6) float64 geometry.

    Geometry rows are [w0, h0, w1, h1, padw, padh]: original size, content size and the
    left/top padding, what post-processing needs to map boxes back to ratios.
    """
    import cv2

    batch = np.empty((len(images), 3, size, size), np.float32)
    geometry = np.empty((len(images), 6), np.float64)
    pad = np.float32(PAD_VALUE) / np.float32(255)
    for k, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"letterbox expects BGR images (H, W, 3), got shape {image.shape}")
        h0, w0 = image.shape[:2]
        h1, w1 = resized_shape(h0, w0, size)
        if (h1, w1) != (h0, w0):
            image = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_LINEAR)
        padw, padh = (size - w1) // 2, (size - h1) // 2
        geometry[k] = (w0, h0, w1, h1, padw, padh)
        out = batch[k]
        # Fill only the border, then write each colour plane straight into its RGB slot:
        # contiguous uint8 planes convert several times faster than a strided HWC read.
        out[:, :padh] = pad
        out[:, padh + h1 :] = pad
        out[:, padh : padh + h1, :padw] = pad
        out[:, padh : padh + h1, padw + w1 :] = pad
        for channel, plane in enumerate(reversed(cv2.split(image))):
            np.divide(
                plane,
                np.float32(255),
                out=out[channel, padh : padh + h1, padw : padw + w1],
                dtype=np.float32,
            )
    return batch, geometry
