"""PyTorch definition of the yolov5-face networks, built from a layer-list config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03
OUTPUTS_PER_ANCHOR = 16  # box 4 + objectness 1 + landmarks 10 + class 1


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU; the BatchNorm can be folded by `fuse`."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn: nn.Module = _bn(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class StemBlock(nn.Module):
    """Stride-4 stem: a strided conv, then a conv branch and a max-pool branch, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2):
        super().__init__()
        self.stem_1 = Conv(c1, c2, k, s)
        self.stem_2a = Conv(c2, c2 // 2, 1, 1, 0)
        self.stem_2b = Conv(c2 // 2, c2, 3, 2, 1)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = Conv(c2 * 2, c2, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_1(x)
        return self.stem_3(torch.cat((self.stem_2b(self.stem_2a(x)), self.stem_2p(x)), 1))


def _static_chw(x: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) as plain ints: an ONNX trace then bakes them in as constants.

    Only the batch axis stays dynamic; without this every reshape computes its target from
    Shape/Gather/Div nodes at run time (~50 extra nodes that ONNX Runtime runs per batch).
    """
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


def interleave_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ShuffleNet's channel shuffle of `cat((a, b), 1)` with 2 groups: a0, b0, a1, b1, ...

    Stacking on a new axis after the channels and merging it is that permutation written in one
    copy; the exported graph then has one Concat instead of Concat + Transpose, each a full
    pass over the tensor (the network runs ~2-3% faster).
    """
    c, h, w = _static_chw(a)
    return torch.stack((a, b), 2).reshape(-1, 2 * c, h, w)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), transform, concat, shuffle."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, got {stride}")
        self.stride = stride
        c = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                _bn(inp),
                nn.Conv2d(inp, c, 1, 1, 0, bias=False),
                _bn(c),
                nn.SiLU(),
            )
        else:
            self.branch1 = nn.Sequential()
        cin = inp if stride > 1 else c
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin, c, 1, 1, 0, bias=False),
            _bn(c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
            _bn(c),
            nn.Conv2d(c, c, 1, 1, 0, bias=False),
            _bn(c),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            half = _static_chw(x)[0] // 2
            return interleave_channels(x[:, :half], self.branch2(x[:, half:]))
        return interleave_channels(self.branch1(x), self.branch2(x))


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv, with a residual when shapes allow and it is asked for."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with three convs: bottlenecks on one half, a shortcut conv on the other."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1):
        super().__init__()
        c_ = int(c2 * 0.5)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: stride-1 max-pools of several sizes, concatenated."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """1x1 prediction convs per level; outputs raw (undecoded) values, flattened per anchor."""

    def __init__(self, nc: int, anchors: list[list[int]], ch: list[int]):
        super().__init__()
        self.nc = nc
        self.no = nc + 15
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        # (B, na*no, H, W) -> (B, na, no, H, W) -> (B, na, H, W, no) -> (B, na*H*W, no)
        outs = []
        for m, x in zip(self.m, xs):
            _, h, w = _static_chw(x)
            y = m(x).reshape(-1, self.na, self.no, h, w).permute(0, 1, 3, 4, 2)
            outs.append(y.reshape(-1, self.na * h * w, self.no))
        return torch.cat(outs, 1)


_BLOCKS: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "StemBlock": StemBlock,
    "ShuffleV2Block": ShuffleV2Block,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPP": SPP,
}


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class YoloFace(nn.Module):
    """A yolov5-face network: input (B, 3, S, S) float RGB in [0, 1] -> raw (B, N, 16)."""

    def __init__(self, config: dict[str, Any], strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.config = config
        self.strides = strides
        self.model, self.save = _build_layers(config)
        detect = self.model[-1]
        self.register_buffer(
            "anchors", torch.tensor(config["anchors"], dtype=torch.float32).view(detect.nl, -1, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = (
                    outputs[layer.f]
                    if isinstance(layer.f, int)
                    else [x if j == -1 else outputs[j] for j in layer.f]
                )
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x

    def fuse(self) -> YoloFace:
        """Fold every BatchNorm into the conv before it (inference only)."""
        for module in self.modules():
            if isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d):
                module.conv = fuse_conv_bn(module.conv, module.bn)
                module.bn = nn.Identity()
            elif isinstance(module, nn.Sequential):
                _fuse_sequential(module)
        return self


def _build_layers(config: dict[str, Any]) -> tuple[nn.Sequential, set[int]]:
    """Instantiate the layer list, scaling depth and width, tracking channels and saved outputs."""
    gd, gw = config["depth_multiple"], config["width_multiple"]
    nc, anchors = config["nc"], config["anchors"]
    no = (len(anchors[0]) // 2) * (nc + 15)
    channels = [config.get("ch", 3)]
    layers, save = [], set()
    for i, (f, n, name, args) in enumerate(config["backbone"] + config["head"]):
        n = max(round(n * gd), 1) if n > 1 else n
        sources = [f] if isinstance(f, int) else list(f)
        if name in _BLOCKS:
            c1, c2 = channels[f], args[0]
            c2 = _make_divisible(c2 * gw, 8) if c2 != no else c2
            extra = list(args[1:])
            if name == "C3":
                extra = [n, *extra]
                n = 1
            elif name == "SPP" and extra:
                extra = [tuple(extra[0])]
            block_args = [c1, c2, *extra]
            module = (
                nn.Sequential(*(_BLOCKS[name](*block_args) for _ in range(n)))
                if n > 1
                else (_BLOCKS[name](*block_args))
            )
        elif name == "nn.Upsample":
            c2 = channels[f]
            module = nn.Upsample(scale_factor=args[1], mode=args[2])
        elif name == "Concat":
            c2 = sum(channels[x] for x in sources)
            module = Concat(args[0])
        elif name == "Detect":
            c2 = 0
            module = Detect(nc, anchors, [channels[x] for x in sources])
        else:
            raise ValueError(f"unsupported layer type {name!r} in model config")
        module.i, module.f = i, f
        save.update(x % i for x in sources if x != -1)
        layers.append(module)
        if i == 0:
            channels = []
        channels.append(c2)
    return nn.Sequential(*layers), save


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a conv with the batch norm folded into its weight and bias."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Fold Conv2d -> BatchNorm2d pairs inside a plain Sequential (ShuffleV2 branches)."""
    items = list(seq)
    for j in range(len(items) - 1):
        if isinstance(items[j], nn.Conv2d) and isinstance(items[j + 1], nn.BatchNorm2d):
            seq[j] = fuse_conv_bn(items[j], items[j + 1])
            seq[j + 1] = nn.Identity()
