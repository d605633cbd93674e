"""The `yolov5face` command line, run as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path


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
