"""Own model definitions: configs, parameter counts, dynamic batch under tracing."""

import pytest
import torch
from model_configs import CONFIGS, get_config

from yolov5face.model.network import YoloFace, interleave_channels

# Published parameter counts of the yolov5-face models.
PARAMS = {
    "yolov5n-0.5": 447_456,
    "yolov5n": 1_725_744,
    "yolov5s": 7_074_640,
    "yolov5m": 21_063_024,
    "yolov5l": 46_626_832,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_build_with_published_sizes(name):
    model = YoloFace(get_config(name)).eval()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 16)


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        get_config("yolov9")


def test_interleave_is_the_shufflenet_channel_shuffle():
    a, b = torch.arange(3.0).view(1, 3, 1, 1), torch.arange(3.0, 6.0).view(1, 3, 1, 1)
    assert interleave_channels(a, b).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    a, b = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5)
    # ShuffleNetV2's definition: split channels into 2 groups, swap group and channel axes.
    shuffled = torch.cat((a, b), 1).view(2, 2, 6, 3, 5).transpose(1, 2).reshape(2, 12, 3, 5)
    assert torch.equal(interleave_channels(a, b), shuffled)


def test_trace_keeps_batch_dynamic():
    model = YoloFace(get_config("yolov5n-0.5")).eval().fuse()
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.rand(2, 3, 64, 64))
        x = torch.rand(5, 3, 64, 64)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    model = YoloFace(get_config("yolov5n-0.5")).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        assert torch.allclose(model.fuse()(x), ref, atol=1e-4)
