"""Build TensorRT engines, once per host, before serving: ONNX parser (default) or torch2trt.

Both routes build one engine with a dynamic batch profile (1, opt, max), where opt = max = the
served batch size (TorchServe never sends more). The ONNX route builds from the uint8-input
graph (yolov5face/convert/uint8_input.py); torch2trt takes float input. TensorRT, torch and
torch2trt are imported lazily; the key, profile and cache logic run without them.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yolov5face.convert.engine_cache import EngineCache, EngineKey, default_cache_dir
from yolov5face.convert.uint8_input import FLOAT_LAYOUT, UINT8_LAYOUT

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30
METHODS = ("onnx", "torch2trt")


class EngineMissing(RuntimeError):
    """No engine for this key in the cache, and this caller may not build one."""


@dataclass(frozen=True)
class BuildTarget:
    """The builder and device an engine is made for (part of its key)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def local_target() -> BuildTarget:
    """This host's TensorRT version and first GPU, asked of the driver (no torch, no pycuda)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(
            "TensorRT is not installed: engines are built in the GPU image "
            "(docker/Dockerfile.gpu) or where NVIDIA's tensorrt package is installed"
        ) from exc
    from yolov5face.backends.cuda_driver import gpus

    found = gpus()
    if not found:
        raise RuntimeError("no CUDA device: a TensorRT engine needs an NVIDIA GPU and driver")
    return BuildTarget(trt.__version__, found[0].name, found[0].compute_capability)


def engine_profile(batch_size: int) -> tuple[int, int, int]:
    """Batch sizes (min, opt, max) for a server whose batches hold at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return 1, batch_size, batch_size


def engine_key(
    source: str | os.PathLike,
    profile: tuple[int, int, int],
    fp16: bool,
    target: BuildTarget,
    method: str = "onnx",
) -> EngineKey:
    """The cache key of the engine built from `source` (the float ONNX, or the checkpoint)."""
    from yolov5face.model.checkpoint import sha256_file

    if method not in METHODS:
        raise ValueError(f"unknown engine method {method!r}; choose from {', '.join(METHODS)}")
    return EngineKey(
        source_sha256=sha256_file(source),
        precision="fp16" if fp16 else "fp32",
        profile=tuple(profile),  # type: ignore[arg-type]
        input_layout=UINT8_LAYOUT if method == "onnx" else FLOAT_LAYOUT,
        tensorrt_version=target.tensorrt_version,
        gpu_name=target.gpu_name,
        compute_capability=target.compute_capability,
        method=method,
    )


def build_engine_onnx(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    profile: tuple[int, int, int],
    fp16: bool = True,
    workspace: int = WORKSPACE_BYTES,
) -> None:
    """Parse the uint8-input form of the ONNX model; build one engine for the batch profile."""
    import onnx
    import tensorrt as trt

    from yolov5face.convert.onnx import INPUT_NAME
    from yolov5face.convert.uint8_input import uint8_input_model

    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    model = uint8_input_model(onnx.load(str(onnx_path))).SerializeToString()
    if not parser.parse(model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast fp16: building anyway as asked")
        config.set_flag(trt.BuilderFlag.FP16)
    tensor = next(
        network.get_input(i)
        for i in range(network.num_inputs)
        if network.get_input(i).name == INPUT_NAME
    )
    _, h, w, c = tensor.shape  # uint8 NHWC
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(INPUT_NAME, *[(b, h, w, c) for b in profile])
    config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    Path(out).write_bytes(bytes(serialized))


def build_engine_torch2trt(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    profile: tuple[int, int, int],
    img_size: int = 320,
    fp16: bool = True,
) -> None:
    """Convert the torch model with torch2trt into one dynamic-batch engine; write it.

    Needs torch2trt with TensorRT 10 support (commit 4e820ae, docker/Dockerfile.gpu). The
    channel shuffle gets this project's converter, which keeps the batch axis dynamic
    (yolov5face/convert/torch2trt_converters.py). The engine takes float32 NCHW RGB input.
    """
    import tensorrt as trt
    import torch
    from torch2trt import torch2trt

    from yolov5face.convert.onnx import INPUT_NAME, OUTPUT_NAME
    from yolov5face.convert.torch2trt_converters import register
    from yolov5face.model.checkpoint import load_model

    register()
    model = load_model(weights).cuda().eval()
    shapes = [(b, 3, img_size, img_size) for b in profile]
    x = torch.rand(*shapes[1], device="cuda")
    with torch.inference_mode():
        trt_model = torch2trt(
            model,
            [x],
            fp16_mode=fp16,
            min_shapes=[shapes[0]],
            opt_shapes=[shapes[1]],
            max_shapes=[shapes[2]],
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            log_level=trt.Logger.WARNING,
        )
        diff = (trt_model(x).float() - model(x).float()).abs().max().item()
    logger.info("torch2trt engine: max |trt - torch| = %.4f at batch %d", diff, shapes[1][0])
    Path(out).write_bytes(bytes(trt_model.engine.serialize()))


Builder = Callable[[Path, Path, tuple[int, int, int], bool], None]


def prepare_engine(
    source: str | os.PathLike,
    batch_size: int,
    fp16: bool = True,
    method: str = "onnx",
    img_size: int = 320,
    cache_dir: str | os.PathLike | None = None,
    build: bool = True,
    target: BuildTarget | None = None,
    builder: Builder | None = None,
) -> tuple[Path, EngineKey]:
    """The engine for `source` (ONNX, or a checkpoint exported first) from the cache, built
    when missing and `build` allows; EngineMissing otherwise.

    The one function the server's pre-start step, `yolov5face export engine` and the workers
    call, so all three compute the same key. `target` and `builder` default to this host's
    TensorRT and GPU; a test can stand another runtime in for them.
    """
    from yolov5face.convert.onnx import cached_onnx

    source = Path(source)
    if method == "torch2trt" and source.suffix == ".onnx":
        raise ValueError("torch2trt converts a checkpoint (.pt/.safetensors), not an ONNX file")
    built_from = source if method == "torch2trt" else cached_onnx(source, img_size)
    profile = engine_profile(batch_size)
    key = engine_key(built_from, profile, fp16, target or local_target(), method)
    cache = EngineCache(cache_dir if cache_dir is not None else default_cache_dir())
    if not build:
        found = cache.lookup(key)
        if found is None:
            raise EngineMissing(
                f"no TensorRT engine for this model, batch size {batch_size}, GPU and TensorRT "
                f"in {cache.directory} (expected {key.filename()}). `yolov5face serve` and the "
                "container build it before TorchServe starts; by hand: yolov5face export engine "
                f"--weights {source} --batch-size {batch_size} --out {cache.directory}"
            )
        return found, key
    if builder is None:
        if method == "onnx":
            builder = build_engine_onnx
        else:

            def builder(src, out, prof, half):
                build_engine_torch2trt(src, out, prof, img_size, half)

    path = cache.get_or_build(key, lambda tmp: builder(built_from, tmp, profile, fp16))
    return path, key


def build_engine_cli(args: argparse.Namespace, weights: str | os.PathLike) -> dict:
    """`yolov5face export engine`: build (or find) the engine in the cache directory `--out`."""
    import time

    start = time.monotonic()
    path, key = prepare_engine(
        weights,
        batch_size=args.batch_size,
        fp16=args.fp16,
        method=args.method,
        img_size=args.img_size,
        cache_dir=args.out,
    )
    return {
        "engine": str(path),
        "key": key.to_json(),
        "seconds": round(time.monotonic() - start, 1),
    }
