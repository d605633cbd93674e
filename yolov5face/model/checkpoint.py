"""Safe checkpoint loading: upstream pickles through a restricted unpickler, and our own format.

An upstream checkpoint is a whole model pickled by the training code. We never import or run
that code: `find_class` maps each allowed upstream class name onto an inert record tied to one of
our classes, refuses every other global, and the records' plain state (tensors, config dict) is
then loaded into a freshly built `YoloFace`.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_NAME = "yolov5face"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """The checkpoint is malformed, unsupported or refused."""


class _Record:
    """Inert stand-in for a pickled object: keeps constructor args and state, runs nothing."""

    target: str = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"_raw": state}


def _record_type(target: str) -> type[_Record]:
    return type(f"Record[{target}]", (_Record,), {"target": target})


# Upstream class -> the class of ours it stands for (checked against the built model).
_MODULE_MAP: dict[tuple[str, str], str] = {
    ("models.yolo", "Model"): "YoloFace",
    ("models.yolo", "Detect"): "Detect",
    ("models.common", "Conv"): "Conv",
    ("models.common", "StemBlock"): "StemBlock",
    ("models.common", "ShuffleV2Block"): "ShuffleV2Block",
    ("models.common", "Bottleneck"): "Bottleneck",
    ("models.common", "C3"): "C3",
    ("models.common", "SPP"): "SPP",
    ("models.common", "Concat"): "Concat",
}
_TORCH_NN = "torch.nn.modules."
_NN_ALLOWED = {
    "conv.Conv2d": "Conv2d",
    "batchnorm.BatchNorm2d": "BatchNorm2d",
    "activation.SiLU": "SiLU",
    "pooling.MaxPool2d": "MaxPool2d",
    "upsampling.Upsample": "Upsample",
    "container.Sequential": "Sequential",
    "container.ModuleList": "ModuleList",
}
_STORAGE_DTYPES = {
    "HalfStorage": np.float16,
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "BFloat16Storage": None,  # no numpy dtype: refused below with a clear message
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Plain numpy arrays appear as metadata (stride, class weights); we keep them inert.
_INERT = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any):
    """Rebuild a tensor view of a storage as a contiguous numpy array."""
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if offset < 0 or needed > storage.size or min(stride) < 0:
        raise CheckpointError("tensor view points outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only an allow-list of names, to inert records or safe builders."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if key == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if key == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if key in {("__builtin__", "set"), ("builtins", "set")}:
            return set
        if key == ("_codecs", "encode"):
            return codecs.encode  # how protocol 2 spells bytes
        if key in _MODULE_MAP:
            return _record_type(_MODULE_MAP[key])
        if module.startswith(_TORCH_NN) and f"{module[len(_TORCH_NN) :]}.{name}" in _NN_ALLOWED:
            return _record_type(_NN_ALLOWED[f"{module[len(_TORCH_NN) :]}.{name}"])
        if key in _INERT:
            return _record_type("inert")
        raise pickle.UnpicklingError(f"checkpoint refused: it references {module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("checkpoint refused: unexpected persistent id")
        _, storage_type, key, _location, _numel = pid
        dtype = _STORAGE_DTYPES.get(storage_type)
        if dtype is None:
            raise pickle.UnpicklingError(f"checkpoint refused: storage type {storage_type}")
        try:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"checkpoint storage {key!r} is missing") from None
        return np.frombuffer(raw, dtype=dtype)


def unpickle_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a torch zip checkpoint with the restricted unpickler (no code is executed)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a torch zip checkpoint (legacy torch.save files are not supported)"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as fh:
            try:
                return _RestrictedUnpickler(fh, archive, prefix).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
                raise CheckpointError(f"{path}: {exc}") from exc


@dataclass
class LoadedCheckpoint:
    """A model config plus its float32 state dict (numpy), ready to build a `YoloFace`."""

    config: dict[str, Any]
    state: dict[str, np.ndarray]
    source: str


def _module_tree(record: _Record, prefix: str = "") -> dict[str, _Record]:
    """Flatten a tree of module records into {dotted name: record}."""
    out = {prefix.rstrip("."): record}
    for name, child in (record.state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Record):
            raise CheckpointError(f"module {prefix}{name} is not a module")
        out.update(_module_tree(child, f"{prefix}{name}."))
    return out


def _validate_config(config: Any) -> dict[str, Any]:
    """Check that a model config is plain data of the expected shape."""
    required = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")
    if not isinstance(config, dict) or any(k not in config for k in required):
        raise CheckpointError("checkpoint has no usable model config (yaml)")
    json.dumps(config)  # plain data only
    return {k: config[k] for k in (*required, "ch") if k in config}


def parse_upstream(obj: Any, source: str) -> LoadedCheckpoint:
    """Turn an unpickled upstream checkpoint (records) into a config and a state dict."""
    model = obj.get("model") if isinstance(obj, dict) else obj
    if isinstance(obj, dict) and obj.get("ema") is not None and model is None:
        model = obj["ema"]
    if not isinstance(model, _Record) or model.target != "YoloFace":
        raise CheckpointError(f"{source}: no yolov5-face model object in the checkpoint")
    config = _validate_config(model.state.get("yaml"))
    tree = _module_tree(model)
    acts = {r.target for r in tree.values() if r.target in {"SiLU"}}
    if any(r.target == "inert" for r in tree.values()):
        raise CheckpointError(f"{source}: unexpected object inside the module tree")
    state: dict[str, np.ndarray] = {}
    detect_name = None
    for name, record in tree.items():
        if record.target == "Detect":
            detect_name = name
        for kind in ("_parameters", "_buffers"):
            for key, value in (record.state.get(kind) or {}).items():
                if value is None:
                    continue
                if not isinstance(value, np.ndarray):
                    raise CheckpointError(f"{source}: {name}.{key} is not a tensor")
                state[f"{name}.{key}" if name else key] = value
    if detect_name is None or not acts:
        raise CheckpointError(f"{source}: model has no Detect layer or no SiLU activations")
    # Anchors: the pixel-unit anchor grid is authoritative (training may have re-fitted them).
    grid = state.pop(f"{detect_name}.anchor_grid", None)
    state.pop(f"{detect_name}.anchors", None)
    if grid is not None:
        state["anchors"] = grid.reshape(len(config["anchors"]), -1, 2)
    state = {
        k: v.astype(np.float32) if v.dtype.kind == "f" else v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    return LoadedCheckpoint(config=config, state=state, source=source)


def _parse_own(path: Path) -> LoadedCheckpoint:
    from safetensors import safe_open

    try:
        opened = safe_open(str(path), framework="numpy")
    except Exception as exc:  # SafetensorError: neither a torch zip nor safetensors
        raise CheckpointError(
            f"{path}: not a checkpoint (neither a torch zip nor {FORMAT_NAME} safetensors): {exc}"
        ) from None
    with opened as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path}: not a {FORMAT_NAME} safetensors file")
        config = _validate_config(json.loads(meta["config"]))
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    return LoadedCheckpoint(config=config, state=state, source=str(path))


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint (upstream .pt or our .safetensors) into config + state, safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or not head.startswith(b"PK"):
        return _parse_own(path)
    return parse_upstream(unpickle_checkpoint(path), str(path))


def load_model(path: str | os.PathLike, fuse: bool = True):
    """Build a `YoloFace` in eval mode, float32, from a checkpoint file."""
    import torch

    from yolov5face.model.network import YoloFace

    ckpt = read_checkpoint(path)
    model = YoloFace(ckpt.config)
    expected = model.state_dict()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ckpt.state.items()}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}")
    model.load_state_dict(state, strict=False)
    model.float().eval()
    return model.fuse() if fuse else model


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save an unfused `YoloFace` as safetensors: state dict plus the config as metadata."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": json.dumps(model.config)}
    save_file(state, str(path), metadata=meta)


# Digests of the official release checkpoints (weights/checksums.sha256 lists the same).
OFFICIAL_SHA256 = {
    "yolov5n-0.5.pt": "9f7cdbcf5cd63f454c47b18e7400a69630b96a01efb7559367e91b6e962ad3bd",
}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
