"""The request path, one image's bytes to its JSON faces, in reading order.

1. `decode.py`: bytes -> BGR pixels (libjpeg-turbo for JPEG, OpenCV otherwise), with the size
   and pixel-count checks that turn a bad upload into its own 400 (`ImageError`).
2. `letterbox.py`: resize the long side to the model's input size and pad to a square canvas
   (the serving convention's exact rounding), batched, as float32 RGB planes.
3. A backend runs the network (`yolov5face.backends`: ONNX Runtime on the CPU, TensorRT on a
   GPU); a backend with a banded model asks, through `input_window`, only for the canvas rows or
   columns the content can change.
4. `heads.py`: decode the three detection heads into boxes, scores and landmarks above the
   score threshold, then `nms.py` keeps the best of overlapping boxes.
5. `heads.py` `to_json_faces`: map back to ratios of the original image, the response body.

`detector.py`'s `Detector` runs these steps for a batch; the CLI, the TorchServe handler, the
benchmarks, the evaluation and the tests all use it.
"""

from yolov5face.pipeline.detector import Detection, Detector

__all__ = ["Detection", "Detector"]
