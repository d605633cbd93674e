"""The load loop of `yolov5face qps`: N send -> await loops per level, bounded, counted."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from yolov5face.tools.qps.verify import Image, Verifier

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUESTS = 1_000_000
EXCEPTION = "exception"

Sender = Callable[[bytes], Awaitable[tuple[int | str, Any]]]
SenderFactory = Callable[[], Sender]
T = TypeVar("T")


@dataclass
class LevelResult:
    """Raw measurements of one concurrency level."""

    concurrency: int
    elapsed: float = 0.0
    cpu: float = 0.0
    requests: int = 0
    ok: int = 0
    bytes_sent: int = 0
    mismatches: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: qps over answered requests, latency percentiles in ms."""
        lat = np.asarray(self.latencies, dtype=np.float64) * 1e3
        pct: list[float | None] = [None, None, None, None]
        if lat.size:
            pct = [round(float(v), 3) for v in (*np.percentile(lat, [50, 90, 99]), lat.max())]
        return {
            "concurrency": self.concurrency,
            "qps": round(lat.size / self.elapsed, 3) if self.elapsed > 0 else 0.0,
            "p50_ms": pct[0],
            "p90_ms": pct[1],
            "p99_ms": pct[2],
            "max_ms": pct[3],
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "bytes_sent": self.bytes_sent,
            "mismatches": self.mismatches,
            "elapsed_s": round(self.elapsed, 3),
            "client_cpu_s": round(self.cpu, 3),
        }


async def run_level(
    new_sender: SenderFactory,
    images: Sequence[Image],
    concurrency: int,
    *,
    duration: float,
    max_requests: int,
    warmup: float = 0.0,
    timeout: float = 30.0,
    verifier: Verifier | None = None,
    progress: bool = False,
) -> LevelResult:
    """Run `concurrency` send->await loops: `warmup` s uncounted, then counted until a bound.

    Each loop gets its own sender from `new_sender()`; a request counts when it starts after the
    warmup, and no request starts after the deadline or once `max_requests` have started.
    """
    res = LevelResult(concurrency)
    latencies, errors = res.latencies, res.errors
    n = len(images)
    perf = time.perf_counter
    measure = perf() + warmup
    deadline = measure + duration
    started = 0
    index = 0

    async def worker() -> None:
        nonlocal started, index
        send = new_sender()
        while True:
            t0 = perf()
            if t0 >= deadline:
                return
            counted = t0 >= measure
            if counted:
                if started >= max_requests:
                    return
                started += 1
            key, blob = images[index % n]
            index += 1
            try:
                status, payload = await send(blob)
            except Exception as exc:  # noqa: BLE001 - connection errors and timeouts are counted
                if counted:
                    res.requests += 1
                    res.bytes_sent += len(blob)
                    errors[EXCEPTION] += 1
                    log.debug("request failed: %r", exc)
                continue
            dt = perf() - t0
            if not counted:
                continue
            res.requests += 1
            res.bytes_sent += len(blob)
            latencies.append(dt)
            if status == 200:
                res.ok += 1
                if verifier is not None and not verifier.check(key, payload):
                    res.mismatches += 1
            else:
                errors[str(status)] += 1

    bar = _progress_bar(concurrency, max_requests) if progress else None
    ticker = asyncio.create_task(_tick(bar, res)) if bar is not None else None
    cpu0 = [time.process_time()]
    mark = asyncio.get_running_loop().call_later(warmup, lambda: cpu0.append(time.process_time()))
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        # Hard stop: in-flight requests get `timeout` (+ slack) after the deadline, no more.
        await asyncio.wait_for(asyncio.gather(*tasks), warmup + duration + timeout + 5.0)
    except asyncio.TimeoutError:  # builtin TimeoutError only from Python 3.11 on
        log.warning("concurrency %d: cut off requests still running past the deadline", concurrency)
    finally:
        res.elapsed = max(perf() - measure, 1e-9)
        res.cpu = time.process_time() - cpu0[-1]  # this process (all threads), counted window
        mark.cancel()
        if ticker is not None and bar is not None:
            ticker.cancel()
            bar.update(res.requests - bar.n)
            bar.close()
    return res


def _progress_bar(concurrency: int, max_requests: int) -> Any:
    """tqdm bar on stderr, silent when stderr is not a terminal."""
    from tqdm import tqdm

    total = max_requests if max_requests < DEFAULT_MAX_REQUESTS else None
    return tqdm(
        total=total,
        desc=f"c={concurrency}",
        unit="req",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )


async def _tick(bar: Any, res: LevelResult) -> None:
    """Refresh the bar a few times a second so workers never touch it."""
    while True:
        await asyncio.sleep(0.25)
        bar.update(res.requests - bar.n)
        bar.set_postfix(err=sum(res.errors.values()), mis=res.mismatches, refresh=False)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
