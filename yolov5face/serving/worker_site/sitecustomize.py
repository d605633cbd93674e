"""Defers `import torch` in TorchServe worker processes until torch is actually used.

TorchServe's worker imports torch at start-up (ts/protocol/otf_message_handler.py) only to test
whether a handler's return value is a tensor. The fd1 handler returns JSON strings and serves with
ONNX Runtime or TensorRT, so that import is ~200 MB of RSS per worker that nothing uses.
`yolov5face serve` puts this folder on the workers' PYTHONPATH with YOLOV5FACE_LAZY_TORCH=1;
Python runs this file at start-up and registers a stand-in for torch: `import torch` then costs
nothing, and the first attribute read (a torch backend, a tensor response, `import torch.nn`)
imports the real torch, which the stand-in forwards to from then on.
Set YOLOV5FACE_LAZY_TORCH=0 to turn it off.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read, then imports the real one."""

    def __getattr__(self, attr: str):
        real = self.__dict__.get("_deferred_real")
        if real is None:
            # importlib.util.LazyLoader cannot do this on 3.11: the `import` statement itself
            # reads __spec__, which loads the module. Here __spec__ is a plain attribute.
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            try:
                real = importlib.import_module(self.__name__)
            except BaseException:
                sys.modules.setdefault(self.__name__, self)
                raise
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer(name: str) -> None:
    """Put a stand-in for top-level module `name` in sys.modules (no-op if absent or loaded)."""
    if name in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is None:
        return
    module = _DeferredModule(name)
    module.__spec__ = spec  # read by the import system; no __path__, so submodules load torch
    sys.modules[name] = module


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize this file shadows, if any (e.g. a distribution's own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get("YOLOV5FACE_LAZY_TORCH") == "1":
    defer("torch")
_chain_next_sitecustomize()
