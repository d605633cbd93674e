"""Shared fixtures: the shared assets (weights, images, goldens) and one detector per backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yolov5face.paths import shared_dir

ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    path = shared_dir()
    if path is None or not path.is_dir():
        pytest.fail(
            "shared assets not found: set YOLOV5FACE_DATA to the shared/ folder "
            "(images, golden, widerface) — see README.md"
        )
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _shared()


@pytest.fixture(scope="session")
def weights() -> Path:
    env = os.environ.get("YOLOV5FACE_WEIGHTS")
    path = Path(env) if env else _shared() / "weights" / "yolov5n-0.5.pt"
    if not path.is_file():
        pytest.fail(f"weights not found at {path}: set YOLOV5FACE_WEIGHTS (see weights/README.md)")
    return path


@pytest.fixture(scope="session")
def images(shared: Path) -> Path:
    return shared / "images"


@pytest.fixture(scope="session")
def crowd(images: Path) -> bytes:
    """A 2000 x 2000 JPEG of 400 faces (head.jpg tiled 20 x 20): a crowd, to the model."""
    import cv2
    import numpy as np

    head = cv2.imread(str(images / "head.jpg"))
    tile = cv2.resize(head, (100, 100), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", np.tile(tile, (20, 20, 1)))[1].tobytes()


@pytest.fixture(scope="session")
def golden_names(shared: Path) -> list[str]:
    names = sorted(p.name[: -len(".json")] for p in (shared / "golden" / "seed320").glob("*.json"))
    assert names, "no golden files found"
    return names


@pytest.fixture(scope="session")
def golden_dir(shared: Path) -> Path:
    """The independent reference answers (rule: shared/golden/README.md)."""
    return shared / "golden" / "seed320"


@pytest.fixture(scope="session")
def goldens(golden_dir: Path, golden_names: list[str]) -> dict[str, list[dict]]:
    """Image name -> the reference server's answer, read as JSON (key order kept)."""
    return {n: json.loads((golden_dir / f"{n}.json").read_text()) for n in golden_names}


@pytest.fixture(scope="session")
def onnx_model(weights: Path, tmp_path_factory) -> Path:
    from yolov5face.convert.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(weights, out, img_size=320)
    return out


@pytest.fixture(scope="session")
def detectors(weights: Path, onnx_model: Path) -> dict:
    """One Detector per CPU backend (every CPU backend must meet the golden parity)."""
    from yolov5face.pipeline.detector import Detector

    return {
        "torch": Detector(weights, backend="torch", threads=2),
        "onnxruntime": Detector(onnx_model, backend="onnxruntime", threads=2),
    }


@pytest.fixture(scope="session")
def detector(detectors: dict):
    return detectors["onnxruntime"]
