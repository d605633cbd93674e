"""Variants of ours side by side: TorchServe batch size, with and without splitting, banded or
plain model."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolov5face.lab.load_levels import interleaved_rounds, median_levels
from yolov5face.lab.servers import build_ours_archive, start_ours
from yolov5face.serving.launcher import ServerProcess

_VARIANT = re.compile(r"^b(\d+)(\+split)?(\+plain)?$")


@dataclass(frozen=True)
class Variant:
    """One server configuration: TorchServe batch size, whether batches are split, and whether
    the plain model runs instead of the banded one (yolov5face/backends/band.py)."""

    batch: int
    split: bool
    plain: bool = False

    @property
    def name(self) -> str:
        """The variant as written on the command line (`b4+split`, `b2+split+plain`)."""
        return (
            f"b{self.batch}" + ("+split" if self.split else "") + ("+plain" if self.plain else "")
        )

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`b<batch>`, then optionally `+split`, then optionally `+plain`."""
        match = _VARIANT.match(text.strip())
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"not a variant: {text!r} (expected e.g. b2, b4+split, b2+plain)")
        return cls(int(match.group(1)), bool(match.group(2)), bool(match.group(3)))

    def env(self, delay_ms: int) -> dict[str, str]:
        """The environment that gives `yolov5face archive` / `serve` this configuration."""
        return {
            "YOLOV5FACE_BATCH_SIZE": str(self.batch),
            "YOLOV5FACE_MAX_BATCH_DELAY": str(delay_ms),
            "YOLOV5FACE_SPLIT_BATCHES": "1" if self.split else "0",
            "YOLOV5FACE_BAND": "0" if self.plain else "1",
        }


def bench_batching(
    weights: Path,
    image: Path,
    variants: Sequence[Variant],
    levels: Sequence[int] = (2, 4, 8, 16, 24),
    duration: float = 5.0,
    warmup: float = 1.0,
    rounds: int = 3,
    delay_ms: int = 1,
    workers: int = 2,
    server_warmup: float = 20.0,
    ready_timeout: float = 300.0,
) -> dict:
    """One `yolov5face serve` per variant, all running; levels interleaved across them."""
    blob = image.read_bytes()
    images = [(image.name, blob)]
    result: dict[str, Any] = {
        "image": image.name,
        "levels": list(levels),
        "duration_s": duration,
        "warmup_s": warmup,
        "rounds": rounds,
        "max_batch_delay_ms": delay_ms,
        "workers": workers,
        "server_warmup_s": server_warmup,
    }
    running: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="yolov5face-batching-") as tmp:
        root = Path(tmp)
        try:
            for k, variant in enumerate(variants):
                env = variant.env(delay_ms)
                store = root / f"v{k}" / "model-store"
                build_ours_archive(weights, store, workers, extra_env=env)
                running[variant.name] = start_ours(root / f"v{k}", weights, store, workers, env)
            urls = {}
            for name, server in running.items():
                server.wait_workers("fd1", workers, ready_timeout)
                urls[name] = f"{server.http}/predictions/fd1"
            by_round = interleaved_rounds(
                running, urls, images, levels, duration, warmup, rounds, server_warmup
            )
        finally:
            for server in running.values():
                server.stop()
    result["variants"] = {
        name: {"rounds": by_round[name], "levels": median_levels(by_round[name])} for name in urls
    }
    return result


def batching_rows(result: dict) -> list[list[Any]]:
    """variant, concurrency, QPS, QPS by round, p50, p99, server CPU ms per request."""
    rows = []
    for name, data in result["variants"].items():
        for lv in data["levels"]:
            cpu = lv.get("server_cpu_ms_per_request") or {}
            rows.append(
                [
                    name,
                    lv["concurrency"],
                    lv["qps"],
                    " / ".join(f"{q:.0f}" for q in lv["qps_by_round"]),
                    lv["p50_ms"],
                    lv["p99_ms"],
                    round(sum(cpu.values()), 2) if cpu else None,
                ]
            )
    return rows


HEADER = ["variant", "concurrency", "QPS", "QPS by round", "p50 ms", "p99 ms", "CPU ms/req"]
