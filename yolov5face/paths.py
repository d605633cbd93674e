"""Where weights, shared data and caches live, from the environment or sensible defaults."""

from __future__ import annotations

import os
from pathlib import Path

from yolov5face import settings

DEFAULT_WEIGHTS_NAME = "yolov5n-0.5.pt"


def checkout_root() -> Path | None:
    """The source checkout this package runs from (None for an installed package)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


class WeightsNotFound(FileNotFoundError):
    """No weights file could be located."""


def shared_dir() -> Path | None:
    """`$YOLOV5FACE_DATA`, else `../shared` beside the repository when it exists."""
    env = settings.path("YOLOV5FACE_DATA")
    if env is not None:
        return env
    root = checkout_root()
    candidate = root.parent / "shared" if root is not None else None
    return candidate if candidate is not None and candidate.is_dir() else None


def default_weights() -> Path:
    """`$YOLOV5FACE_WEIGHTS`, else weights/yolov5n-0.5.pt, else the shared copy, else an error."""
    env = settings.path("YOLOV5FACE_WEIGHTS")
    if env is not None:
        path = env
        if path.is_dir():
            path = path / DEFAULT_WEIGHTS_NAME
        if not path.is_file():
            raise WeightsNotFound(f"YOLOV5FACE_WEIGHTS points to {env}, which does not exist")
        return path
    candidates = [Path("weights") / DEFAULT_WEIGHTS_NAME]
    root = checkout_root()
    if root is not None:
        candidates.append(root / "weights" / DEFAULT_WEIGHTS_NAME)
    shared = shared_dir()
    if shared is not None:
        candidates.append(shared / "weights" / DEFAULT_WEIGHTS_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFound(
        f"no weights found: set YOLOV5FACE_WEIGHTS to a checkpoint, pass --weights, or run "
        f"`bash weights/fetch.sh` to download {DEFAULT_WEIGHTS_NAME} (see weights/README.md)"
    )


def cache_dir() -> Path:
    """`$YOLOV5FACE_CACHE`, else ~/.cache/yolov5face."""
    cache = settings.path("YOLOV5FACE_CACHE")
    assert cache is not None  # the table has a default
    return cache


def write_atomically(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `target`, then rename: readers never see half a file."""
    import tempfile

    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
