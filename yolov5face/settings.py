"""Every `YOLOV5FACE_*` environment variable: one table, one parsing rule per type.

The Python code reads these variables only through the accessors below (`flag`, `integer`,
`text`, `path`), which look at `os.environ` at each call: tests and `yolov5face serve` change
the environment between calls. `tests/test_settings.py` fails on any other read in the package.

Flags accept 1/0, true/false, yes/no and on/off in any case; an empty or unset variable means
the default; anything else raises `SettingsError` naming the variable and the accepted values.
The same table lists the variables only the Docker entrypoint or compose files read (the shell
reads them), so that `markdown_table()` renders the README's one table of all of them.
`python -m yolov5face.settings` prints that table.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

Kind = Literal["flag", "integer", "text", "path"]
Value = bool | int | str | Path | None

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
PYTHON, ENTRYPOINT, COMPOSE = "Python", "entrypoint", "compose"


class SettingsError(ValueError):
    """An environment variable holds a value its setting does not accept."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: its type, its default and who reads it."""

    name: str
    kind: Kind
    default: Value
    help: str
    readers: tuple[str, ...] = (PYTHON,)
    shown_default: str | None = None  # the README's wording when `default` is computed elsewhere
    choices: tuple[str, ...] = ()
    minimum: int | None = None


