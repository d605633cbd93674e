"""Image bytes -> BGR uint8 array, refusing anything that is not a whole, sane image."""

from __future__ import annotations

import functools
import logging
import re
import struct
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
# OpenCV's own bound on either side (CV_IO_MAX_IMAGE_WIDTH/HEIGHT): it raises cv2.error past it.
MAX_SIDE = 1 << 20

# Markers a JPEG may carry before its first scan. Real headers have tens (an ICC profile split
# over many APP2 segments: ~100); without a bound, 20 MiB of 4-byte segments or 2-byte RST
# markers walked in Python held a worker for seconds and still ended in a 400.
_MAX_HEADER_MARKERS = 1024
# Scans a JPEG may hold. Progressive encoders write ~10 (libjpeg's default progression) and
# each scan is a pass over the whole image: 1000 repeated 14-byte scans cost 8.5 s of CPU on a
# 4 MP image, and one 20 MiB body could hold a million. 32 scans of 40 MP: ~3 s (measured).
_MAX_SCANS = 32
_FILL = re.compile(rb"\xff+")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """A request body that cannot be turned into an image; `status` is the HTTP answer."""

    status = 400


def _exif_orientation(payload: bytes) -> int | None:
    """The orientation tag (0x0112) of an APP1 Exif payload, None without one.

    Raises ValueError when the payload is not a well-formed TIFF header and IFD0.
    """
    tiff = payload[6:]
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        tag, kind, n, value = struct.unpack(
            order + "HHI4s", tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        )
        if tag == 0x0112:
            if kind != 3 or n != 1:  # anything but one SHORT is not an orientation we trust
                raise ValueError("unexpected orientation entry")
            return struct.unpack(order + "H", value[:2])[0]
    return None


def _jpeg_header(data: bytes) -> tuple[int, int, bool]:
    """Walk JPEG markers up to the first scan: (width, height, upright); checks it is complete.

    `upright` is True when the image carries no EXIF rotation (OpenCV applies orientations
    2-8): no Exif segment, or exactly one that parses cleanly with orientation absent or 1.
    """
    i, n, size, markers = 2, len(data), None, 0
    orientations: list[int | None] = []
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill bytes: skip the whole run, up to the marker's own 0xFF
            i = _FILL.match(data, i).end() - 1  # type: ignore[union-attr]
            continue
        markers += 1
        if markers > _MAX_HEADER_MARKERS:
            raise ImageError(
                f"corrupt JPEG: more than {_MAX_HEADER_MARKERS} markers before the image data"
            )
        if marker in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            raise ImageError("corrupt JPEG: bad segment length")
        if marker in _JPEG_SOF and i + 9 <= n:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            size = (width, height)
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            if orientations:  # a second Exif segment: not upright, whatever it says
                orientations.append(-1)
            else:
                try:
                    orientations.append(_exif_orientation(data[i + 4 : i + 2 + length]))
                except (KeyError, ValueError, struct.error):
                    orientations.append(-1)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise ImageError("corrupt JPEG: no frame header before the scan")
            # Inside scan data 0xFF is byte-stuffed, so an EOI marker can only be the real end;
            # searching from the back finds it at once in a whole file.
            if data.rfind(b"\xff\xd9", i + 2 + length) < 0:
                raise ImageError("truncated JPEG: no end-of-image marker")
            # Past here 0xFF is byte-stuffed in scan data, so FF DA can only be a scan's marker.
            scans = data.count(b"\xff\xda", i)
            if scans > _MAX_SCANS:
                raise ImageError(f"JPEG with {scans} scans; at most {_MAX_SCANS} are accepted")
            upright = not orientations or (len(orientations) == 1 and orientations[0] in (None, 1))
            return (*size, upright)
        i += 2 + length
    raise ImageError("truncated JPEG: header ends before the image data")


def image_size(data: bytes) -> tuple[str, int, int]:
    """Read (format, width, height) from the header alone, without decoding pixels."""
    return _read_header(data)[:3]


def _read_header(data: bytes) -> tuple[str, int, int, bool]:
    """(format, width, height, upright) where upright marks a JPEG with no EXIF rotation."""
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_header(data))
    return (*_other_size(data), False)


def _other_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of a PNG, BMP or WebP header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"BM" and len(data) >= 22 and data[14:18] == b"\x0c\x00\x00\x00":
        width, height = struct.unpack("<HH", data[18:22])  # OS/2 1.x core header: 16-bit sides
        return "bmp", width, height
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return "bmp", abs(width), abs(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return "webp", width, height
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return "webp", width & 0x3FFF, height & 0x3FFF
    raise ImageError("not an image: unrecognised format (JPEG, PNG, BMP and WebP are accepted)")


@functools.cache
def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        logger.info("simplejpeg is not installed: JPEGs decode through OpenCV only")
        return None
    return simplejpeg


def _decode_turbo(data: bytes) -> np.ndarray | None:
    """Full-size BGR decode through libjpeg-turbo's own API; None to leave it to OpenCV.

    Same library and settings as `cv2.imdecode` (accurate integer IDCT, smooth chroma
    upsampling, BGR output), so the pixels are identical (tests/test_preprocess.py checks);
    measured 9-17% faster than `cv2.imdecode` on zidane.jpg across runs (docs/benchmarks.md).
    Any warning or error (corrupt data, CMYK, 12-bit) hands the bytes to OpenCV, so those
    keep exactly OpenCV's behaviour.
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None:
        return None
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace="BGR", fastdct=False, fastupsample=False, strict=True
        )
    except ValueError:
        return None


def reduction_factor(width: int, height: int, min_side: int) -> int:
    """Largest JPEG DCT scale-down (1, 2, 4, 8) that keeps the long side >= `min_side`."""
    return next((f for f in (8, 4, 2) if max(width, height) / f >= min_side), 1)


def decode_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
):
    """Decode image bytes to a BGR uint8 (H, W, 3) array, or raise `ImageError`."""
    return decode_with_size(data, max_pixels, min_side)[0]


def decode_with_size(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to BGR uint8 plus the image's full (width, height), or raise `ImageError`.

    `min_side` turns on the opt-in fast mode for JPEGs: decode at 1/2, 1/4 or 1/8 scale
    (DCT scaling, much cheaper) while the long side stays >= `min_side`. Off by default: it
    changes pixels, hence outputs slightly (see docs/benchmarks.md, JPEG decode study).
    """
    import cv2

    data = bytes(data)
    if not data:
        raise ImageError("empty body: expected image bytes")
    fmt, width, height, upright = _read_header(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid {fmt} header: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels (limit {max_pixels})"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(f"image too large: {width}x{height} (at most {MAX_SIDE} pixels a side)")
    flags = cv2.IMREAD_COLOR
    if min_side and fmt == "jpeg":
        factor = reduction_factor(width, height, min_side)
        flags = {
            1: flags,
            2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8,
        }[factor]
    image = _decode_turbo(data) if upright and flags == cv2.IMREAD_COLOR else None
    if image is None:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:  # a header OpenCV refuses by assertion rather than by returning None
            image = None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImageError(f"cannot decode {fmt} image: corrupt or truncated data")
    if flags == cv2.IMREAD_COLOR:
        return image, (image.shape[1], image.shape[0])
    if (image.shape[1] >= image.shape[0]) != (width >= height):
        width, height = height, width  # EXIF orientation rotated the decoded image
    return image, (width, height)
