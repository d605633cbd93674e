"""Conversion, run once before serving: checkpoint -> ONNX (`onnx.py`), the banded CPU model
(`band.py`), TensorRT engines (`tensorrt.py`) and their cache (`engine_cache.py`)."""
