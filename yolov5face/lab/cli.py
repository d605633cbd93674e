"""`yolov5face bench`: model, pipeline, memory and server benchmarks, and docs/benchmarks.md.

Every section measures what it compares in one run (interleaved where it can), because the
machine is shared and noisy: ratios within a run mean something, absolute numbers across runs
do not. The last stdout line of each command is a JSON summary; tables and progress go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yolov5face.convert.onnx import cached_onnx
from yolov5face.lab.batching_bench import HEADER, Variant, batching_rows, bench_batching
from yolov5face.lab.common import fmt_cell, resolve_image, text_table
from yolov5face.lab.memory_bench import MEMORY_FILES, bench_memory, memory_tables
from yolov5face.lab.model_bench import bench_model, bench_ort_options, model_tables
from yolov5face.lab.pipeline_bench import DEFAULT_IMAGES, bench_pipeline, pipeline_tables
from yolov5face.lab.report import run_report
from yolov5face.lab.report_sections import target_rows
from yolov5face.lab.server_bench import DEFAULT_LEVELS, bench_server, server_tables


def _csv(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _csv_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def _weights(args: argparse.Namespace) -> Path:
    from yolov5face.paths import default_weights

    return Path(args.weights) if getattr(args, "weights", None) else default_weights()


def _emit(summary: dict, tables: Sequence[str]) -> None:
    """CLI output: tables on stderr, the JSON summary as the last stdout line."""
    for table in tables:
        sys.stderr.write(table + "\n\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def _cmd_model(args: argparse.Namespace) -> int:
    result = bench_model(
        _weights(args),
        backends=args.backend,
        batches=args.batch,
        threads=args.threads,
        img_size=args.img_size,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    if args.ort_options:
        onnx = cached_onnx(_weights(args), args.img_size)
        result["ort_options"] = bench_ort_options(
            onnx, max(args.batch), max(args.threads), args.seconds, args.rounds
        )
    tables = model_tables(result)
    if result["headline"]:
        h = result["headline"]
        tables.append(f"{h['name']}: {h['ratio']:.2f}x (target >= {h['target']}x)")
    _emit(result, tables)
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    result = bench_pipeline(
        _weights(args),
        images=args.images,
        batches=args.batch,
        threads=args.threads,
        img_size=args.img_size,
        seconds=args.seconds,
        backend=args.backend,
        rounds=args.rounds,
    )
    _emit(result, pipeline_tables(result))
    return 0


def _cmd_memory(args: argparse.Namespace) -> int:
    onnx = cached_onnx(_weights(args), args.img_size)
    result = bench_memory(onnx, args.images, args.files, timeout=args.timeout)
    _emit(result, memory_tables(result))
    return 0 if result["exit_code"] == 0 else 1


def _cmd_server(args: argparse.Namespace) -> int:
    result = bench_server(
        _weights(args),
        resolve_image(args.image),
        levels=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        requests=args.requests,
        workers=args.workers,
        reference_workers=args.reference_workers,
        ceiling_seconds=args.ceiling_seconds,
        soak_seconds=args.soak_seconds,
        ready_timeout=args.ready_timeout,
        reference=not args.no_reference,
        server_warmup=args.server_warmup,
        eager_torch_requests=args.eager_torch_requests,
        rounds=args.rounds,
    )
    tables = server_tables(result)
    share = result["ours_over_ceiling"]
    tables.append(
        f"in-process ceiling {result['ceiling']['images_per_s']:.1f} images/s; ours best "
        f"{result['ours_best']['qps']:.1f} QPS"
        + (f" = {share * 100:.0f}%" if share is not None else " (no ceiling measured)")
    )
    _emit(result, tables)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    results = run_report(_weights(args), Path(args.out), quick=args.quick, sections=args.only)
    summary = {
        "out": args.out,
        "elapsed_s": results["elapsed_s"],
        "targets": [
            {"what": r[0], "target": r[1], "measured": r[2], "met": r[3]}
            for r in target_rows(results)
        ],
    }
    rows = [[r["what"], r["target"], r["measured"], fmt_cell(r["met"])] for r in summary["targets"]]
    _emit(summary, [text_table(["what", "target", "measured", "met"], rows)])
    return 0


_EXAMPLES = {
    "model": """examples:
  yolov5face bench model                                   # torch,onnxruntime x b1,8 x t1,2
  yolov5face bench model --backend onnxruntime --batch 1,8,32 --threads 1 --seconds 5
  yolov5face bench model --seconds 0.5 --rounds 2          # quick look
  yolov5face bench model --ort-options                     # + ORT session-option variants""",
    "pipeline": """examples:
  yolov5face bench pipeline                                 # zidane.jpg,test.jpg, batch 1,8
  yolov5face bench pipeline --images photo.jpg --batch 1 --threads 1,2
Image names are looked up in $YOLOV5FACE_DATA/images when they are not paths.""",
    "memory": """examples:
  yolov5face bench memory                                   # 1000 images
  yolov5face bench memory --images 50 --files zidane.jpg
Exit 1 when the child process imported torch.""",
    "server": """examples:
  yolov5face bench server                                   # ours + reference, 2000 requests
  yolov5face bench server --requests 10000                  # the issue's memory soak
  yolov5face bench server --no-reference --concurrency 1,8,32 --duration 10
Needs Java (TorchServe); every server is stopped at the end, also on errors.""",
    "report": """examples:
  yolov5face bench report --out docs/benchmarks.md    # what `make bench` runs (~5 min, 2 cores)
  yolov5face bench report --out /tmp/bench.md --quick       # machinery check, ~1 min
  yolov5face bench report --out /tmp/bench.md --only model,pipeline
Plots go to img/ beside the report.""",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `bench` and its sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "bench",
        help="benchmarks: model, pipeline, memory, server, batching, reliability, crops, report",
        description=__doc__,
        epilog="\n\n".join(_EXAMPLES.values()),
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--weights", help="checkpoint (default: $YOLOV5FACE_WEIGHTS / shared)")
        q.add_argument("--img-size", type=int, default=320, help="network input (default 320)")

    q = sub.add_parser(
        "model",
        help="network-only throughput per backend/batch/threads",
        epilog=_EXAMPLES["model"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--backend", type=_csv, default=["torch", "onnxruntime"])
    q.add_argument("--batch", type=_csv_ints, default=[1, 8])
    q.add_argument("--threads", type=_csv_ints, default=[1, 2])
    q.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    q.add_argument("--rounds", type=int, default=5, help="interleaved slices per row")
    q.add_argument(
        "--ort-options",
        action="store_true",
        help="also time ONNX Runtime session-option variants at the largest batch/threads",
    )
    q.set_defaults(func=_cmd_model)

    q = sub.add_parser(
        "pipeline",
        help="JPEG bytes -> JSON: ours vs the reference design",
        epilog=_EXAMPLES["pipeline"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--images", type=_csv, default=list(DEFAULT_IMAGES))
    q.add_argument("--batch", type=_csv_ints, default=[1, 8], help="ours: images per call")
    q.add_argument("--threads", type=_csv_ints, default=[1])
    q.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    q.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case")
    q.add_argument("--rounds", type=int, default=5, help="interleaved slices per case")
    q.set_defaults(func=_cmd_pipeline)

    q = sub.add_parser(
        "memory",
        help="RSS of an in-process ONNX Runtime server",
        epilog=_EXAMPLES["memory"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--images", type=int, default=1000, metavar="N", help="images to run")
    q.add_argument("--files", type=_csv, default=list(MEMORY_FILES), help="images to cycle")
    q.add_argument("--timeout", type=float, default=900.0, help="bound on the child, s")
    q.set_defaults(func=_cmd_memory)

    q = sub.add_parser(
        "server",
        help="TorchServe: ours vs ceiling and vs reference",
        epilog=_EXAMPLES["server"],
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--image", default="zidane.jpg")
    q.add_argument("--concurrency", type=_csv_ints, default=list(DEFAULT_LEVELS))
    q.add_argument("--duration", type=float, default=8.0, help="counted seconds per level")
    q.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    q.add_argument(
        "--requests", type=int, default=2000, help="requests before reading memory (default 2000)"
    )
    q.add_argument("--workers", type=int, default=2, help="ours: workers (default 2)")
    q.add_argument("--reference-workers", type=int, default=4, help="reference (default 4)")
    q.add_argument("--ceiling-seconds", type=float, default=10.0, help="in-process ceiling run")
    q.add_argument("--soak-seconds", type=float, default=300.0, help="bound on the soak")
    q.add_argument("--ready-timeout", type=float, default=300.0)
    q.add_argument(
        "--server-warmup", type=float, default=5.0, help="uncounted load before the levels, s"
    )
    q.add_argument("--no-reference", action="store_true", help="skip the reference server")
    q.add_argument(
        "--rounds", type=int, default=1, help="whole sweeps; each level reports their median"
    )
    q.add_argument(
        "--eager-torch-requests",
        type=int,
        default=1000,
        help="then run ours with YOLOV5FACE_LAZY_TORCH=0 for N requests, to measure what "
        "torch costs a worker (0: skip)",
    )
    q.set_defaults(func=_cmd_server)

    _add_batching_parser(sub, common, fmt)
    _add_reliability_parser(sub, common, fmt)
    _add_study_parsers(sub, fmt)

    q = sub.add_parser(
        "report",
        help="run everything, write docs/benchmarks.md",
        epilog=_EXAMPLES["report"],
        formatter_class=fmt,
    )
    q.add_argument("--weights", help="checkpoint (default: $YOLOV5FACE_WEIGHTS / shared)")
    q.add_argument("--out", default="docs/benchmarks.md")
    q.add_argument("--quick", action="store_true", help="short runs (checks the machinery)")
    q.add_argument(
        "--only",
        type=_csv,
        default=None,
        help="sections: model,pipeline,memory,server,decode,loadtool,options",
    )
    q.set_defaults(func=_cmd_report)


_BATCHING_EXAMPLES = """examples:
  yolov5face bench batching                                 # b2, b2+split, b4+split, b8+split
  yolov5face bench batching --variants b2,b4+split --concurrency 4,16 --rounds 5
  yolov5face bench batching --variants b2+split,b2+split+plain   # banded against plain model
Variants: b<N> = TorchServe batch size N; +split = a batch also runs on cores no other worker is
using (YOLOV5FACE_SPLIT_BATCHES); +plain = the plain model instead of the banded one
(YOLOV5FACE_BAND=0). CPU ms/req: frontend + workers per answered request.
Needs Java (TorchServe); every server is stopped at the end, also on errors."""


_RELIABILITY_EXAMPLES = """examples:
  yolov5face bench reliability --out docs/reliability.md      # every drill, 10-minute soak
  yolov5face bench reliability --drills kill,sigterm --seconds 10
Drills: kill (a worker SIGKILLed under load), stop (SIGSTOP 10 s), sigterm (SIGTERM to serve),
uploads (32 concurrent ~19 MB uploads), soak (load with RSS sampled each minute). Each drill
starts its own server (Java needed); the JSON summary is the last stdout line."""


def _add_reliability_parser(sub: argparse._SubParsersAction, common: Any, fmt: type) -> None:
    """`yolov5face bench reliability`."""
    from yolov5face.lab.reliability import DRILLS

    q = sub.add_parser(
        "reliability",
        help="fault drills (worker kill/stop, SIGTERM, large uploads, soak) -> a report",
        epilog=_RELIABILITY_EXAMPLES,
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--image", default="zidane.jpg")
    q.add_argument("--drills", type=_csv, default=list(DRILLS), help=",".join(DRILLS))
    q.add_argument("--seconds", type=float, default=20.0, help="load per drill (default 20)")
    q.add_argument("--soak-minutes", type=float, default=10.0)
    q.add_argument("--out", help="write the markdown report here (e.g. docs/reliability.md)")
    q.set_defaults(func=_cmd_reliability)


def _cmd_reliability(args: argparse.Namespace) -> int:
    from yolov5face.lab.reliability import DRILLS, report, run_drills

    unknown = set(args.drills) - set(DRILLS)
    if unknown:
        raise ValueError(f"unknown drill(s) {sorted(unknown)}; choose from {', '.join(DRILLS)}")
    results = run_drills(
        _weights(args),
        resolve_image(args.image).read_bytes(),
        tuple(args.drills),
        args.seconds,
        args.soak_minutes,
    )
    command = "yolov5face bench reliability " + " ".join(sys.argv[3:])
    text = report(results, command.strip())
    if args.out:
        Path(args.out).write_text(text)
    _emit(results, [text])
    return 0


def _add_batching_parser(sub: argparse._SubParsersAction, common: Any, fmt: type) -> None:
    """`yolov5face bench batching`."""
    q = sub.add_parser(
        "batching",
        help="ours with other batch sizes / batch splitting, side by side",
        epilog=_BATCHING_EXAMPLES,
        formatter_class=fmt,
    )
    common(q)
    q.add_argument("--image", default="zidane.jpg")

    def variants(text: str) -> list[Variant]:
        try:
            parsed = [Variant.parse(t) for t in _csv(text)]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if len({v.name for v in parsed}) != len(parsed):
            raise argparse.ArgumentTypeError(f"a variant is listed twice: {text!r}")
        return parsed

    q.add_argument(
        "--variants",
        type=variants,
        default=[Variant(2, False), Variant(2, True), Variant(4, True), Variant(8, True)],
    )
    q.add_argument("--concurrency", type=_csv_ints, default=[2, 4, 8, 16, 24])
    q.add_argument("--duration", type=float, default=5.0, help="counted seconds per level")
    q.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    q.add_argument("--rounds", type=int, default=3, help="sweeps; each level reports the median")
    q.add_argument("--delay", type=int, default=1, help="max batch delay, ms (default 1)")
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--server-warmup", type=float, default=20.0, help="uncounted load first, s")
    q.set_defaults(func=_cmd_batching)


def _cmd_batching(args: argparse.Namespace) -> int:
    result = bench_batching(
        _weights(args),
        resolve_image(args.image),
        args.variants,
        levels=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        delay_ms=args.delay,
        workers=args.workers,
        server_warmup=args.server_warmup,
    )
    _emit(result, [text_table(HEADER, batching_rows(result))])
    return 0


def _add_study_parsers(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`yolov5face bench crops`, `input-layout` and `fp16` (in-process studies)."""
    q = sub.add_parser(
        "crops",
        help="CPU per request with and without aligned crops (docs/benchmarks.md)",
        epilog="example:\n  yolov5face bench crops --rounds 40",
        formatter_class=fmt,
    )
    q.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    q.set_defaults(func=_cmd_crops)
    q = sub.add_parser(
        "input-layout",
        help="float or uint8 model input on the CPU (docs/experiments.md)",
        epilog="example:\n  yolov5face bench input-layout --rounds 30 --batch 4",
        formatter_class=fmt,
    )
    q.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    q.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    q.set_defaults(func=_cmd_input_layout)
    q = sub.add_parser(
        "fp16",
        help="how far fp16 moves answers and WIDER AP from fp32 (docs/benchmarks.md)",
        epilog="examples:\n  yolov5face bench fp16                 # CPU half kernels, all images\n"
        "  yolov5face bench fp16 --device cuda   # torch CUDA fp16 on a GPU\n"
        "exit status: 0 the fp16 contract holds, 1 it is broken (see 'breaches')",
        formatter_class=fmt,
    )
    q.add_argument("--device", default="cpu", help="torch device of the fp16 side (default cpu)")
    q.add_argument("--limit", type=int, default=None, help="first N images only")
    q.add_argument("--no-ap", action="store_true", help="skip the WIDER AP comparison")
    q.set_defaults(func=_cmd_fp16)


def _cmd_crops(args: argparse.Namespace) -> int:
    from yolov5face.lab.crops_bench import measure

    _emit(measure(args.rounds), [])
    return 0


def _cmd_input_layout(args: argparse.Namespace) -> int:
    from yolov5face.lab.input_layout import measure

    _emit(measure(args.rounds, args.batch), [])
    return 0


def _cmd_fp16(args: argparse.Namespace) -> int:
    from yolov5face.lab.fp16_study import measure

    report = measure(args.device, args.limit, ap=not args.no_ap)
    _emit(report, [])
    return 1 if report["breaches"] else 0
