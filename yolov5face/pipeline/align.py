"""Faces aligned for recognition: a similarity transform from the five landmarks onto the
ArcFace template, applied to the original pixels.

The template is the standard five-point reference of ArcFace-family recognisers for a 112x112
crop (eyes, nose tip, mouth corners); other square sizes scale it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np

# (x, y) in a 112x112 crop: left eye, right eye, nose, left mouth corner, right mouth corner.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)


def template(size: int) -> np.ndarray:
    """The five reference points for a `size` x `size` crop."""
    return TEMPLATE_112 * (size / 112.0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) taking src to dst.

    Closed form (Umeyama, 1991) for (N, 2) point sets; returns the 2x3 matrix for cv2.warpAffine.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    a, b = src - mean_src, dst - mean_dst
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / (a**2).sum(1).mean()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_dst - scale * rotation @ mean_src
    return matrix


def aligned_crops(image: np.ndarray, landmarks: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """One `size` x `size` BGR crop per face of `image`, from its (K, 10) pixel landmarks.

    Made one at a time as the caller asks (a 512 px crop is 768 KB; an image may hold 1000s).
    """
    import cv2

    reference = template(size)
    for points in landmarks:
        yield cv2.warpAffine(
            image,
            similarity(points.reshape(5, 2), reference),
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )


def encode_crop(crop: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> str:
    """A crop as base64 JPEG or PNG text (what the JSON answer carries)."""
    import cv2

    if fmt == "png":
        ok, data = cv2.imencode(".png", crop)
    else:
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"could not encode a {crop.shape} crop as {fmt}")
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_crop(text: str) -> np.ndarray:
    """The BGR crop of `encode_crop` text."""
    import cv2

    data = np.frombuffer(base64.b64decode(text), np.uint8)
    crop = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if crop is None:
        raise ValueError("not an encoded image")
    return crop
