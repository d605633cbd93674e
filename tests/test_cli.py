"""The `yolov5face` command line, run as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args, env=None, check_rc=None):
    proc = subprocess.run(
        [sys.executable, "-m", "yolov5face", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_help_has_examples():
    out = run("detect", "--help", check_rc=0).stdout
    assert "examples:" in out and "--draw" in out
    assert "widerface" in run("eval", "widerface", "--help", check_rc=0).stdout


def test_detect_maps_each_argument(images, golden_names, goldens, weights, tmp_path):
    from yolov5face.tools.compare import golden_problems

    args = [str(images / n) for n in golden_names] + [
        str(images / "bad_image.jpg"),
        str(tmp_path / "missing.jpg"),
    ]
    proc = run(
        "detect", *args, "--weights", str(weights), "--draw", str(tmp_path / "drawn"), check_rc=1
    )
    result = json.loads(proc.stdout)
    assert list(result) == args
    assert "error" in result[str(images / "bad_image.jpg")]
    assert "error" in result[str(tmp_path / "missing.jpg")]
    for name in golden_names:  # the printed JSON keeps the served key and score order
        assert golden_problems(goldens[name], result[str(images / name)]) == [], name
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(golden_names)


def test_detect_all_good_exits_zero(images, weights):
    proc = run(
        "detect",
        str(images / "zidane.jpg"),
        "--weights",
        str(weights),
        "--backend",
        "torch",
        check_rc=0,
    )
    assert len(json.loads(proc.stdout)[str(images / "zidane.jpg")]) == 2


def run_outside(tmp_path, *args, env=None):
    """`python -m yolov5face` from a copy of the package outside any checkout, run in tmp_path.

    The copy has no checkout around it (no weights/ beside it, no ../shared), so the weights
    search finds nothing unless the environment says where they are.
    """
    import shutil

    from yolov5face import paths

    copy = tmp_path / "pkg"
    if not copy.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(paths.__file__).parent, copy / "yolov5face", ignore=ignore)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("YOLOV5FACE_")}
    return subprocess.run(
        [sys.executable, "-m", "yolov5face", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**clean, "PYTHONPATH": str(copy), **(env or {})},
    )


def test_missing_weights_says_how_to_get_them(images, tmp_path):
    proc = run_outside(tmp_path, "detect", str(images / "zidane.jpg"))
    assert proc.returncode == 2, proc.stderr
    assert "no weights found" in proc.stderr, proc.stderr
    assert "YOLOV5FACE_WEIGHTS" in proc.stderr and "weights/README.md" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_weights_env_to_a_missing_file_is_named(images, tmp_path):
    missing = tmp_path / "nowhere" / "yolov5n-0.5.pt"
    env = {"YOLOV5FACE_WEIGHTS": str(missing)}
    proc = run_outside(tmp_path, "detect", str(images / "zidane.jpg"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"YOLOV5FACE_WEIGHTS points to {missing}, which does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def assert_clean_error(proc, code: int, message: str) -> None:
    """Exit `code`, `message` on stderr as a log line (no traceback), nothing on stdout."""
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_detect_url_with_nothing_listening(images):
    from yolov5face.serving.launcher import free_ports

    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    proc = run("detect", str(images / "zidane.jpg"), "--url", url)
    assert_clean_error(proc, 1, f"cannot reach the server at {url}")


@pytest.mark.parametrize(
    "command",
    [
        ["detect", "{image}"],
        ["export", "onnx", "--out", "{tmp}/x.onnx"],
        ["archive", "--model-store", "{tmp}/store"],
        ["serve", "--model-store", "{tmp}/store"],
    ],
    ids=lambda c: c[0],
)
def test_weights_that_are_not_a_checkpoint(images, tmp_path, command):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"this is not a checkpoint\n")
    args = [a.format(image=images / "zidane.jpg", tmp=tmp_path) for a in command]
    proc = run(*args, "--weights", str(bogus))
    assert_clean_error(proc, 2, f"{bogus}: not a checkpoint")
    assert not (tmp_path / "x.onnx").exists()
    assert not (tmp_path / "store" / "fd1.mar").exists()


def test_serve_start_up_error_exits_1(tmp_path):
    """A start-up error (here the official weights' name with other bytes) is exit 1."""
    fake = tmp_path / "yolov5n-0.5.pt"
    fake.write_bytes(b"not the real weights")
    proc = run("serve", "--weights", str(fake), "--model-store", str(tmp_path / "store"))
    assert_clean_error(proc, 1, f"checksum mismatch for {fake}")
    assert not (tmp_path / "store" / "fd1.mar").exists()


def test_ready_with_nothing_listening():
    from yolov5face.serving.launcher import free_ports

    mgmt, http = (f"http://127.0.0.1:{p}" for p in free_ports(2))
    proc = run("ready", "--management-url", mgmt, "--inference-url", http, "--timeout", "2")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ready"] is False and answer["management_url"] == mgmt
    assert mgmt in answer["reason"]
    quiet = run("ready", "-q", "--management-url", mgmt, "--inference-url", http)
    assert (quiet.returncode, quiet.stdout) == (1, "")


@pytest.mark.parametrize("command", ["detect", "ready"])
def test_stdout_closed_early_exits_141_quietly(images, weights, command):
    """`yolov5face ... | head -c0`: stdout's reader is gone; exit 141 like a shell, no traceback."""
    args = {
        "detect": ["detect", str(images / "zidane.jpg"), "--weights", str(weights)],
        "ready": ["ready", "--management-url", "http://127.0.0.1:9", "--timeout", "1"],
    }[command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read what it prints
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yolov5face", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.server
@pytest.mark.slow
def test_serve_exits_1_when_torchserve_stops_before_it_serves(tmp_path, weights):
    """TorchServe that cannot bind its inference port logs it and exits 0; serve says 1."""
    import socket

    from yolov5face.serving.launcher import free_ports

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    mgmt, metrics, grpc, grpc_mgmt = free_ports(4)
    env = {
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{taken.getsockname()[1]}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{mgmt}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "TS_GRPC_INFERENCE_PORT": str(grpc),
        "TS_GRPC_MANAGEMENT_PORT": str(grpc_mgmt),
        "YOLOV5FACE_WORKERS": "1",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "yolov5face", "serve", "--weights", str(weights)]
            + ["--model-store", str(tmp_path / "store")],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=tmp_path,
            timeout=300,
        )
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "TorchServe stopped before fd1 was serving" in proc.stderr
