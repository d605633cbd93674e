"""Cut a worker's batch across CPU cores that no other worker is using right now.

TorchServe hands a worker every queued request up to the batch size, so a burst can land on one
worker while the other idles. Decoding and ONNX Runtime release the GIL, so the parts of a batch
run side by side on threads; the busy board tells how many cores are free at this moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from yolov5face.pipeline.decode import ImageError
from yolov5face.pipeline.detector import Detector, warmup_image
from yolov5face.pipeline.options import Options
from yolov5face.serving.busy_board import BusyBoard

Blob = bytes | bytearray | memoryview


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of `parts` near-equal consecutive slices of n items (none empty)."""
    parts = max(1, min(parts, n))
    edges = np.linspace(0, n, parts + 1).round().astype(int).tolist()
    return list(zip(edges[:-1], edges[1:]))


class BatchSplitter:
    """Runs `Detector.detect` on parts of a batch in parallel, as many as cores are free."""

    def __init__(self, detector: Detector, board_dir: Path, cores: int):
        self.detector = detector
        self.board = BusyBoard(board_dir)
        self.cores = cores
        # The calling thread runs the first part: one hand-off fewer.
        self._pool = ThreadPoolExecutor(max(1, cores - 1), thread_name_prefix="detect")

    def detect(
        self,
        blobs: Sequence[Blob],
        timings: dict | None = None,
        options: Sequence[Options] | None = None,
    ) -> tuple[list[list[dict] | ImageError], int]:
        """Answers in request order, and the number of parts the batch ran in."""
        with self.board.busy():
            parts = min(len(blobs), max(1, self.cores - self.board.others_busy()))
            return self.detect_parts(blobs, parts, timings, options), parts

    def detect_parts(
        self,
        blobs: Sequence[Blob],
        parts: int,
        timings: dict | None = None,
        options: Sequence[Options] | None = None,
    ) -> list[list[dict] | ImageError]:
        """Answers in request order, computed in `parts` slices on parallel threads.

        `options`: one per blob (yolov5face/pipeline/options.py), or None for the default.
        """
        bounds = split_bounds(len(blobs), min(parts, self.cores))
        if len(bounds) <= 1:
            return self.detector.detect(blobs, timings, options)

        def part(a: int, b: int) -> list[Options] | None:
            return None if options is None else list(options[a:b])

        part_timings: list[dict] = [{} for _ in bounds]
        futures = [
            self._pool.submit(self.detector.detect, blobs[a:b], t, part(a, b))
            for (a, b), t in zip(bounds[1:], part_timings[1:])
        ]
        a, b = bounds[0]
        out = self.detector.detect(blobs[a:b], part_timings[0], part(a, b))
        for future in futures:
            out.extend(future.result())
        if timings is not None:
            for part in part_timings:
                for stage, seconds in part.items():
                    timings[stage] = timings.get(stage, 0.0) + seconds
        return out

    def warmup(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the split path once per batch size, so its threads and buffers exist."""
        sample = warmup_image()
        for n in batch_sizes:
            if n > 1:
                self.detect_parts([sample] * n, self.cores)
