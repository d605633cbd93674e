"""`yolov5face qps`: bounded asyncio load tester for the face-detection endpoint."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080/predictions/fd1"
DEFAULT_PATH = "/predictions/fd1"
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_MAX_REQUESTS = 1_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
EXCEPTION = "exception"
IMAGE_ERROR = "image_error"  # --local: detect() returned an exception item (HTTP would say 4xx)
HEADERS = {"Content-Type": "application/octet-stream"}

Faces = list[dict[str, Any]]
Image = tuple[str, bytes]
Sender = Callable[[bytes], Awaitable[tuple[int | str, Any]]]
SenderFactory = Callable[[], Sender]
Detect = Callable[[list[bytes]], list[Any]]
Match = Callable[[Faces, Faces], bool]
T = TypeVar("T")

EPILOG = """\
examples:
  # sweep the default levels (1,4,16,64) against a local TorchServe, 20 s each
  yolov5face qps --url http://127.0.0.1:8080 --images data/images/

  # quick check: 200 requests at concurrency 16, compare every answer with the local model
  yolov5face qps --images a.jpg b.jpg --concurrency 16 --requests 200 --verify

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


class Verifier:
    """Compares answers for an image with its expected faces (images without one pass)."""

    def __init__(self, expected: dict[str, Faces], match: Match) -> None:
        self.expected = expected
        self.match = match
        self._good: dict[str, bytes] = {}

    def check(self, key: str, payload: Any) -> bool:
        """True when `payload` (JSON bytes or a face list) matches what `key` should give."""
        want = self.expected.get(key)
        if want is None:
            return True
        raw = isinstance(payload, bytes | bytearray)
        if raw and payload == self._good.get(key):
            return True
        try:
            faces = json.loads(payload) if raw else payload
            good = isinstance(faces, list) and bool(self.match(want, faces))
        except Exception:  # noqa: BLE001 - any undecodable answer is a mismatch
            good = False
        if good and raw:
            self._good[key] = bytes(payload)
        return good


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


