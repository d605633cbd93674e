"""The `qps` load tester against a small aiohttp server of known behaviour, and in-process."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from yolov5face.tools.qps.cli import add_parser, collect_images, is_loopback, normalize_url
from yolov5face.tools.qps.load import LevelResult

FACE = {
    "xywh_ratio": [0.5, 0.5, 0.2, 0.3],
    "conf": 0.9,
    "landmarks_ratio": [0.45, 0.45, 0.55, 0.45, 0.5, 0.5, 0.46, 0.56, 0.54, 0.56],
}
WRONG = {**FACE, "xywh_ratio": [0.1, 0.1, 0.05, 0.05]}
OTHER = {  # a second, weaker face elsewhere: golden answers list faces by descending conf
    "xywh_ratio": [0.2, 0.2, 0.1, 0.1],
    "conf": 0.6,
    "landmarks_ratio": [0.18, 0.18, 0.22, 0.18, 0.2, 0.2, 0.18, 0.22, 0.22, 0.22],
}
PAIR = [FACE, OTHER]
SLEEP_S = 0.02


class Server:
    """aiohttp app on a free loopback port, in its own thread with its own loop."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.content_types: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = self.runner.addresses[0][1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _count(self, request: web.Request) -> int:
        body = await request.read()
        self.content_types.add(request.headers.get("Content-Type", ""))
        self.hits[request.path] += 1
        self.bytes[request.path] += len(body)
        return self.hits[request.path]

    async def fixed(self, request: web.Request) -> web.Response:
        await self._count(request)
        await asyncio.sleep(SLEEP_S)
        return web.json_response([FACE])

    async def every3(self, request: web.Request) -> web.Response:
        if await self._count(request) % 3 == 0:
            return web.json_response({"error": "bad image"}, status=400)
        return web.json_response([FACE])

    async def wrong(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.json_response([WRONG])

    async def pair(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.json_response(PAIR)

    async def ascending(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.json_response(PAIR[::-1])

    async def keys(self, request: web.Request) -> web.Response:
        await self._count(request)
        order = ("conf", "xywh_ratio", "landmarks_ratio")
        return web.json_response([{k: f[k] for k in order} for f in PAIR])

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        await self._count(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        body = json.dumps([FACE]).encode()
        await resp.write(body[:10])
        await resp.write(body[10:])
        await resp.write_eof()
        return resp

    async def close_conn(self, request: web.Request) -> web.Response:
        await self._count(request)
        resp = web.json_response([FACE])
        resp.force_close()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await self._count(request)
        await asyncio.sleep(1.0)
        return web.json_response([FACE])

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        for path, handler in (("/fixed", self.fixed), ("/every3", self.every3)):
            app.router.add_route("*", path, handler)
        for path, handler in (("/wrong", self.wrong), ("/chunked", self.chunked)):
            app.router.add_route("*", path, handler)
        app.router.add_route("*", "/close", self.close_conn)
        for path, handler in (("/pair", self.pair), ("/ascending", self.ascending)):
            app.router.add_route("*", path, handler)
        app.router.add_route("*", "/keys", self.keys)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/predictions/fd1", self.fixed)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8" + b"a" * 100)
    (tmp_path / "b.png").write_bytes(b"\x89PNG" + b"b" * 200)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def parse(cmdline: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="yolov5face")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["qps", *cmdline.split()])


def run_main(capsys: pytest.CaptureFixture[str], cmdline: str, **kw) -> tuple[int, dict]:
    """Run the subcommand through its parser; return exit code and the last stdout line."""
    args = parse(cmdline)
    code = args.func(args, **kw)
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}


@pytest.mark.parametrize("engine", ["raw", "aiohttp"])
def test_counts_and_errors_by_status(server: Server, image_dir: Path, capsys, engine) -> None:
    before = server.hits["/every3"], server.bytes["/every3"]
    code, out = run_main(
        capsys,
        f"--url {server.url('/every3')} --images {image_dir} --concurrency 1,3 --requests 9 "
        f"--warmup 0 --duration 10 --engine {engine}",
    )
    assert code == 1
    assert [lv["concurrency"] for lv in out["levels"]] == [1, 3]
    for lv in out["levels"]:
        assert lv["requests"] == 9 and lv["ok"] == 6 and lv["errors"] == {"400": 3}
        assert lv["mismatches"] == 0 and lv["qps"] > 0
    assert server.hits["/every3"] - before[0] == 18
    sent = sum(lv["bytes_sent"] for lv in out["levels"])
    assert sent == server.bytes["/every3"] - before[1]
    assert server.content_types <= {"application/octet-stream"}


@pytest.mark.parametrize("engine", ["raw", "aiohttp"])
def test_latency_percentiles_and_default_path(server: Server, image_dir, capsys, engine) -> None:
    url = f"http://localhost:{server.port}"  # no path -> /predictions/fd1 (the fixed endpoint)
    before = server.hits["/predictions/fd1"]
    code, out = run_main(
        capsys,
        f"--url {url} --images {image_dir / 'a.jpg'} --concurrency 2 --requests 20 "
        f"--warmup 0.1 --method PUT --engine {engine}",
    )
    assert code == 0 and out["url"].endswith("/predictions/fd1")
    (lv,) = out["levels"]
    assert lv["requests"] == lv["ok"] == 20 and lv["errors"] == {}
    assert lv["bytes_sent"] == 20 * 102
    assert server.hits["/predictions/fd1"] - before > 20  # warmup requests went out too
    floor = SLEEP_S * 1e3 * 0.9  # asyncio may wake up to a clock tick early
    # timing-ok: a lower bound that causality gives (the server sleeps before answering)
    assert floor <= lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] <= lv["max_ms"]
    assert lv["qps"] > 0


