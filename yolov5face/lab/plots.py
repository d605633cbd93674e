"""The report's plots (matplotlib, Agg): model, pipeline stages, server, memory per process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yolov5face.lab.common import target
from yolov5face.lab.pipeline_bench import PIPELINE_STAGES
from yolov5face.lab.server_bench import MEMORY_SERVERS


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_model(result: dict, path: Path) -> None:
    """Grouped bars: images/s per backend for each batch/threads."""
    plt = _plt()
    combos = sorted({(r["batch"], r["threads"]) for r in result["rows"]})
    backends = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    by = {(r["backend"], r["batch"], r["threads"]): r["images_per_s"] for r in result["rows"]}
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(backends)
    x = np.arange(len(combos))
    for k, backend in enumerate(backends):
        values = [by.get((backend, b, t), 0.0) for b, t in combos]
        bars = ax.bar(x + (k - (len(backends) - 1) / 2) * width, values, width, label=backend)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ratios = result["ratios_onnxruntime_over_torch"]
    labels = [f"batch {b}, {t} thread(s)" for b, t in combos]
    labels = [
        f"{label}\nORT/torch {ratios[f'b{b} t{t}']:.1f}x" if f"b{b} t{t}" in ratios else label
        for label, (b, t) in zip(labels, combos)
    ]
    ax.set_xticks(x, labels)
    ax.set_ylabel("images / s (network only)")
    ax.set_title(f"Model throughput at {result['img_size']}x{result['img_size']}")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pipeline(result: dict, path: Path) -> None:
    """Stacked bars of ms per image per stage: ours (each batch) vs baseline, one panel/image."""
    plt = _plt()
    threads = result["rows"][0]["threads"]
    rows = [r for r in result["rows"] if r["threads"] == threads]
    images = list(dict.fromkeys(r["image"] for r in rows))
    fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, name in zip(axes[0], images):
        sub = [r for r in rows if r["image"] == name]
        labels = [f"{r['pipeline']}\nbatch {r['batch']}" for r in sub]
        bottom = np.zeros(len(sub))
        for k, stage in enumerate(PIPELINE_STAGES):
            values = np.array([r["stages_ms"][stage] for r in sub])
            ax.bar(labels, values, bottom=bottom, label=stage, color=colors[k])
            bottom += values
        for i, r in enumerate(sub):
            ax.annotate(f"{r['images_per_s']:.0f} img/s", (i, bottom[i]), ha="center", va="bottom")
        ax.set_title(f"{name}, {threads} thread(s)")
        ax.set_ylabel("ms per image")
        ax.set_ylim(0, bottom.max() * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Pipeline stages: JPEG bytes -> JSON (ours vs reference design)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_server(result: dict, path: Path) -> None:
    """QPS and p50/p99 latency vs concurrency for both servers, with the in-process ceiling."""
    plt = _plt()
    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    ceiling = result["ceiling"]["images_per_s"]
    conc: list[int] = []
    for name, color in (("ours", "tab:blue"), ("reference", "tab:orange")):
        if name not in result:
            continue
        levels = result[name]["levels"]
        conc = [lv["concurrency"] for lv in levels]
        ax_q.plot(conc, [lv["qps"] for lv in levels], "o-", color=color, label=f"{name} TorchServe")
        for key, style in (("p50_ms", "o--"), ("p99_ms", "s-")):
            values = [np.nan if lv[key] is None else lv[key] for lv in levels]
            ax_l.plot(conc, values, style, color=color, label=f"{name} {key[:3]}")
    ax_q.axhline(ceiling, color="k", lw=1, label="in-process ceiling (2 processes)")
    share = target("server_ceiling").value
    ax_q.axhline(ceiling * share, color="k", lw=1, ls=":", label=f"{share:.0%} of ceiling")
    ax_q.set(xlabel="concurrency", ylabel="requests / s", title=f"QPS ({result['image']})")
    ax_l.set(xlabel="concurrency", ylabel="ms", title="latency")
    ax_l.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for ax in (ax_q, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_l.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_l.yaxis.set_major_formatter(ScalarFormatter())
    ax_l.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_memory(memory: dict | None, server: dict | None, path: Path) -> None:
    """RSS per process: in-process ONNX Runtime, bare torch, frontends and workers."""
    plt = _plt()
    labels, values, colors = [], [], []
    if memory:
        labels.append(f"in-process ORT Detector\n(after {memory['images']} images)")
        values.append(memory["rss_after_mb"])
        colors.append("tab:green")
    if server:
        labels.append("bare python + import torch")
        values.append(server["bare_torch"]["rss_mb"])
        colors.append("tab:gray")
        palette = {"ours": "tab:blue", "ours_eager_torch": "tab:purple", "reference": "tab:orange"}
        for name, label in MEMORY_SERVERS:
            if name not in server:
                continue
            color = palette[name]
            mem = server[name]["memory"]
            labels.append(f"{label} frontend JVM")
            values.append(mem["frontend_mb"] or 0.0)
            colors.append(color)
            for k, w in enumerate(mem["workers"]):
                labels.append(f"{label} worker {k + 1}")
                values.append(w["rss_mb"])
                colors.append(color)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
    bars = ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%.0f MB", fontsize=8)
    limit = target("memory_mb").value
    ax.axvline(limit, color="k", ls=":", lw=1, label=f"{limit:g} MB (in-process target)")
    ax.set_xlabel("RSS MB")
    ax.set_xlim(0, max(values, default=1.0) * 1.15)
    counts = [server[n]["requests_served"] for n in ("ours", "reference") if server and n in server]
    served = f" (servers after >= {min(counts)} requests each)" if counts else ""
    ax.set_title("Memory per process" + served)
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
