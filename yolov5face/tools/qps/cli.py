"""`yolov5face qps`: bounded asyncio load tester for the face-detection endpoint."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from yolov5face.tools.qps.load import DEFAULT_MAX_REQUESTS, run
from yolov5face.tools.qps.transports import run_grpc, run_http, run_local
from yolov5face.tools.qps.verify import (
    Detect,
    Faces,
    Image,
    Match,
    Verifier,
    compute_expected,
    load_golden,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080/predictions/fd1"
DEFAULT_PATH = "/predictions/fd1"
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

EPILOG = """\
examples:
  # sweep the default levels (1,4,16,64) against a local TorchServe, 20 s each
  yolov5face qps --url http://127.0.0.1:8080 --images data/images/

  # quick check: 200 requests at concurrency 16, compare every answer with the local model
  yolov5face qps --images a.jpg b.jpg --concurrency 16 --requests 200 --verify

  # compare every answer with an independent reference: <DIR>/<image file name>.json, checked
  # by the golden rule (IoU pairing and tolerances, descending conf, key order)
  yolov5face qps --images shared/images/ --verify-golden shared/golden/seed320

  # the no-server ceiling: drive Detector.detect in-process with the same levels
  yolov5face qps --images data/images/ --local --concurrency 1,2,4 --duration 10

  # keep a report and a plot
  yolov5face qps --images data/images/ --report qps.json --plot qps.png

HTTP: each worker loops send -> await answer, so concurrency = requests in flight. The default
raw engine keeps one keep-alive HTTP/1.1 connection per worker and sends the prepared request
bytes (body = the raw image, Content-Type application/octet-stream); --engine aiohttp uses one
pooled aiohttp ClientSession instead (about 5x more client CPU per request; https always uses it).
--local: each request is Detector.detect([image]) (a batch of one, no batching across requests)
in a pool of N threads, i.e. the model without HTTP, queueing or serialization; an image the
detector rejects counts as an answered "image_error".
QPS counts answered requests (any status) per second of the counted window; latencies are over
answered requests; "exception" counts connection errors and timeouts; bytes_sent counts request
bodies; client_cpu_s is this process's CPU time in the counted window (cpu % near 100 means the
client, not the server, is the limit).