_MODEL_CONFIG = "`yolov5face/serving/config/model-config.yaml`"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "YOLOV5FACE_WEIGHTS",
        "path",
        None,
        "checkpoint (.pt/.safetensors) to run and serve; a folder means its `yolov5n-0.5.pt`. "
        "The images set `/weights/yolov5n-0.5.pt`, which the entrypoint checks before starting",
        (PYTHON, ENTRYPOINT),
        shown_default="`weights/yolov5n-0.5.pt`, else `../shared/weights/`",
    ),
    Setting(
        "YOLOV5FACE_DATA",
        "path",
        None,
        "shared test assets (images, goldens, WIDER subset)",
        shown_default="`../shared` beside the checkout, when it exists",
    ),
    Setting(
        "YOLOV5FACE_CACHE",
        "path",
        "~/.cache/yolov5face",
        "exported ONNX models, and TensorRT engines unless `YOLOV5FACE_ENGINE_CACHE` is set",
    ),
    Setting(
        "YOLOV5FACE_ENGINE_CACHE",
        "path",
        None,
        "TensorRT engine cache (images: `/var/lib/yolov5face/engines`, which the entrypoint "
        "makes sure is a writable folder)",
        (PYTHON, ENTRYPOINT),
        shown_default="`$YOLOV5FACE_CACHE/engines`",
    ),
    Setting(
        "YOLOV5FACE_MODEL_STORE",
        "path",
        "model-store",
        "where `yolov5face archive` and `serve` build `fd1.mar` (default of `--model-store`; "
        "images: `/var/lib/yolov5face/model-store`)",
        (PYTHON, ENTRYPOINT),
    ),
    Setting(
        "YOLOV5FACE_BACKEND",
        "text",
        "auto",
        "inference backend; `--backend` wins over it, and it wins over `backend:` in the model "
        "config. `auto`: TensorRT when it is installed and the CUDA driver lists a GPU, else ONNX "
        "Runtime (CUDA provider on a GPU, else CPU). `torch` is for `yolov5face detect` and the "
        "benchmarks only: `serve` refuses it",
        (PYTHON, COMPOSE),
        choices=("auto", "onnxruntime", "torch", "tensorrt"),
    ),
    Setting(
        "YOLOV5FACE_GPU_FALLBACK",
        "flag",
        False,
        "when the TensorRT engine cannot be built before TorchServe starts, serve with ONNX "
        "Runtime (CUDA provider) instead of exiting 1; the failure is logged either way",
        (PYTHON, ENTRYPOINT),
    ),
    Setting(
        "YOLOV5FACE_THREADS",
        "integer",
        1,
        "intra-op threads per serving worker; wins over `threads:` in the model config",
        minimum=1,
    ),
    Setting(
        "YOLOV5FACE_WORKERS",
        "integer",
        None,
        "TorchServe workers for `fd1` (baked into the archive, which is rebuilt when it changes)",
        (PYTHON, COMPOSE),
        shown_default=f"`minWorkers`/`maxWorkers` in {_MODEL_CONFIG} (2)",
        minimum=1,
    ),
    Setting(
        "YOLOV5FACE_BATCH_SIZE",
        "integer",
        None,
        "largest server-side batch (baked into the archive; the GPU compose file uses 8)",
        (PYTHON, COMPOSE),
        shown_default="`batchSize` in the model config (2)",
        minimum=1,
    ),
    Setting(
        "YOLOV5FACE_MAX_BATCH_DELAY",
        "integer",
        None,
        "ms a batch waits to fill up (baked into the archive; the GPU compose file uses 5; "
        "0 makes TorchServe wait its 100 ms default)",
        (PYTHON, COMPOSE),
        shown_default="`maxBatchDelay` in the model config (1)",
        minimum=0,
    ),
    Setting(
        "YOLOV5FACE_SPLIT_BATCHES",
        "flag",
        True,
        "CPU: a worker runs part of its batch on cores no other worker is using; wins over "
        "`split_batches:` in the model config",
    ),
    Setting(
        "YOLOV5FACE_FAST_DECODE",
        "flag",
        False,
        "serving workers decode large JPEGs at 1/2..1/8 scale (faster; boxes change slightly); "
        "wins over `fast_decode:` in the model config",
    ),
    Setting(
        "YOLOV5FACE_BAND",
        "flag",
        True,
        "CPU: ONNX Runtime runs the banded model, which skips the padding rows of the first "
        "layers with the same outputs (docs/architecture.md); off runs the plain one; "
        "`Detector(band=...)` wins over it",
    ),
    Setting(
        "YOLOV5FACE_LAZY_TORCH",
        "flag",
        True,
        "`yolov5face serve` passes it to its workers, which then defer TorchServe's own "
        "`import torch` until something uses torch (~200 MB less per worker); a value the "
        "workers do not accept leaves torch loaded and warns on stderr",
    ),
    Setting(
        "YOLOV5FACE_MANAGEMENT_TOKEN",
        "text",
        None,
        "management API key that `yolov5face ready` and `serve` send when token authorization "
        "is on",
        shown_default="the key in `.serve/key_file.json`",
    ),
    Setting(
        "YOLOV5FACE_CONFIG",
        "path",
        None,
        "TorchServe config the entrypoint passes to `yolov5face serve --config`; unset: the "
        "packaged `yolov5face/serving/config/config.properties`",
        (ENTRYPOINT,),
    ),
    Setting(
        "YOLOV5FACE_REQUIRE_GPU",
        "text",
        "0",
        "the entrypoint refuses to start without a visible GPU (the GPU image sets `1`)",
        (ENTRYPOINT,),
        choices=("0", "1"),
    ),
    Setting(
        "YOLOV5FACE_NVIDIA_SMI",
        "text",
        "nvidia-smi",
        "command the entrypoint's GPU check runs",
        (ENTRYPOINT,),
    ),
    Setting(
        "YOLOV5FACE_PYTHON",
        "text",
        "python3",
        "interpreter of the entrypoint's CUDA driver check, when the GPU check has no nvidia-smi",
        (ENTRYPOINT,),
    ),
    Setting(
        "YOLOV5FACE_WEIGHTS_DIR",
        "path",
        "../weights",
        "host folder compose mounts at `/weights`",
        (COMPOSE,),
    ),
    Setting(
        "YOLOV5FACE_IMAGE",
        "text",
        "yolov5face:gpu",
        "image compose runs (`docker/docker-compose.cpu.yml`: `yolov5face:cpu`)",
        (COMPOSE,),
    ),
    Setting(
        "YOLOV5FACE_HTTP_PORT",
        "text",
        "8080",
        "host port of the inference REST API in compose; `ADDRESS:PORT` binds one host address",
        (COMPOSE,),
    ),
    Setting(
        "YOLOV5FACE_MANAGEMENT_PORT",
        "text",
        "8081",
        "host port of the management REST API in compose (bound to 127.0.0.1 only)",
        (COMPOSE,),
    ),
    Setting(
        "YOLOV5FACE_METRICS_PORT",
        "text",
        "8082",
        "host port of the metrics API in compose; `ADDRESS:PORT` binds one host address",
        (COMPOSE,),
    ),
    Setting(
        "YOLOV5FACE_GRPC_PORT",
        "text",
        "7070",
        "host port of gRPC inference in compose; `ADDRESS:PORT` binds one host address",
        (COMPOSE,),
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The table entry of `name`; a KeyError for a variable the table does not list."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not in yolov5face/settings.py's table") from None


