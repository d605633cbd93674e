"""The `yolov5face` command line, run as a real subprocess."""

import json
import os
import subprocess
import sys

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


def test_missing_weights_says_how_to_get_them(images, tmp_path):
    env = {"YOLOV5FACE_WEIGHTS": "", "YOLOV5FACE_DATA": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "yolov5face", "detect", str(images / "zidane.jpg")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if "no weights found" not in proc.stderr:
        pytest.skip("a weights/ copy exists in the repository checkout")
    assert proc.returncode == 2
    assert "YOLOV5FACE_WEIGHTS" in proc.stderr and "weights/README.md" in proc.stderr
