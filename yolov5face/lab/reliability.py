"""Fault drills against a real server, and the report they make: `yolov5face bench reliability`.

Each drill starts `yolovface serve` (what the container runs) on private ports, puts load on it
and breaks something: a worker SIGKILLed, a worker SIGSTOPped, SIGTERM to the server, a burst of
large uploads; then a soak with memory sampled each minute. Outcomes are counted per request
by kind (200, 4xx, 5xx, connection error) and written to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolov5face.lab.servers import process_memory, server_processes, start_ours
from yolov5face.serving.launcher import ServerProcess


@dataclass
class Tally:
    """Outcomes of the requests of one drill, by kind, with when each was sent."""

    kinds: Counter = field(default_factory=Counter)
    sent: list[tuple[float, str]] = field(default_factory=list)  # (send time, kind)
    latencies: list[float] = field(default_factory=list)

    def add(self, started: float, kind: str) -> None:
        """Count one request that finished now."""
        self.kinds[kind] += 1
        self.sent.append((started, kind))
        self.latencies.append(time.monotonic() - started)

    def failures(self, before: float | None = None) -> int:
        """Requests that did not get a 200 (only those sent before `before`, when given)."""
        return sum(1 for t, k in self.sent if k != "200" and (before is None or t < before))

    def summary(self) -> dict[str, Any]:
        """Counts for the report."""
        ordered = sorted(self.latencies) or [0.0]
        return {
            "requests": sum(self.kinds.values()),
            "by_kind": dict(sorted(self.kinds.items())),
            "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 1),
            "max_ms": round(ordered[-1] * 1e3, 1),
        }


async def _load(url: str, blob: bytes, concurrency: int, stop: asyncio.Event, tally: Tally) -> None:
    """`concurrency` clients PUT `blob` back to back until `stop` is set."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.put(url, data=blob) as resp:
                        await resp.read()
                        kind = str(resp.status)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                    kind = type(exc).__name__
                tally.add(started, kind)

        await asyncio.gather(*(client() for _ in range(concurrency)))


def _under_load(
    url: str, blob: bytes, concurrency: int, seconds: float, action=None, at: float = 0.5
) -> Tally:
    """Load for at least `seconds`; `action(tally)` runs in a thread at fraction `at` of it
    (the load goes on while it runs, and for the rest of the time after it)."""
    tally = Tally()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(_load(url, blob, concurrency, stop, tally))
        start = time.monotonic()
        await asyncio.sleep(seconds * at)
        if action is not None:
            await asyncio.get_running_loop().run_in_executor(None, action, tally)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - start)))
        stop.set()
        await task

    asyncio.run(main())
    return tally


def _workers(server: ServerProcess) -> list[Any]:
    return [proc for role, proc in server_processes(server) if role == "worker"]


