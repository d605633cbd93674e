"""ONNX Runtime standing in for TensorRT where the engine build step needs a GPU (tests only).

The "engine" it builds is ONNX Runtime's optimised form of the uint8-input model: real work by
a real runtime, written through the same cache, key and lock as a TensorRT engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from yolov5face.convert.tensorrt import BuildTarget

TARGET = BuildTarget("onnxruntime-standin", "host CPU", "0.0")


def build_with_onnxruntime(onnx_path: Path, out: Path, profile: tuple, fp16: bool) -> None:
    """Write ONNX Runtime's optimised uint8-input model of `onnx_path` to `out`."""
    import onnxruntime as ort

    from yolov5face.convert.uint8_input import write_uint8_model

    u8 = write_uint8_model(onnx_path, out.with_name(out.name + ".u8.onnx"))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(str(u8), options, providers=["CPUExecutionProvider"])
    u8.unlink()


if __name__ == "__main__":  # python tests/engine_standin.py ONNX CACHE BATCH: one pre-start step
    import json
    import os

    from yolov5face.convert.tensorrt import prepare_engine

    path, _ = prepare_engine(
        sys.argv[1],
        int(sys.argv[3]),
        cache_dir=sys.argv[2],
        target=TARGET,
        builder=build_with_onnxruntime,
    )
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"engine": str(path), "built_here": meta["built_by_pid"] == os.getpid()}))
