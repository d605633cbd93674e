"""Answers checked by `yolov5face qps --verify[-golden]`: expected faces per image, the check."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Faces = list[dict[str, Any]]
Image = tuple[str, bytes]  # (name, encoded image)
Detect = Callable[[list[bytes]], list[Any]]
Match = Callable[[Faces, Faces], bool]


class Verifier:
    """Compares answers for an image with its expected faces (images without one pass)."""

    def __init__(self, expected: dict[str, Faces], match: Match) -> None:
        self.expected = expected
        self.match = match
        self._good: dict[str, bytes] = {}

    def check(self, key: str, payload: Any) -> bool:
        """True when `payload` (JSON bytes or a face list) matches what `key` should give."""
        want = self.expected.get(key)
        if want is None:
            return True
        raw = isinstance(payload, bytes | bytearray)
        if raw and payload == self._good.get(key):
            return True
        try:
            faces = json.loads(payload) if raw else payload
            good = isinstance(faces, list) and bool(self.match(want, faces))
        except Exception:  # noqa: BLE001 - any undecodable answer is a mismatch
            good = False
        if good and raw:
            self._good[key] = bytes(payload)
        return good


def compute_expected(detect: Detect, images: Sequence[Image]) -> dict[str, Faces]:
    """Expected faces per image from the in-process detector (failing images are left out)."""
    expected: dict[str, Faces] = {}
    for key, blob in images:
        out = detect([blob])[0]
        if isinstance(out, BaseException):
            log.warning("detector failed on %s (%s); its answers are not verified", key, out)
        else:
            expected[key] = out
    return expected


def load_golden(folder: str | Path, images: Sequence[Image]) -> dict[str, Faces]:
    """Expected faces per image from `<folder>/<image file name>.json` (independent reference).

    Images without a golden file are left out (not verified, with a warning); raises
    ValueError when the folder is missing, a file is not a JSON list, or no image has one.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"no such golden folder: {folder}")
    expected: dict[str, Faces] = {}
    for key, _ in images:
        path = root / f"{Path(key).name}.json"
        if not path.is_file():
            log.warning("no golden answer %s; answers for %s are not verified", path, key)
            continue
        try:
            faces = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable golden file {path}: {exc}") from None
        if not isinstance(faces, list):
            raise ValueError(f"golden file {path} is not a JSON list of faces")
        expected[key] = faces
    if not expected:
        raise ValueError(f"none of the images has a golden answer in {folder}")
    return expected