def _time_to_ready(
    server: ServerProcess, workers: int, gone: int | None = None, limit: float = 120.0
) -> float | None:
    """Seconds until the management API lists `workers` READY workers again, none of them the
    process `gone` (a killed worker is listed READY until TorchServe notices); None: never."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        ready = [w.get("pid") for w in server.workers() if w.get("status") == "READY"]
        if len(ready) >= workers and gone not in ready:
            return round(time.monotonic() - start, 1)
        time.sleep(0.2)
    return None


@contextlib.contextmanager
def _server(weights: Path, workers: int = 2):
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        server = start_ours(Path(tmp), weights, Path(tmp) / "store", workers)
        try:
            server.wait_workers("fd1", workers, 300)
            yield server
        finally:
            server.stop(grace=30)


def drill_kill_worker(weights: Path, blob: bytes, seconds: float) -> dict:
    """SIGKILL one worker under load: failures are at most its batch; time to recovery."""
    with _server(weights) as server:
        url = server.http + "/predictions/fd1"
        found: dict[str, Any] = {}

        def kill(_tally: Tally) -> None:
            victim = _workers(server)[0]
            victim.send_signal(signal.SIGKILL)
            found["recovery_s"] = _time_to_ready(server, 2, gone=victim.pid)

        tally = _under_load(url, blob, 8, seconds, kill)
    return {**tally.summary(), "failures": tally.failures(), "recovery_s": found["recovery_s"]}


def drill_stop_worker(weights: Path, blob: bytes, seconds: float, stopped: float = 10.0) -> dict:
    """SIGSTOP a worker for `stopped` s under load, then SIGCONT; what readiness said meanwhile."""
    with _server(weights) as server:
        url = server.http + "/predictions/fd1"
        found: dict[str, Any] = {}

        def pause(_tally: Tally) -> None:
            victim = _workers(server)[0]
            victim.send_signal(signal.SIGSTOP)
            ready = subprocess.run(
                [sys.executable, "-m", "yolov5face", "ready", "--timeout", "5"]
                + ["--management-url", server.management, "--inference-url", server.http],
                cwd=server.run_dir,
                capture_output=True,
                timeout=60,
            )
            found["ready_exit_while_stopped"] = ready.returncode
            remaining = stopped - 5.0
            if remaining > 0:
                time.sleep(remaining)
            victim.send_signal(signal.SIGCONT)

        tally = _under_load(url, blob, 8, max(seconds, stopped * 2), pause)
    return {**tally.summary(), "failures": tally.failures(), **found}


def drill_sigterm(weights: Path, blob: bytes, seconds: float) -> dict:
    """SIGTERM to `yolov5face serve` under load: requests sent before it must all succeed."""
    with _server(weights) as server:
        url = server.http + "/predictions/fd1"
        found: dict[str, Any] = {}

        def term(_tally: Tally) -> None:
            found["signal_at"] = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)
            try:
                found["exit_code"] = server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                found["exit_code"] = None
            found["exit_s"] = round(time.monotonic() - found["signal_at"], 1)

        tally = _under_load(url, blob, 8, seconds, term)
    lost = tally.failures(before=found["signal_at"])
    return {
        **tally.summary(),
        "failed_in_flight": lost,
        "exit_code": found["exit_code"],
        "exit_s": found["exit_s"],
    }


def large_jpeg(target_mb: float = 19.0) -> bytes:
    """A valid JPEG of about `target_mb` MB (noise at quality 100) under the 20 MiB limit."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    side = 3000
    while True:
        image = rng.integers(0, 256, (side, side, 3), np.uint8)
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
        if len(data) >= target_mb * 1e6 or side > 6000:
            return data[: int(20.9e6)] if len(data) > 20.9e6 else data
        side = int(side * (target_mb * 1e6 / len(data)) ** 0.5) + 16


def drill_large_uploads(weights: Path, concurrency: int = 32) -> dict:
    """`concurrency` large uploads at once: each must end in 200, 413 or 503 (no resets)."""
    blob = large_jpeg()
    with _server(weights) as server:
        url = server.http + "/predictions/fd1"
        before = process_memory(server).get("frontend_mb")
        tally = Tally()

        async def burst() -> None:
            import aiohttp

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:

                async def one() -> None:
                    started = time.monotonic()
                    try:
                        async with s.put(url, data=blob) as resp:
                            await resp.read()
                            tally.add(started, str(resp.status))
                    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                        tally.add(started, type(exc).__name__)

                await asyncio.gather(*(one() for _ in range(concurrency)))

        asyncio.run(burst())
        after = process_memory(server).get("frontend_mb")
        alive = _time_to_ready(server, 2, limit=60) is not None
    clean = {"200", "413", "503"}
    return {
        **tally.summary(),
        "upload_mb": round(len(blob) / 1e6, 1),
        "unclean": sum(n for k, n in tally.kinds.items() if k not in clean),
        "frontend_rss_mb_before": before,
        "frontend_rss_mb_after": after,
        "workers_ready_after": alive,
    }


