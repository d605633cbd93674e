"""`bench server`: ours on TorchServe against the in-process ceiling and the reference design,
side by side; memory per process."""

from __future__ import annotations

import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.lab.ceiling import inprocess_ceiling
from yolov5face.lab.common import fmt_cell, md_table, target, text_table
from yolov5face.lab.load_levels import (
    compare_at_p99,
    interleaved_rounds,
    median_levels,
    probe,
    run_level,
)
from yolov5face.lab.servers import (
    REFERENCE_MODEL,
    bare_torch_memory,
    build_ours_archive,
    build_reference_archive,
    process_memory,
    start_ours,
    start_reference,
)
from yolov5face.serving.launcher import ServerProcess
from yolov5face.tools.qps.cli import format_table

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)


def bench_server(
    weights: Path,
    image: Path,
    levels: Sequence[int] = DEFAULT_LEVELS,
    duration: float = 8.0,
    warmup: float = 1.0,
    requests: int = 2000,
    workers: int = 2,
    reference_workers: int = 4,
    ceiling_seconds: float = 10.0,
    soak_concurrency: int = 8,
    soak_seconds: float = 300.0,
    ready_timeout: float = 300.0,
    reference: bool = True,
    server_warmup: float = 5.0,
    eager_torch_requests: int = 1000,
    rounds: int = 1,
) -> dict:
    """TorchServe ours vs the in-process ceiling and vs the reference design; memory per process.

    Both servers run side by side and the levels alternate between them, so background load
    that drifts during the run hits both alike; with `rounds` > 1 the whole sweep is repeated
    (the first server swapping each round) and each level reports the median of its rounds.
    The ceiling is measured before and after.
    With `eager_torch_requests`, ours is then run once more with YOLOV5FACE_LAZY_TORCH=0 for
    that many requests, to show what TorchServe's own `import torch` costs a worker.
    """
    result: dict[str, Any] = {
        "image": image.name,
        "levels": list(levels),
        "duration_s": duration,
        "warmup_s": warmup,
        "server_warmup_s": server_warmup,
        "requests_target": requests,
        "rounds": rounds,
    }
    from yolov5face.serving.archive import model_config

    config = model_config()  # batching as `yolov5face archive` will bake it in
    result["batch_size"], result["max_batch_delay_ms"] = (
        config["batchSize"],
        config["maxBatchDelay"],
    )
    blob = image.read_bytes()
    images = [(image.name, blob)]
    running: dict[str, tuple[ServerProcess, str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="yolov5face-bench-") as tmp:
        root = Path(tmp)
        result["bare_torch"] = bare_torch_memory()
        store = root / "ours" / "model-store"
        mar = build_ours_archive(weights, store, workers)
        with zipfile.ZipFile(mar) as zf:
            onnx = Path(zf.extract("fd1.onnx", root))
        ref_store = root / "reference" / "model-store"
        if reference:
            build_reference_archive(weights, ref_store, reference_workers)
        ceilings = [inprocess_ceiling(onnx, image, workers, ceiling_seconds)]
        try:
            running["ours"] = (start_ours(root / "ours", weights, store, workers), "fd1", workers)
            if reference:
                server = start_reference(root / "reference", ref_store)
                running["reference"] = (server, REFERENCE_MODEL, reference_workers)
            urls = {}
            for name, (server, model, n) in running.items():
                startup = server.wait_workers(model, n, ready_timeout)
                urls[name] = f"{server.http}/predictions/{model}"
                status, faces = probe(urls[name], blob)
                result[name] = {
                    "model": model,
                    "workers": n,
                    "startup_s": round(startup, 1),
                    "probe": {"status": status, "faces": faces},
                    "levels": [],
                }
            servers = {name: server for name, (server, _, _) in running.items()}
            by_round = interleaved_rounds(
                servers,
                urls,
                images,
                levels,
                duration,
                warmup,
                rounds,
                server_warmup,
                warmup_concurrency=soak_concurrency,
            )
            for name in urls:
                result[name]["rounds"] = by_round[name]
                result[name]["levels"] = median_levels(by_round[name])
            for name, (server, _, _) in running.items():
                summaries = result[name]["levels"]
                sys.stderr.write(f"{name}:\n{format_table(summaries)}\n")
                served = sum(lv["requests"] for lv in summaries)
                soak = None
                if requests > served:
                    soak = run_level(
                        urls[name], images, soak_concurrency, soak_seconds, 0.0, requests - served
                    )
                    served += soak["requests"]
                result[name]["soak"] = soak
                result[name]["requests_served"] = served
                result[name]["memory"] = process_memory(server)
        finally:
            for server, _, _ in running.values():
                server.stop()
        ceilings.append(inprocess_ceiling(onnx, image, workers, ceiling_seconds))
        if eager_torch_requests:
            result["ours_eager_torch"] = _eager_torch_memory(
                root / "eager", weights, store, workers, blob, eager_torch_requests, ready_timeout
            )
    result["ceiling"] = {
        **ceilings[0],
        "images_per_s": round(float(np.mean([c["images_per_s"] for c in ceilings])), 2),
        "before_after": [c["images_per_s"] for c in ceilings],
    }
    _server_summary(result)
    return result


def _eager_torch_memory(
    workdir: Path,
    weights: Path,
    store: Path,
    workers: int,
    blob: bytes,
    requests: int,
    ready_timeout: float,
    concurrency: int = 8,
) -> dict:
    """Memory of ours with TorchServe's `import torch` left eager, after `requests` requests."""
    server = start_ours(workdir, weights, store, workers, {"YOLOV5FACE_LAZY_TORCH": "0"})
    try:
        server.wait_workers("fd1", workers, ready_timeout)
        url = f"{server.http}/predictions/fd1"
        level = run_level(url, [("image", blob)], concurrency, 300.0, 0.0, requests)
        return {"requests_served": level["requests"], "memory": process_memory(server)}
    finally:
        server.stop()


def _server_summary(result: dict) -> None:
    """Add the headline ratios and target checks to a server result."""
    ours = result["ours"]
    best = max(ours["levels"], key=lambda lv: lv["qps"])
    ceiling = result["ceiling"]["images_per_s"]
    result["ours_best"] = {"concurrency": best["concurrency"], "qps": best["qps"]}
    ratio = round(best["qps"] / ceiling, 3) if ceiling else None
    result["ours_over_ceiling"] = ratio
    result["ceiling_met"] = target("server_ceiling").met(ratio)
    mem = result["ours"]["memory"]
    result["memory_limits_met"] = {
        "worker": target("worker_rss_mb").met(max(w["rss_mb"] for w in mem["workers"])),
        "frontend": target("frontend_rss_mb").met(mem["frontend_mb"]),
    }
    eager = result.get("ours_eager_torch")
    if eager:
        lazy_worker = np.mean([w["rss_mb"] for w in mem["workers"]])
        eager_worker = np.mean([w["rss_mb"] for w in eager["memory"]["workers"]])
        result["torch_share_of_worker_mb"] = round(float(eager_worker - lazy_worker), 1)
    if "reference" in result:
        ratio = mem["total_rss_mb"] / result["reference"]["memory"]["total_rss_mb"]
        result["memory_vs_reference"] = round(ratio, 3)
        result["memory_vs_reference_met"] = target("server_memory_ratio").met(ratio)
        result["at_p99"] = compare_at_p99(ours["levels"], result["reference"]["levels"])
        head = _headline(ours["levels"], result["reference"]["levels"])
        result["vs_reference"] = head
        result["vs_reference_met"] = target("server_vs_reference").met(
            head["ratio"] if head else None
        )
        round_pairs = zip(ours.get("rounds", []), result["reference"].get("rounds", []))
        result["vs_reference_by_round"] = [
            (_headline(ours_round, ref_round) or {}).get("ratio")
            for ours_round, ref_round in round_pairs
        ]


def _headline(ours: Sequence[dict], reference: Sequence[dict]) -> dict | None:
    """The comparison at the p99 of the reference's best-QPS level."""
    ref_best = max(reference, key=lambda lv: lv["qps"])
    return next(
        (c for c in compare_at_p99(ours, reference) if c["p99_budget_ms"] == ref_best["p99_ms"]),
        None,
    )


def server_tables(result: dict, md: bool = False) -> list[str]:
    """Levels of both servers, the ceiling and p99 comparisons, memory per process."""
    table = md_table if md else text_table
    out = []
    rows = []
    for name in ("ours", "reference"):
        if name not in result:
            continue
        for lv in result[name]["levels"]:
            errors = " ".join(f"{k}:{v}" for k, v in lv["errors"].items()) or "-"
            cpu = lv.get("client_cpu_s")
            client = f"{100 * cpu / lv['elapsed_s']:.0f}" if cpu is not None else "-"
            per_request = lv.get("server_cpu_ms_per_request", {})
            by_round = " / ".join(f"{q:.0f}" for q in lv.get("qps_by_round", [lv["qps"]]))
            rows.append(
                [name, lv["concurrency"], lv["qps"], by_round, lv["p50_ms"], lv["p99_ms"]]
                + [lv["ok"], per_request.get("frontend"), per_request.get("worker"), client]
                + [errors]
            )
    header = ["server", "concurrency", "QPS", "QPS by round", "p50 ms", "p99 ms", "ok"]
    header += ["frontend CPU ms/req", "workers CPU ms/req", "client CPU %", "errors"]
    out.append(table(header, rows))
    if result.get("at_p99"):
        rows = [
            [c["p99_budget_ms"], c["ours_qps"], c["reference_qps"], fmt_cell(c["ratio"], 2) + "x"]
            for c in result["at_p99"]
        ]
        out.append(table(["p99 budget ms", "ours QPS", "reference QPS", "ours / reference"], rows))
    bare = result["bare_torch"]
    rows = [["bare `python -c 'import torch'`", "-", bare["rss_mb"], bare["uss_mb"], "yes"]]
    totals = []
    for name, label in MEMORY_SERVERS:
        if name not in result:
            continue
        mem = result[name]["memory"]
        served = result[name]["requests_served"]
        rows.append(
            [f"{label} frontend (JVM)", served, mem["frontend_mb"], mem.get("frontend_uss_mb"), "-"]
        )
        for k, w in enumerate(mem["workers"]):
            loaded = {True: "yes", False: "no"}.get(w.get("torch"), "?")
            rows.append([f"{label} worker {k + 1}", served, w["rss_mb"], w["uss_mb"], loaded])
        ref = result.get("reference", {}).get("memory", {}).get("total_rss_mb")
        share = f"{100 * mem['total_rss_mb'] / ref:.0f}%" if ref else "-"
        totals.append(
            [label, mem["frontend_mb"], mem["workers_rss_mb_total"], mem["total_rss_mb"], share]
        )
    out.append(table(["process", "requests served", "RSS MB", "USS MB", "torch loaded"], rows))
    out.append(
        table(["server", "JVM MB", "workers MB", "total RSS MB", "of the reference"], totals)
    )
    return out


# (result key, label) of the servers whose memory is reported, in table order.
MEMORY_SERVERS = (
    ("ours", "ours"),
    ("ours_eager_torch", "ours, torch not deferred"),
    ("reference", "reference"),
)
