"""The report's markdown, section by section: the targets table, then one section per bench."""

from __future__ import annotations

from typing import Any

from yolov5face.lab.common import fmt_cell, target, targets
from yolov5face.lab.memory_bench import memory_tables
from yolov5face.lab.model_bench import model_tables
from yolov5face.lab.pipeline_bench import pipeline_tables
from yolov5face.lab.server_bench import server_tables


def bounds_notes(results: dict) -> list[str]:
    """Bullets with in-run figures that bound the ratios (why a target can or cannot be met)."""
    notes = []
    pipe = results.get("pipeline")
    if pipe:
        for row in pipe["rows"]:
            if row["pipeline"] != "baseline":
                continue
            ours = min(
                (r for r in pipe["rows"] if r["image"] == row["image"] and r["pipeline"] == "ours"),
                key=lambda r: r["ms_per_image"],
            )
            decode = ours["stages_ms"]["decode"]
            notes.append(
                f"{row['image']}: decoding takes {decode:.1f} of ours' {ours['ms_per_image']:.1f} "
                f"ms per image ({100 * decode / ours['ms_per_image']:.0f}%; the baseline's "
                f"`cv2.imdecode` {row['stages_ms']['decode']:.1f} ms for the same pixels), so "
                f"even with everything else free ours / baseline could not exceed "
                f"{row['ms_per_image'] / decode:.2f}x on it."
            )
    srv = results.get("server")
    if srv and "reference" in srv:
        cpu = {}
        for name in ("ours", "reference"):
            best = max(srv[name]["levels"], key=lambda lv: lv["qps"])
            per = best.get("server_cpu_ms_per_request") or {}
            cpu[name] = per.get("frontend", 0.0) + per.get("worker", 0.0)
        if cpu["ours"]:
            notes.append(
                f"Server CPU per request at each server's best level (frontend + workers): "
                f"ours {cpu['ours']:.1f} ms, reference {cpu['reference']:.1f} ms. Both are "
                f"CPU-bound on the same cores, so ours / reference QPS at equal load tops out "
                f"near {cpu['reference'] / cpu['ours']:.1f}x here."
            )
    return notes


def target_rows(results: dict) -> list[list[Any]]:
    """One row per target (targets.json): what, target, measured, met."""
    label = {name: t.label for name, t in targets().items()}
    rows = []
    model = results.get("model", {}).get("headline")
    if model:
        rows.append([model["name"], label["model_ratio"], f"{model['ratio']:.2f}x", model["met"]])
    pipe = results.get("pipeline")
    if pipe:
        for c in pipe["comparisons"]:
            what = f"pipeline ours b{c['batch']} / baseline, {c['image']}"
            ratio = c["ours_over_baseline"]
            met = target("pipeline_ratio").met(ratio)
            rows.append([what, label["pipeline_ratio"], f"{ratio:.2f}x", met])
        for c in pipe["comparisons"]:
            what = f"ours b{c['batch']} time / (decode + model), {c['image']}"
            ratio = c["ours_over_decode_plus_model"]
            met = target("pipeline_overhead").met(ratio)
            rows.append([what, label["pipeline_overhead"], f"{ratio:.3f}x", met])
        for name, p in pipe["postprocess"].items():
            rows.append(
                [
                    f"post-processing + JSON, {name} ({p['faces_ours']} faces)",
                    label["postprocess_ms"],
                    f"{p['ours_ms']:.3f} ms (baseline {p['baseline_ms']:.2f} ms)",
                    target("postprocess_ms").met(p["ours_ms"]),
                ]
            )
    mem = results.get("memory")
    if mem:
        rows.append(
            [
                f"in-process ORT RSS after {mem['images']} images (torch imported: "
                f"{'yes' if mem['torch_imported'] else 'no'})",
                label["memory_mb"],
                f"{mem['rss_after_mb']:.1f} MB",
                mem["met"],
            ]
        )
    srv = results.get("server")
    if srv:
        rows.append(
            [
                "server best QPS / in-process ceiling (2 processes)",
                label["server_ceiling"],
                f"{srv['ours_over_ceiling'] * 100:.0f}% ({srv['ours_best']['qps']:.1f} / "
                f"{srv['ceiling']['images_per_s']:.1f})",
                srv["ceiling_met"],
            ]
        )
        head = srv.get("vs_reference")
        if head:
            rows.append(
                [
                    f"ours / reference QPS at the reference's peak p99 "
                    f"({head['p99_budget_ms']:.0f} ms)",
                    label["server_vs_reference"],
                    f"{fmt_cell(head['ratio'], 2)}x ({head['ours_qps']:.1f} / "
                    f"{head['reference_qps']:.1f})"
                    + (f", medians of {srv['rounds']} rounds" if srv.get("rounds", 1) > 1 else ""),
                    srv["vs_reference_met"],
                ]
            )
        mem = srv["ours"]["memory"]
        if "memory_vs_reference" in srv:
            ref = srv["reference"]["memory"]["total_rss_mb"]
            rows.append(
                [
                    f"server RSS (JVM + workers) ours / reference after "
                    f"{min(srv['ours']['requests_served'], srv['reference']['requests_served'])} "
                    "requests",
                    label["server_memory_ratio"],
                    f"{srv['memory_vs_reference'] * 100:.0f}% ({mem['total_rss_mb']:.0f} / "
                    f"{ref:.0f} MB)",
                    srv["memory_vs_reference_met"],
                ]
            )
        limits = srv.get("memory_limits_met", {})
        worst = max(w["rss_mb"] for w in mem["workers"])
        rows.append(
            ["ours, largest worker RSS", label["worker_rss_mb"], f"{worst:.0f} MB"]
            + [limits.get("worker")]
        )
        rows.append(
            [
                "ours, frontend JVM RSS",
                label["frontend_rss_mb"],
                f"{mem['frontend_mb']:.0f} MB",
                limits.get("frontend"),
            ]
        )
    return rows


