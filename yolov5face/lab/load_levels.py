"""Load on running servers with the `qps` tool: levels interleaved across servers, medians over
rounds, best QPS within a p99 budget."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from yolov5face.lab.servers import cpu_seconds, server_processes
from yolov5face.serving.launcher import ServerProcess
from yolov5face.tools.qps.load import run
from yolov5face.tools.qps.transports import run_http


def probe(url: str, blob: bytes, timeout: float = 30.0) -> tuple[int, int]:
    """One request: (status, number of faces)."""
    req = urllib.request.Request(
        url, data=blob, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, len(json.loads(resp.read()))


def run_level(
    url: str,
    images: Sequence[tuple[str, bytes]],
    concurrency: int,
    duration: float,
    warmup: float,
    max_requests: int = 10**6,
) -> dict:
    """One concurrency level with the `qps` load tester (raw keep-alive HTTP client)."""
    level = run_http(
        url,
        images,
        [concurrency],
        duration=duration,
        max_requests=max_requests,
        warmup=warmup,
        timeout=30.0,
        progress=True,
    )
    return run(level)[0].summary()


def interleaved_rounds(
    servers: dict[str, ServerProcess],
    urls: dict[str, str],
    images: Sequence[tuple[str, bytes]],
    levels: Sequence[int],
    duration: float,
    warmup: float,
    rounds: int,
    server_warmup: float = 0.0,
    warmup_concurrency: int = 8,
) -> dict[str, list[list[dict]]]:
    """Every level on every server in turn, `rounds` times (the order reversing each round).

    Servers run side by side and take turns level by level, so load that drifts during the run
    hits them alike. Each level also gets the servers' CPU ms per answered request, per role.
    First each server gets `server_warmup` s of uncounted load (JIT, arenas, first batches).
    """
    if server_warmup > 0:
        for url in urls.values():
            run_level(url, images, warmup_concurrency, server_warmup, 0.0)
    procs = {name: server_processes(server) for name, server in servers.items()}
    by_round: dict[str, list[list[dict]]] = {name: [] for name in urls}
    for round_no in range(max(rounds, 1)):
        order = list(urls) if round_no % 2 == 0 else list(urls)[::-1]
        for name in order:
            by_round[name].append([])
        for concurrency in levels:
            for name in order:
                before = cpu_seconds(procs[name])
                level = run_level(urls[name], images, concurrency, duration, warmup)
                after = cpu_seconds(procs[name])
                # whole level incl. warm-up: CPU ms per answered request, per role
                answered = level["ok"] * (1 + warmup / duration)
                level["server_cpu_ms_per_request"] = (
                    {
                        role: round((after[role] - before.get(role, 0.0)) * 1e3 / answered, 2)
                        for role in after
                    }
                    if answered
                    else {}
                )
                by_round[name][-1].append(level)
    return by_round


def median_levels(rounds: Sequence[Sequence[dict]]) -> list[dict]:
    """Per concurrency level over rounds: median QPS, latencies and CPU per request; sums of counts.

    One round of levels on a noisy machine moves by several percent; the median of a few
    interleaved rounds is what the report compares.
    """

    def median(values: Sequence[float], digits: int = 3) -> float | None:
        return round(float(np.median(values)), digits) if len(values) else None

    by_level: dict[int, list[dict]] = {}
    for levels in rounds:
        for lv in levels:
            by_level.setdefault(lv["concurrency"], []).append(lv)
    merged = []
    for concurrency, runs in by_level.items():
        errors: Counter[str] = Counter()
        cpu: dict[str, list[float]] = {}
        for lv in runs:
            errors.update(lv["errors"])
            for role, ms in lv.get("server_cpu_ms_per_request", {}).items():
                cpu.setdefault(role, []).append(ms)
        level: dict[str, Any] = {"concurrency": concurrency, "rounds": len(runs)}
        for key in ("qps", "p50_ms", "p90_ms", "p99_ms"):
            level[key] = median([lv[key] for lv in runs if lv.get(key) is not None])
        level["qps_by_round"] = [lv["qps"] for lv in runs]
        level["max_ms"] = max((lv.get("max_ms") or 0.0 for lv in runs), default=None)
        for key in ("requests", "ok", "mismatches", "elapsed_s", "client_cpu_s"):
            level[key] = round(sum(lv.get(key, 0) for lv in runs), 3)
        level["errors"] = dict(sorted(errors.items()))
        level["server_cpu_ms_per_request"] = {
            role: median(values, 2) for role, values in sorted(cpu.items())
        }
        merged.append(level)
    return merged


def qps_within(levels: Sequence[dict], p99_ms: float) -> float:
    """Best QPS among levels whose p99 is within `p99_ms` (0 when none is)."""
    ok = [lv["qps"] for lv in levels if lv["p99_ms"] is not None and lv["p99_ms"] <= p99_ms]
    return max(ok, default=0.0)


def compare_at_p99(ours: Sequence[dict], reference: Sequence[dict]) -> list[dict]:
    """Ours vs reference best QPS at each p99 budget the reference reached."""
    out = []
    for lv in reference:
        if lv["p99_ms"] is None:
            continue
        budget = lv["p99_ms"]
        ref_q, our_q = qps_within(reference, budget), qps_within(ours, budget)
        out.append(
            {
                "p99_budget_ms": budget,
                "ours_qps": our_q,
                "reference_qps": ref_q,
                "ratio": round(our_q / ref_q, 2) if ref_q else None,
            }
        )
    return out
