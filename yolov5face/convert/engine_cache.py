"""TensorRT engine cache: one engine per (model, size, batch, precision, TensorRT, GPU) key.

An engine only runs on the TensorRT version and GPU that built it, so it is built on the
serving host before TorchServe starts (`yolov5face serve`, the container entrypoint), never at
image build time and never inside a worker; reused afterwards, rebuilt when any key field
changes, and written atomically so a crash mid-build leaves no corrupt engine behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from yolov5face import settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on: change any field and the engine is rebuilt."""

    source_sha256: str  # the exact ONNX file parsed (onnx) or checkpoint converted (torch2trt)
    precision: str  # "fp16" | "fp32"
    profile: tuple[int, int, int]  # batch sizes (min, opt, max) of the optimisation profile
    input_layout: str  # yolov5face/convert/uint8_input.py
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # e.g. "7.5"
    method: str = "onnx"  # "onnx" (TensorRT's ONNX parser) | "torch2trt"
    builder: int = 1  # bumped when the build code changes what it builds from the same inputs

    def digest(self) -> str:
        """Stable short hash of all fields."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def filename(self) -> str:
        """A readable, unique engine file name."""
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu_name).strip("-").lower()
        low, opt, high = self.profile
        return (
            f"{self.source_sha256[:12]}-b{low}-{opt}-{high}-{self.precision}-{self.method}-"
            f"trt{self.tensorrt_version}-{gpu}-sm{self.compute_capability}-"
            f"{self.digest()[:8]}.engine"
        )

    def to_json(self) -> dict:
        """The key as recorded beside its engine (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


class EngineCache:
    """A directory of engines with their keys recorded beside them."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.builds = 0  # engines this object built (a cache hit leaves it alone)

    def path(self, key: EngineKey) -> Path:
        """Where the engine for `key` lives."""
        return self.directory / key.filename()

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for exactly this key, if present and intact."""
        path = self.path(key)
        meta = path.with_suffix(".json")
        if not (path.is_file() and meta.is_file()):
            return None
        try:
            recorded = json.loads(meta.read_text())
        except ValueError:
            return None
        if recorded.get("key") != key.to_json() or recorded.get("size") != path.stat().st_size:
            logger.warning("engine cache entry %s does not match its record: rebuilding", path)
            return None
        return path

    @contextlib.contextmanager
    def _lock(self, key: EngineKey) -> Iterator[None]:
        """Serialise builders of one key across processes (several workers start together)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f".{key.digest()}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_build(self, key: EngineKey, build: Callable[[Path], None]) -> Path:
        """Return the cached engine for `key`, building it with `build(tmp_path)` if needed."""
        found = self.lookup(key)
        if found is not None:
            logger.info("engine cache hit: %s", found)
            return found
        with self._lock(key):
            found = self.lookup(key)  # another worker may have built it while we waited
            if found is not None:
                return found
            target = self.path(key)
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".engine", dir=self.directory)
            os.close(fd)
            try:
                start = time.monotonic()
                logger.warning("building TensorRT engine %s (first start on this GPU)", target.name)
                build(Path(tmp))
                size = os.path.getsize(tmp)
                if size == 0:
                    raise RuntimeError("engine build produced an empty file")
                os.replace(tmp, target)
                self.builds += 1
                meta = {
                    "key": key.to_json(),
                    "size": size,
                    "built_s": round(time.monotonic() - start, 3),
                    "built_by_pid": os.getpid(),
                }
                _atomic_write(target.with_suffix(".json"), json.dumps(meta, indent=1))
                logger.warning("engine built in %.0f s: %s", meta["built_s"], target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return target


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".meta-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """`$YOLOV5FACE_ENGINE_CACHE`, else <cache>/engines."""
    from yolov5face.paths import cache_dir

    return settings.path("YOLOV5FACE_ENGINE_CACHE") or cache_dir() / "engines"