def model_section(m: dict, plot: str) -> list[str]:
    """## 1. Model throughput: how it was measured, the tables, the plot."""
    return [
        "## 1. Model throughput",
        "",
        f"Network forward only on a (B, 3, {m['img_size']}, {m['img_size']}) float32 batch; "
        "ms/batch is the median of the timed runs after warm-up. torch threads are "
        "`torch.set_num_threads` (process-global, set before each row's slice); ONNX Runtime "
        "threads are the session's intra-op threads. Both run the BN-fused network.",
        "",
        *[t + "\n" for t in model_tables(m, md=True)],
        "The second table is onnxruntime images/s over torch images/s for the same batch "
        "and threads. The last one (when present) times the shipped ONNX Runtime backend "
        "against one session-option change at a time, at batch 8 and 2 threads, "
        "interleaved the same way (`yolov5face bench model --ort-options`).",
        "",
        f"![model throughput]({plot})",
        "",
    ]


def pipeline_section(p: dict, plot: str) -> list[str]:
    """## 2. Pipeline: ours against the reference design, stage by stage."""
    return [
        "## 2. Pipeline: JPEG bytes -> JSON",
        "",
        f"Ours: `Detector.detect` ({p['backend']}, the exported ONNX, banded on the CPU: "
        "yolov5face/backends/band.py) on a list of B copies "
        "of the image, then `json.dumps` per image; the stage split comes from the "
        "Detector's `timings` dict (post-processing includes building the face dicts). "
        "Baseline: `yolov5face/lab/reference_pipeline.py`, the reference handler's design "
        "written from its description: per image `cv2.imdecode`, letterbox, torch fp32 "
        "eager with un-fused BatchNorm, sigmoid and grid arithmetic in torch over all "
        "anchors, threshold, greedy torch NMS loop, per-face Python loops for the JSON. "
        "tests/test_bench.py checks it returns the same faces as the Detector.",
        "",
        *[t + "\n" for t in pipeline_tables(p, md=True)],
        "The post-processing micro-benchmark table: raw network output -> "
        "JSON string (decode heads, threshold, NMS, map back, JSON), median ms. "
        "The last table (when present) times ours against the same Detector on the plain "
        "model, whole 320x320 canvases (`band=False`), interleaved with the cases above: "
        "the difference is what the banded model saves (its answers are tested equal in "
        "tests/test_band.py).",
        "",
        f"![pipeline stages]({plot})",
        "",
    ]


