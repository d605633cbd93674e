"""Archive building and serve preconditions (no server started here)."""

import zipfile

import pytest
import yaml

from yolov5face.serving.archive import build_archive
from yolov5face.serving.launcher import ServeError, check_java, verify_weights


def test_archive_contents_and_rebuild_only_on_change(weights, tmp_path, monkeypatch):
    monkeypatch.delenv("YOLOV5FACE_BATCH_SIZE", raising=False)
    mar = build_archive(weights, tmp_path)
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        config = yaml.safe_load(zf.read("model-config.yaml"))
    expected = {"fd1.onnx", "fd1.band.onnx", "handler.py", "model-config.yaml"}
    assert expected | {"MAR-INF/MANIFEST.json"} <= names
    assert config["batchSize"] == 2 and config["handler"]["backend"] == "auto"
    stamp = mar.stat().st_mtime_ns
    assert build_archive(weights, tmp_path).stat().st_mtime_ns == stamp  # inputs unchanged
    monkeypatch.setenv("YOLOV5FACE_BATCH_SIZE", "4")
    rebuilt = build_archive(weights, tmp_path)
    assert rebuilt.stat().st_mtime_ns != stamp
    with zipfile.ZipFile(rebuilt) as zf:
        assert yaml.safe_load(zf.read("model-config.yaml"))["batchSize"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fd1-build")]


def _identity(path):
    """A file's identity: a rebuild replaces the file (new inode) and stamps it anew."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _input_size(mar) -> list:
    import onnx

    with zipfile.ZipFile(mar) as zf:
        graph = onnx.load_from_string(zf.read("fd1.onnx")).graph
    return [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][2:]


def test_rebuild_on_new_weights_image_size_and_force(weights, tmp_path, monkeypatch):
    """The archive is rebuilt when the weights' bytes or the image size change, or on force."""
    from yolov5face.model.checkpoint import load_model, save_model

    monkeypatch.delenv("YOLOV5FACE_BATCH_SIZE", raising=False)
    store = tmp_path / "store"
    mar = build_archive(weights, store)
    first = _identity(mar)
    resaved = tmp_path / "resaved.pt"  # the same model, other bytes (our own format)
    save_model(load_model(weights, fuse=False), resaved)
    assert _identity(build_archive(resaved, store)) != first
    second = _identity(mar)
    assert _identity(build_archive(resaved, store)) == second  # unchanged: reused
    assert _input_size(build_archive(resaved, store, img_size=640)) == [640, 640]
    third = _identity(mar)
    assert third != second
    assert _identity(build_archive(resaved, store, img_size=640)) == third
    assert _identity(build_archive(resaved, store, img_size=640, force=True)) != third


def test_java_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServeError, match="openjdk-17-jre-headless"):
        check_java()


def test_weights_checksum_is_enforced(tmp_path):
    fake = tmp_path / "yolov5n-0.5.pt"
    fake.write_bytes(b"not the real weights")
    with pytest.raises(ServeError, match="checksum mismatch"):
        verify_weights(fake)
    with pytest.raises(ServeError, match="YOLOV5FACE_WEIGHTS"):
        verify_weights(tmp_path / "missing.pt")
