"""Build TensorRT engines: through the ONNX parser (default) or torch2trt (fixed-batch buckets).

Everything here imports TensorRT, pycuda, torch and torch2trt lazily; none of it is usable
without an NVIDIA GPU and TensorRT, and none of it ran on the CPU-only development machines.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from yolov5face.convert.engine_cache import EngineCache, EngineKey

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32)
WORKSPACE_BYTES = 1 << 30


def _trt_logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, via pycuda or torch."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return device.name(), f"{major}.{minor}"
    except ImportError:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        return torch.cuda.get_device_name(0), f"{major}.{minor}"


def engine_key(
    model_sha256: str, img_size: int, max_batch: int, fp16: bool, method: str = "onnx"
) -> EngineKey:
    """The cache key of an engine for this model on this machine's GPU and TensorRT."""
    import tensorrt as trt

    name, capability = gpu_identity()
    return EngineKey(
        model_sha256,
        img_size,
        max_batch,
        "fp16" if fp16 else "fp32",
        trt.__version__,
        name,
        capability,
        method,
    )


def build_engine_onnx(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    max_batch: int = 32,
    fp16: bool = True,
    workspace: int = WORKSPACE_BYTES,
) -> None:
    """Parse the ONNX model and build one engine with a batch profile 1..max_batch."""
    import tensorrt as trt

    from yolov5face.convert.onnx import INPUT_NAME

    log = _trt_logger()
    builder = trt.Builder(log)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(Path(onnx_path).read_bytes()):
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
    _, c, h, w = tensor.shape
    profile = builder.create_optimization_profile()
    opt = min(max(1, max_batch // 2), max_batch)
    profile.set_shape(INPUT_NAME, (1, c, h, w), (opt, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    Path(out).write_bytes(bytes(serialized))


def build_engine_torch2trt(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    batch: int,
    img_size: int = 320,
    fp16: bool = True,
    module_out: str | os.PathLike | None = None,
) -> None:
    """Convert the torch model with torch2trt for one fixed batch size; write its engine.

    torch2trt's dynamic-batch support is limited, so this builds one engine per batch bucket.
    The TRTModule is saved (state dict) and reloaded to check it round-trips; the serialized
    engine is written to `out` so serving needs neither torch nor torch2trt.
    """
    import torch
    from torch2trt import TRTModule, torch2trt

    from yolov5face.model.checkpoint import load_model

    model = load_model(weights).cuda().eval()
    x = torch.rand(batch, 3, img_size, img_size, device="cuda")
    with torch.inference_mode():
        trt_model = torch2trt(
            model,
            [x],
            fp16_mode=fp16,
            max_batch_size=batch,
            max_workspace_size=WORKSPACE_BYTES,
            input_names=["images"],
            output_names=["predictions"],
        )
    if module_out is not None:
        torch.save(trt_model.state_dict(), module_out)
        reloaded = TRTModule()
        reloaded.load_state_dict(torch.load(module_out, weights_only=True))
        with torch.inference_mode():
            diff = (reloaded(x).float() - model(x).float()).abs().max().item()
        logger.info("torch2trt batch %d: max |trt - torch| = %.4f", batch, diff)
    Path(out).write_bytes(bytes(trt_model.engine.serialize()))


def bucket_for(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """Smallest bucket that holds a batch of n (requests beyond the largest are chunked)."""
    return next((b for b in buckets if b >= n), buckets[-1])


def build_engine_cli(args: argparse.Namespace, weights: str | os.PathLike) -> dict:
    """`yolov5face export engine`: build into the cache directory `--out`; returns the paths."""
    from yolov5face.convert.onnx import cached_onnx
    from yolov5face.model.checkpoint import sha256_file

    cache = EngineCache(args.out)
    sha = sha256_file(weights)
    built: dict[str, str] = {}
    if args.method == "onnx":
        onnx_path = cached_onnx(weights, args.img_size, Path(args.out) / "onnx")
        key = engine_key(sha, args.img_size, args.max_batch, args.fp16, "onnx")
        path = cache.get_or_build(
            key, lambda tmp: build_engine_onnx(onnx_path, tmp, args.max_batch, args.fp16)
        )
        built[str(args.max_batch)] = str(path)
    else:
        for batch in [b for b in BUCKETS if b <= args.max_batch]:
            key = engine_key(sha, args.img_size, batch, args.fp16, "torch2trt")
            module = Path(args.out) / f"torch2trt-b{batch}.pth"
            path = cache.get_or_build(
                key,
                lambda tmp, b=batch, m=module: build_engine_torch2trt(
                    weights, tmp, b, args.img_size, args.fp16, m
                ),
            )
            built[str(batch)] = str(path)
    return {"method": args.method, "engines": built}