def memory_section(mem: dict) -> list[str]:
    """## 3. Memory of an in-process ONNX Runtime server."""
    return [
        "## 3. Memory of an in-process ONNX Runtime server",
        "",
        "A fresh subprocess builds a `Detector` on the exported `.onnx` (backend "
        "onnxruntime, 1 thread), then runs "
        f"{mem['images']} images through `detect` (cycling {', '.join(mem['files'])}). "
        f"torch imported in that process: **{'yes' if mem['torch_imported'] else 'no'}** "
        "(checked via `sys.modules`).",
        "",
        *[t + "\n" for t in memory_tables(mem, md=True)],
    ]


def server_section(srv: dict, plot: str) -> list[str]:
    """## 4. Server: ours against the ceiling and the reference design."""
    ours = srv["ours"]
    return [
        "## 4. Server",
        "",
        f"Ours: `yolov5face serve` (TorchServe, {ours['workers']} CPU workers, ONNX Runtime "
        f"1 thread each, batch size {srv.get('batch_size', 8)} / max batch delay "
        f"{srv.get('max_batch_delay_ms', 5)} ms from "
        "yolov5face/serving/config/model-config.yaml). Reference "
        "design: `yolov5face/lab/reference_handler.py` (torch eager, per image, via "
        "reference_pipeline) "
        f"in its own archive with {srv['reference']['workers'] if 'reference' in srv else 4} "
        "workers, batch 1, served by the same TorchServe (same config.properties and log "
        "config, OMP_NUM_THREADS=1). Ours' handler keeps freed buffers for reuse (glibc "
        "`mallopt`, `reuse_freed_memory` in the model config, docs/architecture.md); the "
        "reference handler runs with the allocator's defaults, like the design it copies. "
        "Both servers run side by side (the idle one waits) and "
        "each concurrency level is run on one, then the other, so background load that "
        "drifts during the run hits both alike"
        + (
            f"; the whole sweep is run {srv['rounds']} times (the server going first "
            "swapping each round) and the tables show each level's median QPS, p50, p99 and "
            "CPU per request over the rounds ('ok' counts them all)"
            if srv.get("rounds", 1) > 1
            else ""
        )
        + ". Load: `yolov5face.tools.qps` (raw keep-alive "
        "HTTP client, one connection per concurrent request, POST of the JPEG) on "
        f"{srv['image']}: first {srv.get('server_warmup_s', 5):g} s uncounted at "
        f"concurrency 8 per server, then {srv['duration_s']:g} s per level after "
        f"{srv.get('warmup_s', 1):g} s warm-up, on the same 2-core machine as the servers "
        "(its own CPU use is the client CPU column). The CPU ms/req columns are the CPU "
        "time the frontend JVM and all workers used during the level (warm-up included) "
        "divided by the requests answered (warm-up requests estimated at the level's rate).",
        "",
        f"In-process ceiling: {srv['ceiling']['processes']} processes each running "
        "`Detector.detect([image])` + `json.dumps` in a loop on the archive's ONNX, with the "
        "handler's allocator setting, measured together, before the servers start and after "
        "they stop: "
        f"{' and '.join(f'{v:.1f}' for v in srv['ceiling'].get('before_after', []))} "
        f"images/s, mean **{srv['ceiling']['images_per_s']:.1f}**. Ours peaks at "
        f"{srv['ours_best']['qps']:.1f} QPS (concurrency {srv['ours_best']['concurrency']}) = "
        f"{srv['ours_over_ceiling'] * 100:.0f}% of it. Worker start-up (both started "
        f"together): ours {ours['startup_s']:.0f} s"
        + (f", reference {srv['reference']['startup_s']:.0f} s." if "reference" in srv else "."),
        "",
        *[t + "\n" for t in server_tables(srv, md=True)],
        "How TorchServe batches matters here: a worker that takes a request waits up to the "
        f"max batch delay ({srv.get('max_batch_delay_ms', 5)} ms) for more, up to the batch "
        f"size ({srv.get('batch_size', 8)}), so at low concurrency one worker may take "
        "every request in flight while the other waits; ours' workers then run part of "
        "such a batch on the idle core (`split_batches`, docs/architecture.md). "
        "docs/operations.md ('CPU hosts') has the sweep behind the default batch size, "
        "delay and splitting.",
        "",
        "The p99 table compares the best QPS each server reaches while keeping p99 within "
        "the budget; the headline budget is the reference's p99 at its peak QPS level"
        + (
            ". The same headline read off each round alone: "
            + ", ".join(fmt_cell(r, 2) + "x" for r in srv["vs_reference_by_round"])
            + ". When the reference's QPS is nearly flat across levels, which level peaks "
            "in a round is down to noise, and a round whose peak is a low-concurrency level "
            "sets a tight p99 budget: hence the medians. "
            if len(srv.get("vs_reference_by_round") or []) > 1
            else ". "
        )
        + "Memory is read after each server answered the requests in the 'requests served' "
        f"column: the sweep, then a soak at concurrency 8 when the sweep stayed under "
        f"{srv['requests_target']} (the issue asks 10,000: "
        "`yolov5face bench server --requests 10000`). TorchServe's worker imports torch "
        "itself (`ts/protocol/otf_message_handler.py`, only to test whether a response is a "
        "tensor); `yolov5face serve` defers that import in its workers "
        "(`yolov5face/serving/worker_site/sitecustomize.py`), so torch is only loaded if "
        "something "
        "uses it. 'torch loaded' says whether libtorch is mapped into the process. "
        + (
            f"'ours, torch not deferred' is the same server started afterwards with "
            f"YOLOV5FACE_LAZY_TORCH=0 and measured after "
            f"{srv['ours_eager_torch']['requests_served']} requests: its workers are "
            f"{srv['torch_share_of_worker_mb']:.0f} MB larger than ours, which is what "
            "TorchServe's import of torch costs a worker (ours were read after more "
            "requests, so if anything this understates it). "
            if "ours_eager_torch" in srv
            else ""
        )
        + "The reference handler uses torch, so its workers load it either way.",
        "",
        f"![server]({plot})",
        "",
    ]


