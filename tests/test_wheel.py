"""yolov5face as a real package: the wheel serves on its own, and the archive tracks its sources.

The slow test builds the wheel, installs it (no `-e`) into a new virtual environment outside the
checkout and runs that environment's `yolov5face serve` from an empty folder, with only
YOLOV5FACE_WEIGHTS set: handler, TorchServe config and worker site must come from the installed
package. The fast tests check that the archive's rebuild digest covers every file that shapes
the served model or the handler (on a copy of the package: real files are never edited).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from yolov5face.serving import archive
from yolov5face.serving.archive import _SERVED_PARTS, _inputs_digest, served_sources

ROOT = Path(__file__).resolve().parents[1]
# Modules the archive is built from or the workers run: the handler and the export.
ENTRY_MODULES = ("yolov5face.serving.handler", "yolov5face.serving.archive")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def copy_package(dest: Path) -> Path:
    """A copy of the package this test imports (sources and package data)."""
    return Path(shutil.copytree(archive.PACKAGE, dest / "yolov5face", ignore=_IGNORE))


# --------------------------------------------------------------------------
# the rebuild digest (fast)
# --------------------------------------------------------------------------


def test_served_sources_cover_the_served_parts_and_config(tmp_path):
    package = copy_package(tmp_path)
    sources = set(served_sources(package))
    expected = {p for part in _SERVED_PARTS for p in (package / part).rglob("*.py")}
    expected |= set((package / "serving" / "config").iterdir())
    expected |= {package / "serving" / "worker_site" / "sitecustomize.py", package / "__init__.py"}
    assert expected <= sources, sorted(str(p.relative_to(package)) for p in expected - sources)
    assert all(p.is_relative_to(package) for p in sources)


def _module_file(package: Path, dotted: str) -> Path | None:
    parts = dotted.split(".")[1:]
    base = package.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_files(package: Path, source: Path) -> set[Path]:
    """Files of `package` that `source` imports anywhere (also inside functions)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "yolov5face":
                continue
            # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            for depth in range(1, name.count(".") + 2):
                module = _module_file(package, ".".join(name.split(".")[:depth]))
                if module is not None:
                    found.add(module)
    return found


def test_served_sources_cover_everything_the_handler_and_export_import(tmp_path):
    """The import closure of the handler and the archive builder is inside the digest."""
    package = copy_package(tmp_path)
    todo = [_module_file(package, name) for name in ENTRY_MODULES]
    closure: set[Path] = set()
    while todo:
        source = todo.pop()
        if source not in closure:
            closure.add(source)
            todo += _imported_files(package, source)
    assert package / "pipeline" / "detector.py" in closure  # the walk does reach the model
    missing = closure - set(served_sources(package))
    assert not missing, sorted(str(p.relative_to(package)) for p in missing)


def test_digest_changes_with_any_byte_of_any_served_file(tmp_path):
    package = copy_package(tmp_path)
    config = {"batchSize": 2}
    base = _inputs_digest("w" * 64, 320, config, package)
    assert _inputs_digest("x" * 64, 320, config, package) != base  # the weights
    assert _inputs_digest("w" * 64, 640, config, package) != base
    assert _inputs_digest("w" * 64, 320, {"batchSize": 4}, package) != base
    unchanged = []
    for source in served_sources(package):
        data = source.read_bytes()
        source.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        if _inputs_digest("w" * 64, 320, config, package) == base:
            unchanged.append(str(source.relative_to(package)))
        source.write_bytes(data)
    assert not unchanged, unchanged
    assert _inputs_digest("w" * 64, 320, config, package) == base
    (package / "pipeline" / "planted.py").write_text("X = 1\n")  # a new served module
    assert _inputs_digest("w" * 64, 320, config, package) != base


# --------------------------------------------------------------------------
# the wheel, installed and serving (slow, real TorchServe)
# --------------------------------------------------------------------------

MARKER = "# test_wheel: this handler comes from the installed wheel\n"


