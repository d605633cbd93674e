"""Per-request options: a higher score threshold, a face limit, a minimum face size, aligned crops.

They apply after the network pass, so requests with different options share one batch. A bad
value is that request's own 400 (`OptionError`), naming the option. With no option the answer
is today's, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from yolov5face.pipeline.decode import ImageError
from yolov5face.pipeline.heads import Faces, to_pixels

CROP_SIZES = (64, 512)  # smallest and largest crop side accepted
CROP_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
MAX_FACES = 1000
NAMES = ("conf", "max_faces", "min_size", "crops", "crop_format", "crop_quality")


class OptionError(ImageError):
    """A request option that is unknown or out of range (answered 400)."""


class AnswerTooLarge(ImageError):
    """An answer (its crops, mostly) over the server's byte budget (answered 413)."""

    status = 413


@dataclass(frozen=True)
class Options:
    """What one request asked for beyond the default answer."""

    conf: float | None = None  # keep faces scoring at least this (>= the server's threshold)
    max_faces: int | None = None  # keep the highest-scoring N
    min_size: float | None = None  # drop faces whose shorter box side (original px) is below
    crops: int | None = None  # add each face aligned to the ArcFace template, this many px square
    crop_format: str = "jpeg"  # jpeg | png
    crop_quality: int = 95  # JPEG quality
    # Set by the server, never by a request: the most bytes this image's JSON answer may take
    # (TorchServe drops a worker whose answer passes its max_response_size).
    answer_bytes: int | None = None

    @property
    def filters(self) -> bool:
        """True when some faces may be dropped."""
        return self.conf is not None or self.max_faces is not None or self.min_size is not None


DEFAULT = Options()


def _number(name: str, text: str, kind: type, low: float, high: float) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise OptionError(
            f"option {name}: {text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if not (low <= value <= high) or value != value:  # NaN compares false
        raise OptionError(f"option {name}: {text} is outside [{low:g}, {high:g}]")
    return value


def _crop_size(text: str) -> int:
    match = re.fullmatch(r"(\d{1,4})(?:x(\d{1,4}))?", text.strip())
    if not match or (match.group(2) and match.group(2) != match.group(1)):
        raise OptionError(f"option crops: {text!r} is not N or NxN (square crops, e.g. 112)")
    return int(_number("crops", match.group(1), int, *CROP_SIZES))


def parse_options(params: Mapping[str, str | bytes], threshold: float = 0.3) -> Options:
    """Options from request parameters (query string or gRPC input keys); OptionError if bad.

    `threshold` is the server's own score threshold: `conf` can only raise it.
    """
    values: dict[str, object] = {}
    for name, raw in params.items():
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        if name not in NAMES:
            raise OptionError(f"unknown option {name!r}; known: {', '.join(NAMES)}")
        if name == "conf":
            values[name] = float(_number(name, text, float, threshold, 1.0))
        elif name == "max_faces":
            values[name] = int(_number(name, text, int, 1, MAX_FACES))
        elif name == "min_size":
            values[name] = float(_number(name, text, float, 0.0, 1e5))
        elif name == "crops":
            values[name] = _crop_size(text)
        elif name == "crop_format":
            if text.lower() not in CROP_FORMATS:
                raise OptionError(f"option crop_format: {text!r} is not jpeg or png")
            values[name] = text.lower()
        else:
            values[name] = int(_number(name, text, int, 1, 100))
    return Options(**values)  # type: ignore[arg-type]


def select(faces: Faces, geometry: np.ndarray, options: Options) -> Faces:
    """The faces `options` keeps, still in descending score order."""
    if not options.filters or not len(faces):
        return faces
    keep = np.ones(len(faces), bool)
    if options.conf is not None:
        keep &= faces.scores >= options.conf
    if options.min_size is not None:
        boxes, _ = to_pixels(faces, geometry)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep &= sides >= options.min_size
    index = np.flatnonzero(keep)
    if options.max_faces is not None:
        index = index[: options.max_faces]
    return Faces(faces.boxes[index], faces.scores[index], faces.landmarks[index])
