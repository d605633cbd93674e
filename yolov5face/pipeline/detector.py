"""The one pipeline: bytes -> decode -> letterbox -> backend -> decode heads -> NMS -> faces."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from yolov5face.pipeline.decode import DEFAULT_MAX_PIXELS, ImageError, decode_with_size
from yolov5face.pipeline.heads import Faces, decode_predictions, to_json_faces, to_pixels
from yolov5face.pipeline.letterbox import (
    letterbox_batch,
    letterbox_batch_uint8,
    letterbox_geometry,
)
from yolov5face.pipeline.options import DEFAULT, AnswerTooLarge, Options, select

logger = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "infer", "postprocess")


def warmup_image() -> bytes:
    """A mid-grey 640x480 JPEG: enough to touch every stage of the pipeline."""
    import cv2

    return cv2.imencode(".jpg", np.full((480, 640, 3), 127, np.uint8))[1].tobytes()


@dataclass
class Detection:
    """Faces of one image plus the letterbox geometry needed to map them back."""

    faces: Faces
    geometry: np.ndarray  # [w0, h0, w1, h1, padw, padh]
    image: np.ndarray | None = None  # the decoded BGR image, kept only when crops are asked for

    def to_json(self, options: Options = DEFAULT) -> list[dict]:
        """The response body (list of face dicts), after the request's options."""
        faces = select(self.faces, self.geometry, options)
        out = to_json_faces(faces, self.geometry)
        if options.crops and len(faces):
            self._add_crops(out, faces, options)
        return out

    def _add_crops(self, out: list[dict], faces: Faces, options: Options) -> None:
        """Add each face's aligned crop; AnswerTooLarge once they pass `options.answer_bytes`."""
        from yolov5face.pipeline.align import aligned_crops, encode_crop

        if self.image is None:
            raise ValueError("crops need the decoded image: detect with the crops option")
        _, marks = to_pixels(faces, self.geometry)
        # A reduced-scale decode (fast_decode) holds fewer pixels than the original.
        h, w = self.image.shape[:2]
        marks = marks * np.tile([w / self.geometry[0], h / self.geometry[1]], 5)
        limit = options.answer_bytes
        used = len(json.dumps(out)) if limit is not None else 0
        for k, (face, crop) in enumerate(zip(out, aligned_crops(self.image, marks, options.crops))):
            face["crop"] = encode_crop(crop, options.crop_format, options.crop_quality)
            used += len(face["crop"]) + len(', "crop": ""')
            if limit is not None and used > limit:
                raise AnswerTooLarge(
                    f"the answer would pass {limit} bytes (the server's limit) at crop {k + 1} "
                    f"of {len(out)}: ask for fewer faces (max_faces), smaller crops, or "
                    "crop_format=jpeg"
                )


def _answer(result: Detection | ImageError, options: Options) -> list[dict] | ImageError:
    """One image's JSON faces, or the error that image (or its answer) ends in."""
    if isinstance(result, ImageError):
        return result
    try:
        return result.to_json(options)
    except ImageError as exc:
        return exc


