"""The workers' sitecustomize: torch stays unloaded until used, then behaves as usual."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolov5face.serving.launcher import WORKER_SITE, torchserve_env

pytest.importorskip("ts", reason="TorchServe (the serve extra) is not installed")


def run_python(code: str, lazy: str) -> str:
    """stdout of `python -c code` with the workers' PYTHONPATH and YOLOV5FACE_LAZY_TORCH=lazy."""
    env = {**os.environ, "PYTHONPATH": str(WORKER_SITE), "YOLOV5FACE_LAZY_TORCH": lazy}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


WORKER_IMPORTS = (
    "import sys, ts.model_service_worker; print('torch._C' in sys.modules); "
    "import torch; print('torch._C' in sys.modules); "
    "from torch import nn; print(int(nn.ReLU()(torch.tensor([-1.0, 2.0])).sum()))"
)


def test_torchserve_worker_imports_leave_torch_unloaded():
    assert run_python(WORKER_IMPORTS, "1") == ["False", "False", "2"]


def test_turned_off_torch_loads_eagerly():
    assert run_python(WORKER_IMPORTS, "0") == ["True", "True", "2"]


def test_tensor_check_in_torchserve_still_works():
    code = (
        "import torch; from ts.protocol import otf_message_handler as o; "
        "print(isinstance(torch.zeros(1), o.torch.Tensor), isinstance('x', o.torch.Tensor))"
    )
    assert run_python(code, "1") == ["True", "False"]


def test_serve_environment_puts_the_site_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.delenv("YOLOV5FACE_LAZY_TORCH", raising=False)
    env = torchserve_env(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(WORKER_SITE), "/somewhere/else"]
    assert env["YOLOV5FACE_LAZY_TORCH"] == "1"
    monkeypatch.setenv("YOLOV5FACE_LAZY_TORCH", "0")
    assert torchserve_env(tmp_path)["YOLOV5FACE_LAZY_TORCH"] == "0"


def test_a_shadowed_sitecustomize_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.SHADOWED_RAN = True\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WORKER_SITE), str(tmp_path)]),
        "YOLOV5FACE_LAZY_TORCH": "1",
    }
    code = "import builtins, sys; print(builtins.SHADOWED_RAN, type(sys.modules['torch']).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["True", "_DeferredModule"], out.stderr


@pytest.mark.parametrize("lazy,deferred", [("on", True), ("Yes", True), ("OFF", False)])
def test_the_flag_takes_every_spelling(lazy, deferred):
    code = "import sys; print(type(sys.modules.get('torch')).__name__)"
    assert run_python(code, lazy) == ["_DeferredModule" if deferred else "NoneType"]


def test_a_bad_value_leaves_torch_undeferred_and_warns():
    env = {**os.environ, "PYTHONPATH": str(WORKER_SITE), "YOLOV5FACE_LAZY_TORCH": "maybe"}
    code = "import sys; print(type(sys.modules.get('torch')).__name__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["NoneType"]
    assert "YOLOV5FACE_LAZY_TORCH='maybe'" in proc.stderr and "not deferred" in proc.stderr


def test_workers_start_where_torch_is_not_installed(tmp_path):
    """The CPU image built with INSTALL_TORCH=0: TorchServe's worker imports torch only for an
    isinstance check, so a stand-in lets it start; any real use still fails loudly."""
    site_packages = Path(importlib.util.find_spec("ts").origin).parents[1]
    no_torch = tmp_path / "site-packages"
    no_torch.mkdir()
    for entry in site_packages.iterdir():
        if not entry.name.startswith(("torch", "_distutils_hack")):
            (no_torch / entry.name).symlink_to(entry)
    code = (
        # what `site` does at start-up, with a site-packages that has no torch
        f"import sys; sys.path[:0] = [{str(WORKER_SITE)!r}, {str(no_torch)!r}]; "
        "import sitecustomize; "
        "import ts.model_service_worker; from ts.protocol import otf_message_handler as o; "
        "print(isinstance(object(), o.torch.Tensor), hasattr(o.torch, '__file__')); "
        "import torch\n"
        "try:\n    torch.zeros(1)\nexcept ModuleNotFoundError as exc:\n    print(exc.name)"
    )
    env = {**os.environ, "YOLOV5FACE_LAZY_TORCH": "1"}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "torch"]
