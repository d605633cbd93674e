"""This project's torch2trt converter for the channel shuffle, keeping the batch axis dynamic.

torch2trt's own `torch.stack` converter unsqueezes each input with `reshape_dims` copied from the
traced shape, batch included, so `interleave_channels` (stack + reshape) would fix the engine's
batch to the traced one. This converter writes the same permutation with the batch dimension
as 0 in every reshape, which TensorRT's shuffle layer reads as "copy the input's dimension".
"""

from __future__ import annotations

from dataclasses import dataclass

KEEP = 0  # in a TensorRT shuffle's reshape_dims: copy this dimension from the input


@dataclass(frozen=True)
class ShufflePlan:
    """TensorRT layers for interleave_channels(a, b) with a and b of shape (N, C, H, W)."""

    unsqueeze: tuple[int, ...]  # reshape of a and b each: (N, C, 1, H, W)
    axis: int  # concatenation axis: (N, C, 2, H, W)
    merge: tuple[int, ...]  # final reshape: (N, 2C, H, W)


def shuffle_plan(channels: int, height: int, width: int) -> ShufflePlan:
    """The layers' static dimensions; only the batch (axis 0) is left to the input."""
    return ShufflePlan(
        unsqueeze=(KEEP, channels, 1, height, width),
        axis=2,
        merge=(KEEP, 2 * channels, height, width),
    )


_registered = False


def register() -> None:
    """Register the converter with torch2trt (idempotent). Needs torch2trt and TensorRT."""
    global _registered
    if _registered:
        return
    from torch2trt.torch2trt import add_missing_trt_tensors, tensorrt_converter

    @tensorrt_converter("yolov5face.model.network.interleave_channels")
    def _convert_interleave_channels(ctx) -> None:
        a, b = ctx.method_args[:2]
        channels, height, width = (int(d) for d in a.shape[1:])
        plan = shuffle_plan(channels, height, width)
        parts = []
        for tensor in add_missing_trt_tensors(ctx.network, [a, b]):
            layer = ctx.network.add_shuffle(tensor)
            layer.reshape_dims = plan.unsqueeze
            parts.append(layer.get_output(0))
        concat = ctx.network.add_concatenation(parts)
        concat.axis = plan.axis
        merge = ctx.network.add_shuffle(concat.get_output(0))
        merge.reshape_dims = plan.merge
        ctx.method_return._trt = merge.get_output(0)

    _registered = True
