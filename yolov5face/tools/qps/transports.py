"""How `yolov5face qps` sends: a lean keep-alive HTTP/1.1 client, aiohttp, gRPC, in-process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from yolov5face.tools.qps.load import LevelResult, Sender, run_level
from yolov5face.tools.qps.verify import Detect, Image

IMAGE_ERROR = "image_error"  # --local: detect() returned an exception item (HTTP would say 4xx)
HEADERS = {"Content-Type": "application/octet-stream"}


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

    from yolov5face.tools.client import GRPC_MESSAGE_BYTES, grpc_modules

    pb2, pb2_grpc = grpc_modules()
    parts = urlsplit(url if "//" in url else f"//{url}")
    target = f"{parts.hostname}:{parts.port or 7070}"
    results = []
    for concurrency in levels:
        limits = [
            ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES),
        ]
        async with grpc.aio.insecure_channel(target, options=limits) as channel:
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