Only loopback hosts (127.0.0.0/8, localhost, ::1) are accepted unless --allow-remote is given.
Each level runs warmup + at most --duration s (+ --timeout for the last in-flight requests) and
at most --requests counted requests. The last stdout line is a JSON summary; the table, the
progress bar and log messages go to stderr. Exit code: 0 ok, 1 errors or mismatches, 2 bad usage.
"""


def normalize_url(url: str) -> str:
    """Add http:// when no scheme and /predictions/fd1 when no path; reject other schemes."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def is_loopback(url: str) -> bool:
    """True when the URL's host is localhost, 127.0.0.0/8 or ::1 (no name resolution)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def collect_images(items: Sequence[str]) -> list[Image]:
    """Read files as given and *.jpg/*.jpeg/*.png directly inside directories, sorted."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise ValueError(f"no such file or directory: {item}")
    if not paths:
        raise ValueError(f"no images found in {' '.join(items)}")
    return [(str(p), p.read_bytes()) for p in paths]


def format_table(levels: Sequence[dict[str, Any]]) -> str:
    """Human-readable table of level summaries (cpu % = this process's CPU over the window)."""
    cols = ("conc", "qps", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests", "ok", "mismatch")
    lines = ["".join(f"{c:>10}" for c in (*cols, "cpu %")) + "  errors"]
    for lv in levels:
        vals = [lv["concurrency"], f"{lv['qps']:.1f}"]
        ms = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
        vals += ["-" if lv[k] is None else f"{lv[k]:.2f}" for k in ms]
        vals += [lv["requests"], lv["ok"], lv["mismatches"]]
        vals += [f"{100 * lv['client_cpu_s'] / max(lv['elapsed_s'], 1e-3):.0f}"]
        errs = " ".join(f"{k}:{v}" for k, v in lv["errors"].items()) or "-"
        lines.append("".join(f"{v:>10}" for v in vals) + "  " + errs)
    return "\n".join(lines)


def write_plot(path: str, summary: dict[str, Any]) -> None:
    """PNG of QPS and p50/p99 latency against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = summary["levels"]
    conc = [lv["concurrency"] for lv in levels]
    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    ax_q.plot(conc, [lv["qps"] for lv in levels], "o-")
    ax_q.set(xlabel="concurrency", ylabel="requests / s", title="QPS")
    for key in ("p50_ms", "p99_ms"):
        ax_l.plot(conc, [np.nan if lv[key] is None else lv[key] for lv in levels], "o-", label=key)
    ax_l.set(xlabel="concurrency", ylabel="ms", title="latency")
    ax_l.legend()
    for ax in (ax_q, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.grid(True, alpha=0.3)
    fig.suptitle(summary["url"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    args: argparse.Namespace,
    *,
    expected: dict[str, Faces] | None = None,
    detect: Detect | None = None,
    match: Match | None = None,
) -> int:
    """Run the load test; `expected`/`detect`/`match` replace the model and comparator if given."""
    try:
        images = collect_images(args.images)
        url = "local" if args.local else normalize_url(args.url)
    except ValueError as exc:
        log.error("qps: %s", exc)
        return 2
    if not args.local and not args.allow_remote and not is_loopback(url):
        log.error("qps: refusing non-loopback host in %s (pass --allow-remote to target it)", url)
        return 2
    if args.verify and args.verify_golden is not None:
        log.error("qps: --verify and --verify-golden are two references: pass one")
        return 2
    if args.verify_golden is not None:
        if expected is None:
            try:
                expected = load_golden(args.verify_golden, images)
            except ValueError as exc:
                log.error("qps: %s", exc)
                return 2
        if match is None:
            from yolov5face.tools.compare import matches_golden as match
    verify = args.verify or args.verify_golden is not None
    if detect is None and (args.local or (verify and expected is None)):
        from yolov5face.pipeline.detector import Detector

        detect = Detector(weights=None, backend="auto").detect
    verifier = None
    if verify:
        if expected is None:
            assert detect is not None
            expected = compute_expected(detect, images)
        if match is None:
            from yolov5face.tools.compare import faces_match as match
        verifier = Verifier(expected, match)
    kw: dict[str, Any] = {
        "duration": args.duration,
        "max_requests": args.requests,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "verifier": verifier,
        "progress": True,
    }
    log.info("qps: %d images -> %s at concurrency %s", len(images), url, args.concurrency)
    if args.local:
        assert detect is not None
        results = run(run_local(detect, images, args.concurrency, **kw))
    elif args.grpc:
        results = run(run_grpc(args.url, images, args.concurrency, **kw))
    else:
        results = run(
            run_http(url, images, args.concurrency, method=args.method, engine=args.engine, **kw)
        )
    summary = {"url": url, "levels": [r.summary() for r in results]}
    sys.stderr.write(format_table(summary["levels"]) + "\n")
    line = json.dumps(summary)
    if args.report:
        Path(args.report).write_text(line + "\n")
    if args.plot:
        write_plot(args.plot, summary)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 1 if any(r.errors or r.mismatches for r in results) else 0


def _levels(text: str) -> list[int]:
    """argparse type: comma-separated positive concurrency levels."""
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 1 or max(levels) > 4096:
        raise argparse.ArgumentTypeError("levels must be integers in 1..4096")
    return levels


def _bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """argparse type: number of `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}")
        return value

    return parse


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the qps options to `p`."""
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"endpoint (default {DEFAULT_URL}; a URL without path gets {DEFAULT_PATH})",
    )
    p.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="FILE|DIR",
        help="image files and/or directories (*.jpg, *.jpeg, *.png); requests cycle",
    )
    p.add_argument(
        "--concurrency",
        type=_levels,
        default=list(DEFAULT_CONCURRENCY),
        metavar="N,N,..",
        help="concurrency levels run in turn (default 1,4,16,64)",
    )
    p.add_argument(
        "--duration",
        type=_bounded(float, 0.01, 3600),
        default=20.0,
        metavar="S",
        help="counted seconds per level (default 20)",
    )
    p.add_argument(
        "--requests",
        type=_bounded(int, 1, DEFAULT_MAX_REQUESTS),
        default=DEFAULT_MAX_REQUESTS,
        metavar="N",
        help=f"at most N counted requests per level (default {DEFAULT_MAX_REQUESTS})",
    )
    p.add_argument(
        "--warmup",
        type=_bounded(float, 0, 600),
        default=2.0,
        metavar="S",
        help="uncounted seconds before each level (default 2)",
    )
    p.add_argument(
        "--timeout",
        type=_bounded(float, 0.001, 600),
        default=30.0,
        metavar="S",
        help="per-request timeout (default 30)",
    )
    p.add_argument("--method", choices=("POST", "PUT"), default="POST", type=str.upper)
    p.add_argument(
        "--engine",
        choices=("raw", "aiohttp"),
        default="raw",
        help="HTTP client: raw = lean keep-alive HTTP/1.1 client, one connection per worker "
        "(default; https always uses aiohttp), aiohttp = one pooled aiohttp ClientSession",
    )
    p.add_argument("--report", metavar="FILE", help="also write the JSON summary here")
    p.add_argument("--plot", metavar="PNG", help="write QPS and p50/p99 latency vs concurrency")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare each 200 answer with the in-process Detector's result",
    )
    p.add_argument(
        "--verify-golden",
        metavar="DIR",
        help="compare each 200 answer with DIR/<image file name>.json (an independent reference, "
        "e.g. shared/golden/seed320) by the golden rule, descending conf and key order included; "
        "images without a file there are not verified",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="no HTTP: call Detector.detect([image]) in a pool of N threads",
    )
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback host")
    p.add_argument(
        "--grpc",
        action="store_true",
        help="use TorchServe's gRPC inference API; --url is then host:port (e.g. 127.0.0.1:7070)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `qps` subcommand."""
    p = subparsers.add_parser(
        "qps",
        help="measure QPS and latency of the detection endpoint",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(p)
    p.set_defaults(func=main)