def test_summary_percentiles_are_numpy_linear() -> None:
    res = LevelResult(4, elapsed=2.0, requests=100, ok=100)
    res.latencies = [i / 1e3 for i in range(1, 101)]  # 1..100 ms
    s = res.summary()
    assert s["qps"] == 50.0
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]) == (50.5, 90.1, 99.01, 100.0)
    empty = LevelResult(1, elapsed=1.0).summary()
    assert empty["p50_ms"] is None and empty["qps"] == 0.0
    json.dumps(empty)


@pytest.mark.parametrize("engine", ["raw", "aiohttp"])
def test_verify_catches_wrong_and_passes_right(server: Server, image_dir, capsys, engine) -> None:
    images = [str(image_dir / "a.jpg"), str(image_dir / "b.png")]
    expected = {path: [FACE] for path in images}
    common = f"--images {' '.join(images)} --concurrency 4 --requests 12 --warmup 0 --verify"
    common += f" --engine {engine}"
    for path in ("/fixed", "/chunked", "/close"):
        code, out = run_main(capsys, f"--url {server.url(path)} {common}", expected=expected)
        assert (code, out["levels"][0]["ok"], out["levels"][0]["mismatches"]) == (0, 12, 0), path
    code, out = run_main(capsys, f"--url {server.url('/wrong')} {common}", expected=expected)
    assert code == 1 and out["levels"][0]["mismatches"] == 12 and out["levels"][0]["ok"] == 12


def test_verify_golden_checks_pairing_score_order_and_key_order(
    server: Server, image_dir: Path, tmp_path: Path, capsys
) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "a.jpg.json").write_text(json.dumps(PAIR))
    images = f"{image_dir / 'a.jpg'} {image_dir / 'b.png'}"  # b.png has no golden: not verified
    common = f"--images {images} --concurrency 2 --requests 8 --warmup 0 --verify-golden {golden}"
    code, out = run_main(capsys, f"--url {server.url('/pair')} {common}")
    assert (code, out["levels"][0]["ok"], out["levels"][0]["mismatches"]) == (0, 8, 0)
    for path in ("/ascending", "/keys", "/fixed"):  # same faces in the wrong order; one missing
        code, out = run_main(capsys, f"--url {server.url(path)} {common}")
        assert (code, out["levels"][0]["ok"], out["levels"][0]["mismatches"]) == (1, 8, 4), path


def test_verify_golden_bad_usage(image_dir: Path, tmp_path: Path, caplog) -> None:
    jpg = image_dir / "a.jpg"
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "a.jpg.json").write_text("{}")
    cases = {
        f"--verify-golden {tmp_path / 'missing'}": "no such golden folder",
        f"--verify-golden {image_dir}": "none of the images has a golden answer",
        f"--verify-golden {tmp_path / 'golden'}": "not a JSON list",
        f"--verify --verify-golden {tmp_path / 'golden'}": "two references",
    }
    for flags, message in cases.items():
        caplog.clear()
        args = parse(f"--url http://127.0.0.1:9/x --images {jpg} --warmup 0 {flags}")
        assert args.func(args) == 2, flags
        assert message in caplog.text, flags


