"""Defers `import torch` in TorchServe worker processes until torch is actually used.

TorchServe's worker imports torch at start-up (ts/protocol/otf_message_handler.py) only to test
whether a handler's return value is a tensor. The fd1 handler returns JSON strings and serves with
ONNX Runtime or TensorRT, so that import is ~200 MB of RSS per worker that nothing uses.
`yolov5face serve` puts this folder on the workers' PYTHONPATH with YOLOV5FACE_LAZY_TORCH=1;
Python runs this file at start-up and registers a stand-in for torch: `import torch` then costs
nothing, and the first attribute read (a torch backend, a tensor response, `import torch.nn`)
imports the real torch, which the stand-in forwards to from then on.
Where torch is not installed at all (the CPU image built with INSTALL_TORCH=0), the stand-in is an
absent module instead: its `Tensor` is a class nothing is an instance of, so TorchServe's worker
starts and answers, and any other use raises ModuleNotFoundError.
YOLOV5FACE_LAZY_TORCH=0 (or off/false/no) turns it off; a value the flag rule does not accept
leaves torch loaded as usual and says so on stderr: a worker must not die of a typo.
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


class _AbsentModule(types.ModuleType):
    """Stands in for a module that is not installed: importing works, using it does not."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        # TorchServe reads only `isinstance(value, torch.Tensor)` (ts/protocol/otf_message_handler)
        self.Tensor = type("Tensor", (), {"__module__": name})

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):  # introspection (hasattr) sees nothing
            raise AttributeError(attr)
        raise ModuleNotFoundError(
            f"No module named {self.__name__!r} (not installed; {self.__name__}.{attr} was used)",
            name=self.__name__,
        )


def defer(name: str) -> None:
    """Put a stand-in for top-level module `name` in sys.modules (no-op if already loaded)."""
    if name in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is None:
        sys.modules[name] = _AbsentModule(name)
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


# A copy of yolov5face/settings.py's flag rule and of this flag's default: this file runs at
# start-up of every TorchServe worker, before anything asked for the package, and must import
# nothing from it (nor what it imports). tests/test_settings.py checks both agree on every value.
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
LAZY_TORCH_DEFAULT = True


def lazy_torch(value: str | None) -> bool | None:
    """YOLOV5FACE_LAZY_TORCH by the settings rule; None for a value the rule does not accept."""
    word = (value or "").strip().lower()
    if not word:
        return LAZY_TORCH_DEFAULT
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    return None


def _main() -> None:
    raw = os.environ.get("YOLOV5FACE_LAZY_TORCH")
    wanted = lazy_torch(raw)
    if wanted is None:
        sys.stderr.write(
            f"yolov5face worker_site: YOLOV5FACE_LAZY_TORCH={raw!r} is not one of "
            f"{'/'.join(TRUE)} or {'/'.join(FALSE)}; torch is not deferred\n"
        )
    elif wanted:
        defer("torch")
    _chain_next_sitecustomize()


if __name__ == "sitecustomize":  # at start-up; a test loads this file under another name
    _main()
