"""scripts/install_torch.py: the CPU index when it answers, else a CPU build or a clear refusal."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_torch.py"


@pytest.fixture(scope="module")
def install_torch():
    spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def silent_listener():
    """A loopback port that accepts connections (in the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/whl/cpu"
    sock.close()


@pytest.fixture
def answering_index():
    """A loopback HTTP server that answers everything with 404 (an answer all the same)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reachability_probe(install_torch, silent_listener, answering_index):
    assert install_torch.reachable(answering_index, timeout=10)
    assert not install_torch.reachable(f"http://127.0.0.1:{_closed_port()}/whl/cpu", timeout=10)
    # a server that never answers is given up after the timeout, not pip's minutes of retries
    assert not install_torch.reachable(silent_listener, timeout=0.5)


def test_cuda_builds_are_recognised(install_torch):
    def item(name: str, version: str) -> dict:
        return {"metadata": {"name": name, "version": version}}

    cpu = {"install": [item("torch", "2.13.0+cpu"), item("sympy", "1.14.0")]}
    assert install_torch.cuda_packages(cpu) == []
    cuda = {"install": [item("torch", "2.13.0"), item("nvidia-cublas-cu12", "12.8.4.1")]}
    assert install_torch.cuda_packages(cuda) == ["nvidia-cublas-cu12==12.8.4.1"]
    assert install_torch.cuda_packages({"install": [item("torch", "2.5.1+cu121")]})


@pytest.mark.slow
def test_unreachable_index_falls_back_to_a_cpu_build(install_torch, capsys):
    """Here pip's configured index has a CPU torch: the fallback resolves it (dry run)."""
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this environment has a CUDA torch")
    index = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    version = torch.__version__.split("+")[0]
    assert install_torch.main([version, "--index", index, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cannot be reached" in out and "from pip's configured index" in out
