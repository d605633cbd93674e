"""Mutation testing of the request path with mutmut, in a scratch copy of the checkout.

`make mutants` runs this. The tracked files are copied to build/mutants/ (the checkout is never
edited, and other work in it is not disturbed), mutmut's settings are added to the copy's
pyproject.toml, and `mutmut run` mutates MODULES against the fast unit tests in TESTS. The
survivors are printed at the end (`mutmut results`); docs/mutation.md says what each one means.

    python scripts/mutants.py                      # every module below
    python scripts/mutants.py yolov5face/pipeline/nms.py --tests tests/test_postprocess.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutants"
# The request path: JPEG decode, letterbox, the detection heads, NMS, request parsing, settings.
MODULES = [
    "yolov5face/pipeline/decode.py",
    "yolov5face/pipeline/letterbox.py",
    "yolov5face/pipeline/heads.py",
    "yolov5face/pipeline/nms.py",
    "yolov5face/serving/requests.py",
    "yolov5face/settings.py",
]
# Fast tests only: each mutant reruns the tests that cover the mutated function. No Detector
# tests: mutmut forks its children after ONNX Runtime started its threads, which can deadlock.
TESTS = [
    "tests/test_decode.py",
    "tests/test_preprocess.py",
    "tests/test_letterbox.py",
    "tests/test_heads.py",
    "tests/test_nms.py",
    "tests/test_postprocess.py",
    "tests/test_requests.py",
    "tests/test_request_parsing.py",
    "tests/test_settings.py",
]


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def prepare(modules: list[str], tests: list[str], work: Path = WORK) -> Path:
    """A fresh copy of the tracked files with mutmut's settings in `work`; returns it."""
    shutil.rmtree(work, ignore_errors=True)
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in tracked)):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    config = (
        "\n[tool.mutmut]\n"
        f"only_mutate = {_toml_list(modules)}\n"
        'source_paths = ["yolov5face"]\n'
        'also_copy = ["tests", "pyproject.toml", "scripts", "README.md", "docker"]\n'
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not server and not slow", '
        '"-o", "addopts="]\n'
    )
    with open(work / "pyproject.toml", "a") as fh:
        fh.write(config)
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=MODULES, help="files to mutate")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="test files to run")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder")
    args = parser.parse_args(argv)
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).parent / "mutmut")
    if not Path(mutmut).exists():
        print("mutmut is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    work = prepare(args.modules, args.tests, args.work.resolve())
    env = dict(os.environ)
    if "YOLOV5FACE_DATA" not in env:  # the copy has no ../shared beside it
        sys.path.insert(0, str(ROOT))
        from yolov5face.paths import shared_dir

        shared = shared_dir()
        if shared is not None:
            env["YOLOV5FACE_DATA"] = str(shared)
    run = subprocess.run([mutmut, "run", "--max-children", str(args.children)], cwd=work, env=env)
    subprocess.run([mutmut, "results"], cwd=work, env=env)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
