"""The reference design, one image at a time: the baseline that `yolov5face bench` measures.

This is how the original project's TorchServe handler does the job, written from its
description: per image, `cv2.imdecode` -> letterbox (same resize/pad rule) -> torch tensor ->
eager fp32 model with un-fused BatchNorm -> sigmoid over every anchor and grid arithmetic in
torch -> threshold -> greedy NMS loop in torch -> ratios and the JSON face list built with
per-face Python loops. Naive but reasonable; it gives the same faces as `Detector`
(tests/test_bench.py checks that), so the comparison is fair.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

PAD_VALUE = 128
STAGES = ("decode", "preprocess", "infer", "postprocess")


def greedy_nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """Indices kept by greedy NMS (torch loop); suppress when IoU > threshold, no +1 in areas."""
    import torch

    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[rest], x2[i]) - torch.maximum(x1[rest], x1[i])).clamp(min=0)
        h = (torch.minimum(y2[rest], y2[i]) - torch.maximum(y1[rest], y1[i])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.long)


class ReferencePipeline:
    """Image bytes -> JSON face list, one image at a time, the reference handler's way."""

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        img_size: int = 320,
        conf: float = 0.3,
        iou: float = 0.5,
        threads: int | None = None,
    ):
        import torch

        from yolov5face.model.checkpoint import load_model
        from yolov5face.paths import default_weights

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.model = load_model(weights if weights is not None else default_weights(), fuse=False)
        self.img_size, self.conf, self.iou = img_size, conf, iou
        self.strides = tuple(int(s) for s in self.model.strides)
        self.anchors = self.model.anchors.clone()  # (levels, anchors, 2) in pixels
        self._grids: dict[int, Any] = {}

    def read_image(self, data: bytes) -> np.ndarray:
        """Decode the bytes with OpenCV (BGR uint8)."""
        import cv2

        if not data:
            raise ValueError("empty request body")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("cannot decode the request body as an image")
        return image

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Resize (long side to img_size, short side floored to even) and pad with 128."""
        import cv2

        size = self.img_size
        h0, w0 = image.shape[:2]
        h1, w1 = h0, w0
        if max(h0, w0) > size:
            if h0 > w0:
                h1, w1 = size, max(int(w0 * (size / h0) // 2 * 2), 1)
            else:
                h1, w1 = max(int(h0 * (size / w0) // 2 * 2), 1), size
            image = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_LINEAR)
        padw, padh = (size - w1) // 2, (size - h1) // 2
        canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
        canvas[padh : padh + h1, padw : padw + w1] = image
        return canvas, (w1, h1, padw, padh)

    def to_tensor(self, canvas: np.ndarray) -> Any:
        """BGR HWC uint8 -> RGB (1, 3, S, S) float32 in [0, 1]."""
        chw = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))
        return (self._torch.from_numpy(chw).float() / 255.0).unsqueeze(0)

    def forward(self, x: Any) -> Any:
        """Eager fp32 forward: raw (1, N, 16) predictions."""
        with self._torch.no_grad():
            return self.model(x)

    def _grid(self, n: int) -> Any:
        """(n, n, 2) cell offsets (x, y), built once per grid size like the reference does."""
        if n not in self._grids:
            torch = self._torch
            yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            self._grids[n] = torch.stack((xv, yv), 2).float()
        return self._grids[n]

    def decode_heads(self, pred: Any) -> Any:
        """Raw (N, 16) -> (N, 15): cx, cy, w, h, score, 10 landmark coords, over all anchors."""
        torch = self._torch
        out, start = [], 0
        na = self.anchors.shape[1]
        for level, stride in enumerate(self.strides):
            n = self.img_size // stride
            p = pred[start : start + na * n * n].view(na, n, n, 16)
            start += na * n * n
            grid = self._grid(n)
            anchor = self.anchors[level].view(na, 1, 1, 2)
            y = p.sigmoid()
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * stride
            wh = (y[..., 2:4] * 2.0) ** 2 * anchor
            score = (y[..., 4] * y[..., 15]).unsqueeze(-1)
            marks = p[..., 5:15].view(na, n, n, 5, 2) * anchor.unsqueeze(3) + (
                grid * stride
            ).unsqueeze(2)
            out.append(torch.cat((xy, wh, score, marks.flatten(3)), -1).view(-1, 15))
        return torch.cat(out, 0)

    def postprocess(self, pred: Any, geometry: tuple[int, int, int, int]) -> list[dict]:
        """Raw (N, 16) of one image -> the JSON face list (threshold, NMS, per-face loops)."""
        torch = self._torch
        det = self.decode_heads(pred)
        det = det[det[:, 4] > self.conf]
        if det.shape[0] == 0:
            return []
        boxes = torch.cat((det[:, 0:2] - det[:, 2:4] / 2, det[:, 0:2] + det[:, 2:4] / 2), 1)
        keep = greedy_nms(boxes, det[:, 4], self.iou)
        w1, h1, padw, padh = geometry
        faces = []
        for k in keep.tolist():
            x1, y1, x2, y2 = boxes[k].tolist()
            x1, x2 = (x1 - padw) / w1, (x2 - padw) / w1
            y1, y2 = (y1 - padh) / h1, (y2 - padh) / h1
            xywh = [round((x1 + x2) / 2, 3), round((y1 + y2) / 2, 3)]
            xywh += [round(x2 - x1, 3), round(y2 - y1, 3)]
            landmarks = []
            coords = det[k, 5:15].tolist()
            for j in range(5):
                landmarks.append(round((coords[2 * j] - padw) / w1, 3))
                landmarks.append(round((coords[2 * j + 1] - padh) / h1, 3))
            faces.append(
                {"xywh_ratio": xywh, "conf": float(det[k, 4]), "landmarks_ratio": landmarks}
            )
        return faces

    def detect_one(self, data: bytes, timings: dict | None = None) -> list[dict]:
        """One image's bytes -> its JSON face list; `timings` accumulates seconds per stage."""
        t0 = time.perf_counter()
        image = self.read_image(data)
        t1 = time.perf_counter()
        canvas, geometry = self.letterbox(image)
        x = self.to_tensor(canvas)
        t2 = time.perf_counter()
        pred = self.forward(x)[0]
        t3 = time.perf_counter()
        faces = self.postprocess(pred, geometry)
        t4 = time.perf_counter()
        if timings is not None:
            for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                timings[stage] = timings.get(stage, 0.0) + dt
        return faces

    def detect(self, blobs: list[bytes], timings: dict | None = None) -> list[list[dict]]:
        """Several images, still one at a time (the reference has no batching)."""
        return [self.detect_one(blob, timings) for blob in blobs]