def _python_setting(name: str, kind: Kind) -> Setting:
    entry = setting(name)
    if PYTHON not in entry.readers:
        raise KeyError(f"{name} is read by the {'/'.join(entry.readers)} only, not by Python")
    if entry.kind != kind:
        raise TypeError(f"{name} is a {entry.kind} setting, not a {kind}")
    return entry


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def parse_flag(value: str | bool | int, where: str) -> bool:
    """A flag by the one rule (1/0, true/false, yes/no, on/off, any case); `where` names it."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise SettingsError(
        f"{where}={value!r} is not a flag: use one of {'/'.join(TRUE)} or {'/'.join(FALSE)} "
        "(any case), or leave it empty for the default"
    )


def flag(name: str, default: bool | None = None) -> bool:
    """`$name` as a flag; unset or empty gives `default`, else the table's default."""
    entry = _python_setting(name, "flag")
    raw = _raw(name)
    if not raw:
        return bool(entry.default if default is None else default)
    return parse_flag(raw, name)


def integer(name: str, default: int | None = None) -> int | None:
    """`$name` as an integer; unset or empty gives `default`, else the table's default."""
    entry = _python_setting(name, "integer")
    raw = _raw(name)
    if not raw:
        return cast(int | None, entry.default if default is None else default)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if entry.minimum is not None and value < entry.minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {entry.minimum}")
    return value


def text(name: str, default: str | None = None) -> str | None:
    """`$name` as text, checked against its choices; unset or empty gives the default."""
    entry = _python_setting(name, "text")
    raw = _raw(name)
    if not raw:
        return cast(str | None, entry.default if default is None else default)
    if entry.choices and raw not in entry.choices:
        raise SettingsError(f"{name}={raw!r}: choose one of {', '.join(entry.choices)}")
    return raw


def path(name: str, default: str | os.PathLike | None = None) -> Path | None:
    """`$name` as a path (`~` expanded); unset or empty gives the default (None: no default)."""
    entry = _python_setting(name, "path")
    raw = _raw(name) or (default if default is not None else entry.default)
    return None if raw is None else Path(cast(str, raw)).expanduser()


def _shown_type(entry: Setting) -> str:
    if entry.choices:
        return ", ".join(f"`{c}`" for c in entry.choices)
    if entry.kind == "integer" and entry.minimum is not None:
        return f"integer ≥ {entry.minimum}"
    return entry.kind


def _shown_default(entry: Setting) -> str:
    if entry.shown_default is not None:
        return entry.shown_default
    if isinstance(entry.default, bool):
        return "`1`" if entry.default else "`0`"
    return "none" if entry.default is None else f"`{entry.default}`"


def markdown_table() -> str:
    """The table as Markdown: variable, type, default, who reads it, what it does."""
    lines = [
        "| variable | type | default | read by | what it does |",
        "|---|---|---|---|---|",
    ]
    for entry in SETTINGS:
        cells = (
            f"`{entry.name}`",
            _shown_type(entry),
            _shown_default(entry),
            ", ".join(entry.readers),
            entry.help,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
