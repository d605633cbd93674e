"""Run-time registration is closed: the workflow and model APIs cannot load code (issue 23.2).

A real TorchServe with the shipped config. A real workflow archive whose handler writes a marker
file when a worker imports it is offered the way the attack went (`POST /workflows?url=file:///
<any folder>/model-store/x.mar`) and through variants: `..`, symlinks, `file://` elsewhere, a
local http server, the server's own store, and `POST /models`. Each must be refused, no marker
written, and the model store left exactly as it was. The server runs with `TS_ALLOWED_URLS` set
to the old, wide pattern: the environment must not reopen the hole either.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from servers import Server, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

OLD_PATTERN = r"^file:///.*/model-store/[^/]+\.mar$"
NOT_ALLOWED = "does not match any allowed URL(s)"


def write_workflow(path: Path, name: str, marker: Path) -> Path:
    """A minimal TorchServe 0.12 workflow archive: one function node whose module writes `marker`.

    `.war` is a zip; any other name is read by TorchServe as a tar.gz whose first path component
    is stripped.
    """
    manifest = {
        "createdOn": "01/01/2024 00:00:00",
        "description": "test payload",
        "archiverVersion": "0.2.1",
        "workflow": {"workflowName": name, "specFile": "spec.yaml", "handler": "handler.py"},
    }
    files = {
        "WAR-INF/MANIFEST.json": json.dumps(manifest),
        "spec.yaml": "models:\n  min-workers: 1\n  max-workers: 1\ndag:\n  evil: []\n",
        "handler.py": (
            "from pathlib import Path\n\n"
            f"Path({str(marker)!r}).write_text('handler ran')\n\n\n"
            "def evil(data, context):\n    return data\n"
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".war":
        with zipfile.ZipFile(path, "w") as zf:
            for member, text in files.items():
                zf.writestr(member, text)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for member, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"wf/{member}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class Target:
    server: Server
    store: Path
    markers: Path
    places: dict[str, str]
    baseline: dict[str, str]


def store_state(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.iterdir()}


@pytest.fixture(scope="module")
def target(tmp_path_factory, weights) -> Target:
    from yolov5face.serving.archive import build_archive

    root = tmp_path_factory.mktemp("attack")
    store = root / "server" / "model-store"
    build_archive(weights, store)
    markers = root / "markers"
    markers.mkdir()
    attacker, elsewhere, web = root / "attacker", root / "elsewhere", root / "web"

    def payload(path: Path, name: str) -> Path:
        return write_workflow(path, name, markers / name)

    for i in (1, 3, 4):
        payload(attacker / "model-store" / f"x{i}.mar", f"v{i}")
    payload(attacker / "model-store" / "x2.war", "v2")
    payload(elsewhere / "x5.mar", "v5")
    (attacker / "link").mkdir()
    (attacker / "link" / "model-store").symlink_to(elsewhere)
    (attacker / "model-store" / "x6.mar").symlink_to(payload(elsewhere / "p6.tgz", "v6"))
    payload(elsewhere / "x7.war", "v7")
    (attacker / "into").mkdir()
    (attacker / "into" / "model-store").symlink_to(store)
    payload(web / "model-store" / "x8.mar", "v8")
    payload(web / "x9.war", "v9")
    payload(attacker / "model-store" / "m1.mar", "m1")

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(web))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = start_server(
        root / "run", weights, store, workers=1, extra_env={"TS_ALLOWED_URLS": OLD_PATTERN}
    )
    try:
        srv.wait_ready(workers=1)
        places = {
            "attacker": str(attacker),
            "elsewhere": str(elsewhere),
            "store": str(store),
            "web": f"http://127.0.0.1:{httpd.server_address[1]}",
        }
        yield Target(srv, store, markers, places, store_state(store))
    finally:
        httpd.shutdown()
        assert srv.stop() == 0, srv.log.read_text()[-3000:]


# (API, URL template, status TorchServe 0.12 answers when the URL is refused)
ATTACKS = {
    "exact-attack": ("workflows", "file://{attacker}/model-store/x1.mar", 404),
    "war-zip": ("workflows", "file://{attacker}/model-store/x2.war", 404),
    "dotdot": ("workflows", "file://{attacker}/model-store/../model-store/x3.mar", 404),
    "dotdot-out-of-store": ("workflows", "file://{store}/../../attacker/model-store/x4.mar", 404),
    "symlinked-folder": ("workflows", "file://{attacker}/link/model-store/x5.mar", 404),
    "symlinked-archive": ("workflows", "file://{attacker}/model-store/x6.mar", 404),
    "file-elsewhere": ("workflows", "file://{elsewhere}/x7.war", 404),
    "file-system": ("workflows", "file:///etc/passwd", 404),
    "http-mar": ("workflows", "{web}/model-store/x8.mar", 404),
    "http-war": ("workflows", "{web}/x9.war", 404),
    "symlink-into-store": ("workflows", "file://{attacker}/into/model-store/fd1.mar", 404),
    "own-store": ("workflows", "file://{store}/fd1.mar", 404),
    # A bare name is looked up in the store (the workflow store defaults to it); fd1.mar is no
    # workflow archive, and TorchServe says so with a 500. Nothing is copied or deleted.
    "bare-name": ("workflows", "fd1.mar", 500),
    "models-file": ("models", "file://{attacker}/model-store/m1.mar", 405),
    "models-http": ("models", "{web}/model-store/x8.mar", 405),
}


@pytest.fixture
def clean_target(target):
    """The target; then whatever an admitted attempt left is undone, so each is judged alone."""
    yield target
    management = target.server.management
    for workflow in requests.get(f"{management}/workflows", timeout=10).json()["workflows"]:
        requests.delete(f"{management}/workflows/{workflow['workflowName']}", timeout=60)
    for path in target.store.iterdir():
        if path.name not in target.baseline:
            path.unlink()
    for marker in target.markers.iterdir():
        marker.unlink()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_runtime_registration_is_refused(clean_target, name):
    target = clean_target
    api, template, status = ATTACKS[name]
    url = template.format(**target.places)
    resp = requests.post(f"{target.server.management}/{api}", params={"url": url}, timeout=120)
    assert not list(target.markers.iterdir()), f"a registered handler ran: {resp.text}"
    assert store_state(target.store) == target.baseline, f"the model store changed: {resp.text}"
    assert resp.status_code == status, resp.text
    if status == 404:  # refused by allowed_urls, before anything was downloaded or unpacked
        assert NOT_ALLOWED in resp.json()["message"], resp.text
    workflows = requests.get(f"{target.server.management}/workflows", timeout=10).json()
    assert workflows["workflows"] == []
    models = requests.get(f"{target.server.management}/models", timeout=10).json()
    assert [m["modelName"] for m in models["models"]] == ["fd1"]
