"""Build `model-store/fd1.mar`: exported ONNX + handler + model config, rebuilt only on change."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from yolov5face import settings

logger = logging.getLogger(__name__)

MODEL_NAME = "fd1"
SERVING = Path(__file__).resolve().parent
PACKAGE = SERVING.parent
HANDLER = SERVING / "handler.py"
MODEL_CONFIG = SERVING / "config" / "model-config.yaml"
# What shapes the served model or the handler: every module of these parts of the package.
_SERVED_PARTS = ("pipeline", "model", "backends", "convert", "serving")
_ENV_OVERRIDES = {
    "YOLOV5FACE_WORKERS": ("minWorkers", "maxWorkers"),
    "YOLOV5FACE_BATCH_SIZE": ("batchSize",),
    "YOLOV5FACE_MAX_BATCH_DELAY": ("maxBatchDelay",),
}


def model_config(base: Path = MODEL_CONFIG) -> dict:
    """The per-model config with environment overrides applied."""
    import yaml

    config = yaml.safe_load(base.read_text())
    for name, keys in _ENV_OVERRIDES.items():
        value = settings.integer(name)
        if value is not None:
            for key in keys:
                config[key] = value
    return config


def served_sources(package: Path = PACKAGE) -> list[Path]:
    """The files of `package` (this installed one by default) the archive depends on.

    Every module of the served parts (the handler, the request path, the model and its
    export), the top-level modules they import, and the serving config.
    """
    files = [package / name for name in ("__init__.py", "paths.py", "settings.py")]
    for part in _SERVED_PARTS:
        files += (package / part).rglob("*.py")
    files += (package / "serving" / "config").glob("*")
    return sorted(f for f in files if f.is_file())


def _inputs_digest(weights_sha: str, img_size: int, config: dict, package: Path = PACKAGE) -> str:
    digest = hashlib.sha256()
    for part in (weights_sha, str(img_size), json.dumps(config, sort_keys=True)):
        digest.update(part.encode() + b"\0")
    for source in served_sources(package):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(source.read_bytes())
    return digest.hexdigest()


def python_tool(module: str, script: str) -> list[str]:
    """Run `module` with this interpreter when it can import it, else the `script` on PATH.

    TorchServe starts its workers with the Python that runs it: running it with this one makes
    the workers import the same yolov5face (and dependencies) that built and launch the archive,
    whatever other environment's `torchserve` comes first on PATH.
    """
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        return [sys.executable, "-m", module]
    return [shutil.which(script) or str(Path(sys.executable).parent / script)]


def build_archive(
    weights: str | os.PathLike,
    model_store: str | os.PathLike = "model-store",
    img_size: int = 320,
    force: bool = False,
) -> Path:
    """Build (or reuse) `<model_store>/fd1.mar`; returns its path."""
    import yaml

    from yolov5face.model.checkpoint import sha256_file

    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)
    target = store / f"{MODEL_NAME}.mar"
    stamp = store / f"{MODEL_NAME}.mar.inputs"
    config = model_config()
    digest = _inputs_digest(sha256_file(weights), img_size, config)
    if not force and target.is_file() and stamp.is_file() and stamp.read_text() == digest:
        logger.info("%s is up to date", target)
        return target
    archiver = python_tool("model_archiver.model_packaging", "torch-model-archiver")
    with tempfile.TemporaryDirectory(prefix=".fd1-build-", dir=store) as tmp:
        from yolov5face.backends.band import band_path
        from yolov5face.convert.onnx import export_onnx

        onnx_path = Path(tmp) / f"{MODEL_NAME}.onnx"
        export_onnx(weights, onnx_path, img_size=img_size)
        extra = [str(p) for p in [band_path(onnx_path)] if p.exists()]  # the banded CPU model
        config_path = Path(tmp) / "model-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        cmd = [
            *archiver,
            "--model-name",
            MODEL_NAME,
            "--version",
            "1.0",
            "--handler",
            str(HANDLER),
            "--serialized-file",
            str(onnx_path),
            "--config-file",
            str(config_path),
            *(["--extra-files", ",".join(extra)] if extra else []),
            "--export-path",
            str(out_dir),
            "--force",
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(out_dir / f"{MODEL_NAME}.mar", target)  # atomic within one filesystem
    stamp.write_text(digest)
    logger.info("built %s", target)
    return target