_HEADER = re.compile(rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:[ \t]*([^\r]*)")


class HttpConnection(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1 client connection with one request in flight at a time."""

    MAX_HEAD = 65536

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.sent_at = 0.0
        self.lost = False
        self._until_close: tuple[int, int] | None = None  # (status, body start) w/o length
        self._head = b""  # last length-framed response head and its (status, length, keep)
        self._meta = (0, 0, True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            if self._until_close is not None and exc is None:
                status, start = self._until_close
                self.waiter.set_result((status, bytes(self.buf[start:]), False))
            else:
                self.waiter.set_exception(exc or ConnectionError("connection closed by server"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except Exception as exc:  # noqa: BLE001 - a malformed answer fails the request
                self.abort(exc)

    def request(self, data: bytes, now: float) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Send one prepared request; the future gives (status, body, keep_alive)."""
        self.buf.clear()
        self._until_close = None
        self.sent_at = now
        self.waiter = self.loop.create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        return self.waiter

    def expired(self, before: float) -> bool:
        """True when a request sent before `before` is still unanswered."""
        return self.waiter is not None and not self.waiter.done() and self.sent_at < before

    def abort(self, exc: BaseException) -> None:
        """Fail the pending request and drop the connection."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        buf, waiter = self.buf, self.waiter
        assert waiter is not None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.MAX_HEAD:
                raise ValueError("response head too large")
            return
        head = bytes(buf[:end])
        if head == self._head:  # same head as last time (typical): reuse its parse
            status, length, keep = self._meta
            stop = end + 4 + length
            if len(buf) >= stop:
                waiter.set_result((status, bytes(buf[end + 4 : stop]), keep))
            return
        head = head.lower()
        status = int(head[9:12])
        if 100 <= status < 200:  # interim answer: drop it, wait for the real one
            del buf[: end + 4]
            self._parse()
            return
        fields = dict(_HEADER.findall(head))
        conn = fields.get(b"connection", b"")
        keep = conn != b"close" if head.startswith(b"http/1.1") else conn == b"keep-alive"
        start = end + 4
        body: bytes | None
        if status in (204, 304):
            body = b""
        elif b"chunked" in fields.get(b"transfer-encoding", b""):
            body = self._chunked(start)
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            self._head, self._meta = bytes(buf[:end]), (status, length, keep)
            stop = start + length
            body = bytes(buf[start:stop]) if len(buf) >= stop else None
        else:
            self._until_close = (status, start)  # body ends when the server closes
            return
        if body is not None:
            waiter.set_result((status, body, keep))

    def _chunked(self, pos: int) -> bytes | None:
        """Decoded chunked body starting at `pos`, or None while incomplete."""
        buf, parts = self.buf, []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                return b"".join(parts) if buf.find(b"\r\n\r\n", eol) >= 0 else None
            pos = eol + 2 + size + 2
            if len(buf) < pos:
                return None
            parts.append(bytes(buf[eol + 2 : pos - 2]))


async def run_http(
    url: str,
    images: Sequence[Image],
    levels: Sequence[int],
    *,
    method: str = "POST",
    timeout: float = 30.0,
    engine: str = "raw",
    **kw: Any,
) -> list[LevelResult]:
    """Run the levels over HTTP with the `raw` keep-alive client or an aiohttp session."""
    results = []
    for concurrency in levels:
        if engine == "aiohttp" or urlsplit(url).scheme != "http":
            level = await _level_aiohttp(url, images, concurrency, method, timeout, **kw)
        else:
            level = await _level_raw(url, images, concurrency, method, timeout, **kw)
        results.append(level)
    return results


async def _level_aiohttp(
    url: str, images: Sequence[Image], concurrency: int, method: str, timeout: float, **kw: Any
) -> LevelResult:
    """One level through one keep-alive aiohttp session with `limit=concurrency`."""
    import aiohttp
    import yarl

    target = yarl.URL(url)
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=None)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    ) as session:

        async def send(blob: bytes) -> tuple[int, bytes]:
            async with session.request(method, target, data=blob, headers=HEADERS) as resp:
                return resp.status, await resp.read()

        return await run_level(lambda: send, images, concurrency, timeout=timeout, **kw)


async def _level_raw(
    url: str, images: Sequence[Image], concurrency: int, method: str, timeout: float, **kw: Any
) -> LevelResult:
    """One level with one HttpConnection per worker; requests are prepared once per image."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    prepared = {id(b): f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for _, b in images}
    conns: list[HttpConnection] = []
    clock = loop.time

    def new_sender() -> Sender:
        conn: HttpConnection | None = None

        async def send(blob: bytes) -> tuple[int, bytes]:
            nonlocal conn
            if conn is None or conn.lost:
                connect = loop.create_connection(lambda: HttpConnection(loop), host, port)
                conn = (await asyncio.wait_for(connect, timeout))[1]
                conns.append(conn)
            status, body, keep_alive = await conn.request(prepared[id(blob)], clock())
            if not keep_alive:
                conn.abort(ConnectionError("closed"))
            return status, body

        return send

    async def watchdog() -> None:
        """Abort requests older than `timeout` (checked every timeout/8, at most 0.25 s)."""
        while True:
            await asyncio.sleep(min(timeout / 8, 0.25))
            before = clock() - timeout
            conns[:] = [conn for conn in conns if not conn.lost]
            for conn in conns:
                if conn.expired(before):
                    conn.abort(TimeoutError(f"no answer within {timeout:g} s"))

    guard = asyncio.create_task(watchdog())
    try:
        return await run_level(new_sender, images, concurrency, timeout=timeout, **kw)
    finally:
        guard.cancel()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()


async def run_grpc(
    url: str,
    images: Sequence[Image],
    levels: Sequence[int],
    *,
    timeout: float = 30.0,
    model: str = "fd1",
    **kw: Any,
) -> list[LevelResult]:
    """Run the levels over TorchServe's gRPC `Predictions` (bytes under input key `data`)."""
    import grpc

    from yolov5face.tools.client import grpc_modules

    pb2, pb2_grpc = grpc_modules()
    parts = urlsplit(url if "//" in url else f"//{url}")
    target = f"{parts.hostname}:{parts.port or 7070}"
    results = []
    for concurrency in levels:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb2_grpc.InferenceAPIsServiceStub(channel)

            async def send(blob: bytes, stub: Any = stub) -> tuple[int | str, bytes]:
                request = pb2.PredictionsRequest(model_name=model, input={"data": blob})
                try:
                    resp = await stub.Predictions(request, timeout=timeout)
                except grpc.RpcError as exc:
                    return f"grpc:{exc.code().name}", b""
                # gRPC carries no per-request 400 from a batch: an error body counts as 400.
                body = resp.prediction
                return (400 if body.startswith(b'{"error"') else 200), body

            results.append(
                await run_level(lambda send=send: send, images, concurrency, timeout=timeout, **kw)
            )
    return results


async def run_local(
    detect: Detect,
    images: Sequence[Image],
    levels: Sequence[int],
    *,
    timeout: float = 30.0,
    **kw: Any,
) -> list[LevelResult]:
    """Each level: `detect([blob])` (batch of one) in a pool of `concurrency` threads."""
    loop = asyncio.get_running_loop()
    results = []
    for concurrency in levels:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="qps-local") as pool:

            async def send(blob: bytes, pool: ThreadPoolExecutor = pool) -> tuple[int | str, Any]:
                fut = loop.run_in_executor(pool, detect, [blob])
                out = (await asyncio.wait_for(fut, timeout))[0]
                return (IMAGE_ERROR, out) if isinstance(out, BaseException) else (200, out)

            results.append(
                await run_level(lambda s=send: s, images, concurrency, timeout=timeout, **kw)
            )
    return results


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


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


def compute_expected(detect: Detect, images: Sequence[Image]) -> dict[str, Faces]:
    """Expected faces per image from the in-process detector (failing images are left out)."""
    expected: dict[str, Faces] = {}
    for key, blob in images:
        out = detect([blob])[0]
        if isinstance(out, BaseException):
            log.warning("detector failed on %s (%s); its answers are not verified", key, out)
        else:
            expected[key] = out
    return expected


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
    if detect is None and (args.local or (args.verify and expected is None)):
        from yolov5face.pipeline.detector import Detector

        detect = Detector(weights=None, backend="auto").detect
    verifier = None
    if args.verify:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m yolov5face.tools.qps",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main(parser.parse_args()))
