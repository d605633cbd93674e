"""The drain's two signals, on real sockets: owed answers per connection, and readiness off."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from yolov5face.serving import readiness
from yolov5face.serving.drain import open_requests

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux only")


def _settle(port: int, expected: int) -> int:
    """open_requests(port) once it equals `expected`, or its last value (bounded poll)."""
    for _ in range(200):  # loopback delivers at once; an ACK may be delayed up to ~40 ms
        owed = open_requests(port)
        if owed == expected:
            return owed
        time.sleep(0.01)
    return open_requests(port)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """(client, server-side socket, server port) of one loopback TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        with client, server:
            yield client, server, port


def test_a_request_is_owed_until_answered(pair):
    client, server, port = pair
    assert open_requests(port) == 0  # connected, nothing sent: idle
    client.sendall(b"PUT /predictions/fd1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert _settle(port, 1) == 1  # in the server's receive queue
    server.recv(1024)
    assert open_requests(port) == 1  # read, not answered
    server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
    assert _settle(port, 0) == 0  # answered (and acknowledged by the client's kernel)
    client.recv(1024)
    client.sendall(b"PUT /predictions/fd1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    server.recv(1024)
    assert open_requests(port) == 1  # the next request on the kept-alive connection


def test_other_ports_do_not_count(pair):
    client, _, port = pair
    client.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
    assert _settle(port, 1) == 1
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert open_requests(unused.getsockname()[1]) == 0


def test_ready_fails_while_draining(tmp_path):
    """The marker alone fails readiness, before any request (nothing listens on port 9)."""
    (tmp_path / readiness.DRAINING).touch()
    verdict = readiness.check_ready("http://127.0.0.1:9", "http://127.0.0.1:9", run_dir=tmp_path)
    assert not verdict.ok and "draining" in verdict.reason
