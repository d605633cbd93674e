"""Checkpoint loading: the official pickle via the restricted unpickler, refusals, own format."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from model_configs import get_config

from yolov5face.model.checkpoint import CheckpointError, load_model, read_checkpoint, save_model


def test_official_checkpoint_loads(weights):
    ckpt = read_checkpoint(weights)
    assert ckpt.config["width_multiple"] == 0.5
    assert ckpt.state["anchors"].reshape(-1).tolist() == sum(
        get_config("yolov5n-0.5")["anchors"], []
    )
    model = load_model(weights, fuse=False)
    assert sum(p.numel() for p in model.parameters()) == 447_456
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _torch_zip(tmp_path, payload: bytes, name="evil.pt"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


class _SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_reduce_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _SystemCall(f"touch {marker}")}, protocol=protocol)
    assert b"system" in payload
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(_torch_zip(tmp_path, payload))
    assert not marker.exists()


def test_eval_and_unknown_globals_are_refused(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"refused: it references (__builtin__|builtins)\.eval"
    ):
        read_checkpoint(_torch_zip(tmp_path, pickle.dumps(_Eval(), protocol=2)))
    evil = pickle.dumps(io.BytesIO, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(_torch_zip(tmp_path, evil, "other.pt"))


def test_plain_torch_save_of_other_things_is_refused(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a module we do not know
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_safetensors_round_trip(weights, tmp_path):
    model = load_model(weights, fuse=False)
    out = tmp_path / "m.safetensors"
    save_model(model, out)
    again = load_model(out)
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        np.testing.assert_allclose(again(x).numpy(), model.fuse()(x).numpy(), atol=1e-4)