def build_wheel(tmp_path: Path) -> Path:
    """Build the wheel offline from a copy of the sources, with a marker planted in the handler."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "yolov5face", src / "yolov5face", ignore=_IGNORE)
    handler = src / "yolov5face" / "serving" / "handler.py"
    handler.write_text(handler.read_text() + MARKER)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("yolov5face-*.whl")
    return wheel


def make_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new venv with the wheel installed; the project venv's packages visible, not installed.

    The `.pth` line adds this venv's site-packages to the new one's path; `.pth` files in an
    added path are not processed, so the project's editable yolov5face is not reachable.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", wheel], check=True)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = Path(purelib)
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


@pytest.mark.slow
@pytest.mark.server
def test_installed_wheel_serves_the_goldens(tmp_path, weights, images, shared):
    import psutil
    import requests

    from yolov5face.serving.launcher import ServerProcess, private_listeners
    from yolov5face.tools.compare import golden_problems

    python, site = make_venv(tmp_path, build_wheel(tmp_path))
    installed = site / "yolov5face"
    empty = tmp_path / "run"
    empty.mkdir()
    probe = "import json, yolov5face, ts; print(json.dumps([yolov5face.__file__, ts.__file__]))"
    out = subprocess.run(
        [python, "-c", probe], cwd=empty, env={}, check=True, capture_output=True, text=True
    )
    package_file, ts_file = map(Path, json.loads(out.stdout))
    assert package_file == installed / "__init__.py", package_file
    assert not package_file.is_relative_to(ROOT) and Path(ts_file).is_file()

    # The new venv's bin first; the project venv's bin last, so a `torchserve` of another
    # environment is on PATH (its workers would import the checkout): serve must not use it.
    system_path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != python.parent]
    path = [str(python.parent), *system_path, str(Path(sys.executable).parent)]
    listeners, urls = private_listeners()
    env = {
        "PATH": os.pathsep.join(path),
        "HOME": str(tmp_path / "home"),  # a fresh ONNX cache too
        "YOLOV5FACE_WEIGHTS": str(weights),
        **listeners,
    }
    store, log = tmp_path / "store", tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [python.parent / "yolov5face", "-v", "serve", "--model-store", store],
            cwd=empty,
            env=env,  # not over os.environ: nothing of this session leaks in
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, empty, urls, log, name="installed yolov5face serve")
    try:
        server.wait_workers("fd1", 2, timeout=300)
        server.remember_descendants()
        cmdlines = [p.cmdline() for p in server.descendants.values() if p.is_running()]
        workers = [c for c in cmdlines if any(a.endswith("model_service_worker.py") for a in c)]
        assert workers and all(c[0] == str(python) for c in workers), workers
        frontend = next(c for c in cmdlines if "org.pytorch.serve.ModelServer" in c)
        config = frontend[frontend.index("-f") + 1]
        assert config == str(installed / "serving" / "config" / "config.properties"), config

        with zipfile.ZipFile(store / "fd1.mar") as zf:
            mar_handler = zf.read("handler.py")
        assert mar_handler == (installed / "serving" / "handler.py").read_bytes()
        assert mar_handler.decode().endswith(MARKER)

        problems = {}
        photos = sorted(p for p in images.iterdir() if p.name != "bad_image.jpg")
        assert len(photos) >= 6, photos
        for photo in photos:
            resp = requests.put(
                f"{server.http}/predictions/fd1", data=photo.read_bytes(), timeout=60
            )
            assert resp.status_code == 200, (photo.name, resp.status_code, resp.text)
            golden = shared / "golden" / "seed320" / f"{photo.name}.json"
            problems[photo.name] = golden_problems(json.loads(golden.read_text()), resp.json())
        assert not any(problems.values()), problems
        bad = (images / "bad_image.jpg").read_bytes()
        resp = requests.put(f"{server.http}/predictions/fd1", data=bad, timeout=60)
        assert resp.status_code == 400, resp.text
    finally:
        rc = server.stop(grace=60, group=False)  # serve itself must stop its TorchServe
    assert rc == 0, server.tail()
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(store) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, leftovers