def soak(weights: Path, blob: bytes, minutes: float, concurrency: int = 8) -> dict:
    """Load for `minutes` with the server's RSS sampled each minute."""
    with _server(weights) as server:
        url = server.http + "/predictions/fd1"
        samples: list[dict] = []
        start = time.monotonic()

        def sample_each_minute(_tally: Tally) -> None:
            end = start + minutes * 60
            while True:
                elapsed = time.monotonic() - start
                samples.append({"t_min": round(elapsed / 60, 1), **_memory_row(server)})
                if elapsed >= minutes * 60 - 1:
                    return
                time.sleep(min(60.0, max(0.5, end - time.monotonic() - 0.5)))

        tally = _under_load(url, blob, concurrency, minutes * 60, sample_each_minute, at=0.0)
    totals = [s["workers_mb"] + (s["frontend_mb"] or 0) for s in samples if s["workers_mb"]]
    return {
        **tally.summary(),
        "failures": tally.failures(),
        "rss_samples": samples,
        "rss_total_mb_first_last": [round(totals[0], 1), round(totals[-1], 1)] if totals else None,
    }


def _memory_row(server: ServerProcess) -> dict:
    memory = process_memory(server)
    return {
        "frontend_mb": memory.get("frontend_mb"),
        "workers_mb": memory.get("workers_rss_mb_total"),
    }


DRILLS = ("kill", "stop", "sigterm", "uploads", "soak")


def run_drills(
    weights: Path,
    blob: bytes,
    drills: tuple[str, ...] = DRILLS,
    seconds: float = 20.0,
    soak_minutes: float = 10.0,
) -> dict[str, dict]:
    """Run the chosen drills one after another, each on a fresh server."""
    runs = {
        "kill": lambda: drill_kill_worker(weights, blob, seconds),
        "stop": lambda: drill_stop_worker(weights, blob, seconds),
        "sigterm": lambda: drill_sigterm(weights, blob, seconds),
        "uploads": lambda: drill_large_uploads(weights),
        "soak": lambda: soak(weights, blob, soak_minutes),
    }
    out = {}
    for name in drills:
        start = time.monotonic()
        out[name] = {**runs[name](), "drill_s": round(time.monotonic() - start, 1)}
    return out


def report(results: dict[str, dict], command: str) -> str:
    """docs/reliability.md from the drills' results."""
    lines = [
        "# Reliability drills",
        "",
        "Fault drills against a real `yolov5face serve` (2 workers, the packaged config) on the",
        "2-core development machine, CPU only, each on a fresh server, 8 clients sending",
        "zidane.jpg back to back. Made by:",
        "",
        f"    {command}",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}. Kinds: an HTTP status, or the client's connection",
        "error. Failures: requests not answered 200.",
        "",
        "| drill | requests | by kind | failures | other figures |",
        "|---|---|---|---|---|",
    ]
    what = {
        "kill": "worker SIGKILLed under load",
        "stop": "worker SIGSTOPped 10 s under load",
        "sigterm": "SIGTERM to `yolov5face serve` under load",
        "uploads": "32 concurrent ~19 MB JPEG uploads",
        "soak": "soak",
    }
    for name, result in results.items():
        kinds = ", ".join(f"{k}: {n}" for k, n in result.get("by_kind", {}).items())
        skip = {"requests", "by_kind", "failures", "rss_samples"}
        other = ", ".join(f"{k} {v}" for k, v in result.items() if k not in skip)
        failures = result.get("failures", result.get("failed_in_flight", result.get("unclean")))
        lines.append(
            f"| {what[name]} | {result.get('requests')} | {kinds} | {failures} | {other} |"
        )
    notes = {
        "kill": "the failures are the killed worker's batch (TorchServe answers it 500); "
        "recovery_s: until a new worker is READY",
        "stop": "the stopped worker's batch waits, then is answered (max_ms); readiness stays "
        "true because the other worker answers its probe",
        "sigterm": "failed_in_flight counts requests sent before the signal that were not "
        "answered 200; the connection errors are requests sent after it, refused while the "
        "server drains and stops",
        "uploads": "unclean counts answers other than 200, 413 or 503 (resets, 507)",
        "soak": "memory per minute below",
    }
    lines += ["", *[f"- {what[n]}: {notes[n]}." for n in results if n in notes]]
    soaked = results.get("soak", {}).get("rss_samples")
    if soaked:
        lines += [
            "",
            "Soak memory (RSS, MB):",
            "",
            "| minute | frontend | workers |",
            "|---|---|---|",
        ]
        lines += [f"| {s['t_min']} | {s['frontend_mb']} | {s['workers_mb']} |" for s in soaked]
    return "\n".join(lines) + "\n"