def decode_section(decode: dict) -> list[str]:
    """## 5. The JPEG decode study."""
    from yolov5face.lab.decode_study import to_markdown as decode_markdown

    return [
        "## 5. JPEG decode study",
        "",
        "Decoders compared on the shared photos (median ms per decode, speed-up vs "
        "`cv2.imdecode` in brackets), then the accuracy of the whole pipeline with each "
        "(golden parity by the comparison rule; WIDER FACE subset AP at 320, conf 0.02). "
        "*ours* is `pipeline.decode.decode_image`: libjpeg-turbo through simplejpeg for upright "
        "JPEGs, pixel-identical to *opencv* (`cv2.imdecode`). *-scaled* decodes JPEGs at "
        "1/2, 1/4 or 1/8 (DCT scaling) while the long side stays >= 320. "
        "(`python -m yolov5face.lab.decode_study`)",
        "",
        decode_markdown(decode),
        "",
        "Scaled decoding is offered only as an opt-in fast mode (`--fast-decode`, "
        "`YOLOV5FACE_FAST_DECODE=1`, `fast_decode: true` in the model config): it loses "
        "golden parity (different pixels change boxes by more than the 0.002 tolerance) "
        "although WIDER AP does not drop. The default keeps full-size decoding with "
        "OpenCV's exact pixels (docs/architecture.md).",
        "",
    ]


def loadtool_section(loadtool: dict) -> list[str]:
    """## 6. The QPS tool against wrk."""
    from yolov5face.lab.loadtool import to_markdown as loadtool_markdown

    return ["## 6. QPS tool vs wrk", "", loadtool_markdown(loadtool), ""]


GPU_SECTION = [
    "## GPU",
    "",
    "No GPU was lent to the session that produced this report, and no TensorRT is "
    "installed on these machines: the torch CUDA (fp16, CUDA graphs), TensorRT and torch2trt "
    "paths (`tests/test_gpu.py`, marked `gpu`) were skipped here and are **untested**. "
    "Nothing in this report was measured on a GPU; section 8 emulates fp16 on the CPU.",
    "",
]