def test_requests_stops_after_exactly_n(server: Server, image_dir: Path, capsys) -> None:
    before = server.hits["/fixed"]
    code, out = run_main(
        capsys,
        f"--url {server.url('/fixed')} --images {image_dir} --concurrency 4 --requests 7 "
        "--warmup 0",
    )
    assert code == 0 and out["levels"][0]["requests"] == 7
    assert server.hits["/fixed"] - before == 7


def test_duration_bounds_the_run(server: Server, image_dir: Path, tmp_path: Path, capsys) -> None:
    report, plot = tmp_path / "out.json", tmp_path / "out.png"
    code, out = run_main(
        capsys,
        f"--url {server.url('/fixed')} --images {image_dir} --concurrency 2 --duration 0.5 "
        f"--warmup 0 --report {report} --plot {plot}",
    )
    (lv,) = out["levels"]
    # the duration, not the request cap, ended the level: 2 workers * 0.5 s / 20 ms = at most ~50
    assert code == 0 and 0 < lv["requests"] < 200
    assert lv["elapsed_s"] >= 0.5  # timing-ok: a lower bound, the level runs for --duration
    assert json.loads(report.read_text()) == out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("engine", ["raw", "aiohttp"])
def test_timeouts_and_refused_count_as_exceptions(server, image_dir, capsys, engine) -> None:
    code, out = run_main(
        capsys,
        f"--url {server.url('/slow')} --images {image_dir} --concurrency 2 --duration 0.3 "
        f"--warmup 0 --timeout 0.2 --engine {engine}",
    )
    (lv,) = out["levels"]
    assert code == 1 and lv["ok"] == 0 and lv["errors"] == {"exception": lv["requests"]}
    assert lv["requests"] >= 2
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = run_main(
        capsys,
        f"--url http://127.0.0.1:{port}/x --images {image_dir} --concurrency 1 --requests 5 "
        f"--warmup 0 --duration 2 --engine {engine}",
    )
    (lv,) = out["levels"]
    assert code == 1 and lv["requests"] == 5 and lv["errors"] == {"exception": 5}
    assert lv["p50_ms"] is None


def test_refuses_non_loopback_before_connecting(
    server: Server, image_dir: Path, capsys, caplog
) -> None:
    args = parse(f"--url http://203.0.113.1:8080 --images {image_dir} --warmup 0")
    assert args.func(args) == 2
    assert capsys.readouterr().out == ""
    assert "refusing non-loopback" in caplog.text and "--allow-remote" in caplog.text
    # 0.0.0.0 is not a loopback address, yet on Linux connecting to it reaches this host's
    # listeners: refused, the server sees no request; allowed, the same URL reaches it.
    url = f"http://0.0.0.0:{server.port}/fixed"
    before = server.hits["/fixed"]
    args = parse(f"--url {url} --images {image_dir} --warmup 0 --requests 2 --concurrency 1")
    assert args.func(args) == 2 and capsys.readouterr().out == ""
    assert server.hits["/fixed"] == before
    args = parse(
        f"--url {url} --images {image_dir} --warmup 0 --requests 2 --concurrency 1 --allow-remote"
    )
    assert args.func(args) == 0 and server.hits["/fixed"] == before + 2


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://127.8.9.10", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080/", True),
        ("http://[::ffff:127.0.0.1]:80", True),
        ("http://203.0.113.1:8080", False),
        ("http://10.0.0.1", False),
        ("http://example.com", False),
        ("http://localhost.example.com", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_normalize_url() -> None:
    assert normalize_url("127.0.0.1:8080") == "http://127.0.0.1:8080/predictions/fd1"
    assert normalize_url("http://localhost:1/") == "http://localhost:1/predictions/fd1"
    assert normalize_url("http://localhost:1/p?q=1") == "http://localhost:1/p?q=1"
    with pytest.raises(ValueError):
        normalize_url("ftp://localhost/x")


def test_bad_usage(image_dir: Path, tmp_path: Path) -> None:
    args = parse(f"--images {tmp_path / 'missing.jpg'}")
    assert args.func(args) == 2
    (tmp_path / "empty").mkdir()
    args = parse(f"--images {tmp_path / 'empty'}")
    assert args.func(args) == 2
    for bad in ("--concurrency 0", "--concurrency a,b", "--duration -1", "--method GET"):
        with pytest.raises(SystemExit) as exc:
            parse(f"--images {image_dir} {bad}")
        assert exc.value.code == 2


def test_collect_images(image_dir: Path) -> None:
    got = collect_images([str(image_dir), str(image_dir / "notes.txt")])
    assert [Path(p).name for p, _ in got] == ["a.jpg", "b.png", "notes.txt"]
    assert got[0][1].startswith(b"\xff\xd8")


def test_local_mode_drives_callable(image_dir: Path, capsys) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def detect(blobs: list[bytes]) -> list:
        time.sleep(0.005)
        with lock:
            calls.append(len(blobs))
        return [ValueError("bad image") if b.startswith(b"\x89PNG") else [FACE] for b in blobs]

    jpg = str(image_dir / "a.jpg")
    code, out = run_main(
        capsys,
        f"--local --images {jpg} --concurrency 1,4 --requests 10 --warmup 0 --verify",
        detect=detect,
        expected={jpg: [WRONG]},
    )
    assert code == 1 and out["url"] == "local"
    for lv in out["levels"]:
        assert lv["requests"] == lv["ok"] == lv["mismatches"] == 10
        assert lv["p50_ms"] >= 5 * 0.9  # timing-ok: a lower bound, detect sleeps 5 ms
    assert calls == [1] * 20
    code, out = run_main(
        capsys,
        f"--local --images {image_dir} --concurrency 2 --requests 6 --warmup 0 --verify",
        detect=detect,
    )
    (lv,) = out["levels"]  # expected computed by `detect`: b.png fails, a.jpg matches
    assert code == 1 and lv["ok"] == 3 and lv["errors"] == {"image_error": 3}
    assert lv["mismatches"] == 0


class _Canned(socketserver.StreamRequestHandler):
    """Answers each request with canned bytes chosen by path (hand-written HTTP)."""

    def handle(self) -> None:
        body = json.dumps([FACE]).encode()
        while True:
            request_line = self.rfile.readline()
            if not request_line:
                return
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            path = request_line.split()[1]
            ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            if path == b"/interim":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok)
            elif path == b"/split":  # head and body in several segments
                for piece in (ok[:7], ok[7:30], ok[30:-5], ok[-5:]):
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(0.002)
            elif path == b"/http10":  # no length: the body ends when the server closes
                self.wfile.write(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body
                )
                return
            elif path == b"/garbage":
                self.wfile.write(b"HTTP/1.1 abc\r\n\r\n")
                return
            self.wfile.flush()


