"""What every lab bench shares: timing in interleaved slices, tables, images, the targets."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MB = 1024.0 * 1024.0
TARGETS_FILE = Path(__file__).with_name("targets.json")


def resolve_image(name: str | os.PathLike) -> Path:
    """A path as given when it exists, else the file of that name in the shared images."""
    from yolov5face.paths import shared_dir

    path = Path(name)
    if path.is_file():
        return path
    shared = shared_dir()
    if shared is not None and (shared / "images" / path.name).is_file():
        return shared / "images" / path.name
    raise FileNotFoundError(f"image not found: {name} (nor in $YOLOV5FACE_DATA/images)")


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm progress bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False)


def fmt_cell(value: Any, digits: int = 1) -> str:
    """A table cell: floats with `digits` decimals (more below 10, for small timings)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) < 10:
            digits = max(digits, 3 if abs(value) < 0.1 else 2)
        return f"{value:.{digits}f}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned plain-text table."""
    cells = [list(header)] + [
        [fmt_cell(v) if not isinstance(v, str) else v for v in r] for r in rows
    ]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in cells)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(fmt_cell(v) for v in r) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """A figure a measurement is checked against, from targets.json."""

    value: float
    higher: bool  # True: the measurement must reach the value; False: stay within it
    unit: str  # "x" (a ratio), "%" (a ratio shown in percent), "ms" or "MB"
    what: str = ""

    @property
    def label(self) -> str:
        """`>= 2.5x`, `<= 150 MB`, `>= 80%`."""
        if self.unit == "%":
            shown = f"{self.value * 100:g}%"
        else:
            shown = f"{self.value:g}" + ("x" if self.unit == "x" else f" {self.unit}")
        return f"{'>=' if self.higher else '<='} {shown}"

    def met(self, measured: float | None) -> bool | None:
        """Whether a measurement meets the target (None when not measured)."""
        if measured is None:
            return None
        return measured >= self.value if self.higher else measured <= self.value


@cache
def targets() -> dict[str, Target]:
    """The targets the report checks, by name (targets.json beside this module)."""
    data = json.loads(TARGETS_FILE.read_text())
    return {name: Target(**spec) for name, spec in data["targets"].items()}


def target(name: str) -> Target:
    """One target by name."""
    return targets()[name]


@dataclass
class Case:
    """One thing to time: `fn` runs once per call; `setup` runs before each time slice."""

    name: str
    fn: Callable[[], Any]
    setup: Callable[[], None] | None = None
    timings: dict | None = None  # stage timings the fn accumulates; cleared after warm-up


def timed_rounds(
    cases: Sequence[Case], seconds: float, rounds: int = 5, warmup: int = 2, desc: str = "bench"
) -> dict[str, list[float]]:
    """Per-call durations of each case, timed in interleaved slices so noise hits all alike.

    Each case gets `seconds` in total, split into `rounds` slices taken in turn with the other
    cases (at least one call per slice), after `warmup` untimed calls.
    """
    perf = time.perf_counter
    for case in cases:
        if case.setup is not None:
            case.setup()
        for _ in range(warmup):
            case.fn()
        if case.timings is not None:
            case.timings.clear()
    durations: dict[str, list[float]] = {c.name: [] for c in cases}
    slice_s = seconds / max(rounds, 1)
    bar = progress_bar(len(cases) * rounds, desc)
    try:
        for _ in range(rounds):
            for case in cases:
                if case.setup is not None:
                    case.setup()
                end = perf() + slice_s
                while True:
                    t0 = perf()
                    case.fn()
                    t1 = perf()
                    durations[case.name].append(t1 - t0)
                    if t1 >= end:
                        break
                bar.update()
    finally:
        bar.close()
    return durations


def torch_threads_keeper() -> Callable[[], None]:
    """A function that puts torch's (process-global) thread count back as it is now."""
    import torch

    threads = torch.get_num_threads()
    return lambda: torch.set_num_threads(threads)


def child_command(module: str, function: str, *args: str) -> list[str]:
    """`python -c` running `function(argv)` of `module`, a lab child entry point."""
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]