class Detector:
    """Face detector facade used by the CLI, the TorchServe handler, bench, eval and tests."""

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        backend: str | None = None,
        img_size: int = 320,
        conf: float = 0.3,
        iou: float = 0.5,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        device: str | None = None,
        max_batch: int = 32,
        fast_decode: bool = False,
        band: bool | None = None,
        build_engine: bool = True,
    ):
        from yolov5face.backends import create_backend
        from yolov5face.backends.base import UINT8_LAYOUT, input_layout
        from yolov5face.paths import default_weights

        self.weights = weights if weights is not None else default_weights()
        self.backend = create_backend(
            backend,
            self.weights,
            img_size=img_size,
            threads=threads,
            device=device,
            max_batch=max_batch,
            band=band,
            build_engine=build_engine,
        )
        self.info = self.backend.info
        if self.info.img_size != img_size:
            logger.warning(
                "model was exported at img size %d; using it instead of %d",
                self.info.img_size,
                img_size,
            )
        self.img_size = self.info.img_size
        self.conf, self.iou = conf, iou
        self.max_pixels = max_pixels
        # Images per backend call: a caller's batch is cut into chunks of this size.
        self.chunk = min(max_batch, self.backend.preferred_batch or max_batch)
        # Opt-in DCT-scaled JPEG decoding (default off: it keeps golden parity exact).
        self.decode_min_side = self.img_size if fast_decode else None
        # A uint8-input model converts the canvas itself (yolov5face/convert/uint8_input.py).
        self._uint8 = input_layout(self.backend) == UINT8_LAYOUT

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Warm the whole pipeline up (codec import, allocations, backend init) before traffic."""
        sample = warmup_image()
        for n in batch_sizes:
            self.detect([sample] * n)

    def detect_images(
        self,
        images: Sequence[np.ndarray],
        timings: dict | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detection]:
        """Run decoded BGR images through letterbox, the network and post-processing.

        `sizes` are the images' full (width, height) when they were decoded at a reduced scale,
        so that pixel coordinates refer to the original image.
        """
        out: list[Detection] = []
        for start in range(0, len(images), self.chunk):
            chunk = images[start : start + self.chunk]
            t0 = time.perf_counter()
            # A banded model takes only the window of the canvas the content can change.
            window = self.backend.input_window(
                letterbox_geometry([image.shape for image in chunk], self.img_size)
            )
            crop = None if window is None else (window.y0, window.y1, window.x0, window.x1)
            if self._uint8:
                batch, geometry = letterbox_batch_uint8(chunk, self.img_size)
            else:
                batch, geometry = letterbox_batch(chunk, self.img_size, crop)
            if sizes is not None:
                geometry[:, :2] = sizes[start : start + self.chunk]
            t1 = time.perf_counter()
            raw = self.backend.infer(batch, window)
            t2 = time.perf_counter()
            out.extend(
                Detection(
                    decode_predictions(
                        raw[k],
                        self.img_size,
                        self.info.strides,
                        self.info.anchors,
                        self.conf,
                        self.iou,
                    ),
                    geometry[k],
                )
                for k in range(len(chunk))
            )
            t3 = time.perf_counter()
            if timings is not None:
                timings["preprocess"] = timings.get("preprocess", 0.0) + t1 - t0
                timings["infer"] = timings.get("infer", 0.0) + t2 - t1
                timings["postprocess"] = timings.get("postprocess", 0.0) + t3 - t2
        return out

    def detect_raw(
        self,
        blobs: Sequence[bytes | bytearray | memoryview],
        timings: dict | None = None,
        keep_images: bool = False,
    ) -> list[Detection | ImageError]:
        """Image bytes -> Detection per image, or the ImageError that image raised.

        `keep_images` keeps each decoded image on its Detection (for aligned crops).
        """
        t0 = time.perf_counter()
        results: list[Detection | ImageError] = []
        images, sizes, slots = [], [], []
        for k, blob in enumerate(blobs):
            try:
                image, size = decode_with_size(blob, self.max_pixels, self.decode_min_side)
                images.append(image)
                sizes.append(size)
                slots.append(k)
                results.append(None)  # type: ignore[arg-type]
            except ImageError as exc:
                results.append(exc)
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
        for k, image, detection in zip(slots, images, self.detect_images(images, timings, sizes)):
            detection.image = image if keep_images else None
            results[k] = detection
        return results

    def detect(
        self,
        blobs: Sequence[bytes | bytearray | memoryview],
        timings: dict | None = None,
        options: Options | Sequence[Options] | None = None,
    ) -> list[list[dict] | ImageError]:
        """Image bytes -> the JSON face list per image, or the ImageError for a bad one.

        `options`: one Options for every image, or one per image (a server batch); they apply
        after the shared network pass (yolov5face/pipeline/options.py).
        """
        if options is None or isinstance(options, Options):
            per_image = [options or DEFAULT] * len(blobs)
        else:
            per_image = list(options)
        results = self.detect_raw(blobs, timings, any(o.crops for o in per_image))
        t0 = time.perf_counter()
        out = [_answer(r, o) for r, o in zip(results, per_image)]
        if timings is not None:
            timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t0
        return out

    def describe(self) -> dict:
        """Backend facts plus the detector settings."""
        return {
            **self.backend.describe(),
            "img_size": self.img_size,
            "conf": self.conf,
            "iou": self.iou,
            "weights": str(self.weights),
            "fast_decode": self.decode_min_side is not None,
            "chunk": self.chunk,
        }