@pytest.mark.parametrize("path", ["/interim", "/split", "/http10", "/garbage"])
def test_raw_engine_reads_unusual_answers(image_dir: Path, capsys, path: str) -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Canned) as srv:
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        jpg = str(image_dir / "a.jpg")
        code, out = run_main(
            capsys,
            f"--url http://127.0.0.1:{srv.server_address[1]}{path} --images {jpg} "
            "--concurrency 2 --requests 8 --warmup 0 --duration 5 --timeout 2 --verify",
            expected={jpg: [FACE]},
        )
        srv.shutdown()
    (lv,) = out["levels"]
    assert lv["requests"] == 8 and lv["mismatches"] == 0
    if path == "/garbage":
        assert code == 1 and lv["errors"] == {"exception": 8}
    else:
        assert code == 0 and lv["ok"] == 8


@pytest.mark.parametrize("reference", ["in-process", "golden"])
def test_local_verify_with_real_detector(
    weights: Path, images: Path, golden_dir: Path, capsys, monkeypatch, reference: str
) -> None:
    monkeypatch.setenv("YOLOV5FACE_WEIGHTS", str(weights))
    verify = "--verify" if reference == "in-process" else f"--verify-golden {golden_dir}"
    code, out = run_main(
        capsys,
        f"--local --images {images / 'test.jpg'} {images / 'bad_image.jpg'} --concurrency 2 "
        f"--requests 6 --warmup 0 --duration 20 {verify}",
    )
    (lv,) = out["levels"]  # requests alternate: test.jpg answers, bad_image.jpg is rejected
    assert code == 1 and lv["requests"] == 6 and lv["mismatches"] == 0
    assert lv["ok"] == 3 and lv["errors"] == {"image_error": 3}


def test_local_raising_callable_counts_exceptions(image_dir: Path, capsys) -> None:
    def detect(blobs: list[bytes]) -> list:
        raise RuntimeError("backend down")

    code, out = run_main(
        capsys,
        f"--local --images {image_dir} --concurrency 2 --requests 4 --warmup 0",
        detect=detect,
    )
    (lv,) = out["levels"]
    assert code == 1 and lv["errors"] == {"exception": 4} and lv["qps"] == 0
