"""Reference-design TorchServe handler (the `bench server` baseline): torch eager, per image.

Packed by `yolov5face bench server` into its own archive with the checkpoint as serialized file
and 4 workers, batch 1. Not the production handler: see yolov5face/serving/handler.py for that.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from yolov5face.lab.reference_pipeline import ReferencePipeline

logger = logging.getLogger(__name__)


class ReferenceHandler:
    """Loads the checkpoint at worker start and answers each request on its own."""

    def __init__(self) -> None:
        self.pipeline: ReferencePipeline | None = None

    def initialize(self, context: Any) -> None:
        """Build the torch model from the archived checkpoint."""
        model_dir = Path(context.system_properties["model_dir"])
        weights = model_dir / context.manifest["model"]["serializedFile"]
        self.pipeline = ReferencePipeline(weights)
        logger.info("reference handler ready: %s", weights.name)

    def handle(self, data: list, context: Any) -> list[str]:
        """Each request row -> JSON face list; an undecodable body gets a 400."""
        assert self.pipeline is not None, "handler used before initialize()"
        out = []
        for idx, row in enumerate(data):
            body = (row.get("body") or row.get("data")) if isinstance(row, dict) else row
            context.set_response_content_type(idx, "application/json")
            try:
                out.append(json.dumps(self.pipeline.detect_one(bytes(body or b""))))
            except ValueError as exc:
                context.set_response_status(400, str(exc), idx=idx)
                out.append(json.dumps({"error": str(exc)}))
        return out


_service = ReferenceHandler()


def handle(data: list | None, context: Any) -> list[str] | None:
    """TorchServe entry point (module-level function style)."""
    if _service.pipeline is None:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
