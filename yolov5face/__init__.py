"""yolov5-face detection: library, TorchServe server tools and benchmarks."""

__version__ = "0.1.0"
