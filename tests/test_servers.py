"""The test servers' ports cannot race: a port taken before TorchServe binds it means a restart."""

from __future__ import annotations

import socket

import pytest
import requests
from servers import start_server

from yolov5face.serving.launcher import private_listeners

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.mark.parametrize("listener", ["TS_INFERENCE_ADDRESS", "TS_GRPC_INFERENCE_PORT"])
def test_a_port_taken_before_torchserve_binds_it_starts_again_elsewhere(
    tmp_path, weights, listener
):
    """Another process takes a port the first attempt picked: the server comes up on new ports."""
    from yolov5face.serving.archive import build_archive

    store = tmp_path / "store"
    build_archive(weights, store)
    taken: list[socket.socket] = []

    def listeners():
        env, urls = private_listeners()
        if not taken:  # the first attempt: someone else binds one of its ports meanwhile
            sock = socket.socket()
            sock.bind(("127.0.0.1", int(env[listener].rsplit(":", 1)[-1])))
            sock.listen()
            taken.append(sock)
        return env, urls

    srv = start_server(tmp_path / "run", weights, store, workers=1, listeners=listeners)
    try:
        srv.wait_ready(workers=1)
        assert srv.attempts == 2, srv.tail()
        first_log = (tmp_path / "run" / "serve.log.attempt1").read_text(errors="replace")
        assert "Address already in use" in first_log
        port = taken[0].getsockname()[1]
        assert f":{port}" not in srv.http and not srv.grpc.endswith(f":{port}")
        assert requests.get(f"{srv.http}/ping", timeout=10).json()["status"] == "Healthy"
    finally:
        srv.stop()
        for sock in taken:
            sock.close()
