"""The one pipeline: bytes -> decode -> letterbox -> backend -> decode heads -> NMS -> faces."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from yolov5face.backends.band import band_window
from yolov5face.pipeline.decode import DEFAULT_MAX_PIXELS, ImageError, decode_with_size
from yolov5face.pipeline.heads import Faces, decode_predictions, to_json_faces
from yolov5face.pipeline.letterbox import letterbox_batch, letterbox_geometry

logger = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "infer", "postprocess")


@dataclass
class Detection:
    """Faces of one image plus the letterbox geometry needed to map them back."""

    faces: Faces
    geometry: np.ndarray  # [w0, h0, w1, h1, padw, padh]

    def to_json(self) -> list[dict]:
        """The reference response body (list of face dicts)."""
        return to_json_faces(self.faces, self.geometry)


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
    ):
        from yolov5face.backends import create_backend
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
        self._pool: ThreadPoolExecutor | None = None  # helper threads of detect(threads=N)
        self._pool_size = 0

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), threads: int = 1) -> None:
        """Warm the whole pipeline up (codec import, allocations, backend init) before traffic."""
        import cv2

        sample = cv2.imencode(".jpg", np.full((480, 640, 3), 127, np.uint8))[1].tobytes()
        for n in batch_sizes:
            self.detect([sample] * n)
            if threads > 1 and n > 1:
                self.detect([sample] * n, threads=threads)

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
            band = getattr(self.backend, "band", None)
            if band is None:
                batch, geometry = letterbox_batch(chunk, self.img_size)
            else:
                # A banded model takes only the window of the canvas the content can change.
                window = band_window(
                    band, letterbox_geometry([image.shape for image in chunk], self.img_size)
                )
                crop = (window.y0, window.y1, window.x0, window.x1)
                batch, geometry = letterbox_batch(chunk, self.img_size, crop)
            if sizes is not None:
                geometry[:, :2] = sizes[start : start + self.chunk]
            t1 = time.perf_counter()
            raw = self.backend.infer(batch) if band is None else self.backend.infer(batch, window)
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
        self, blobs: Sequence[bytes | bytearray | memoryview], timings: dict | None = None
    ) -> list[Detection | ImageError]:
        """Image bytes -> Detection per image, or the ImageError that image raised."""
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
        for k, detection in zip(slots, self.detect_images(images, timings, sizes)):
            results[k] = detection
        return results

    def detect(
        self,
        blobs: Sequence[bytes | bytearray | memoryview],
        timings: dict | None = None,
        threads: int = 1,
    ) -> list[list[dict] | ImageError]:
        """Image bytes -> the JSON face list per image, or the ImageError for a bad one.

        `threads` > 1 cuts the batch into that many parts run side by side: decoding and the
        backend release the GIL, so a worker with idle cores beside it finishes sooner.
        """
        if threads > 1 and len(blobs) > 1:
            return self._detect_split(blobs, timings, min(threads, len(blobs)))
        results = self.detect_raw(blobs, timings)
        t0 = time.perf_counter()
        out = [r if isinstance(r, ImageError) else r.to_json() for r in results]
        if timings is not None:
            timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t0
        return out

    def _detect_split(
        self, blobs: Sequence[bytes | bytearray | memoryview], timings: dict | None, parts: int
    ) -> list[list[dict] | ImageError]:
        if self._pool_size < parts - 1:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="detect")
            self._pool_size = parts - 1
        assert self._pool is not None
        bounds = np.linspace(0, len(blobs), parts + 1).round().astype(int)
        part_timings: list[dict] = [{} for _ in range(parts)]
        futures = [
            self._pool.submit(self.detect, blobs[a:b], t)
            for a, b, t in zip(bounds[1:-1], bounds[2:], part_timings[1:])
        ]
        # The first part runs on the calling thread: one hand-off fewer.
        out = self.detect(blobs[bounds[0] : bounds[1]], part_timings[0])
        for future in futures:
            out.extend(future.result())
        if timings is not None:
            for part in part_timings:
                for stage, seconds in part.items():
                    timings[stage] = timings.get(stage, 0.0) + seconds
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
