"""The assignment's network: shapes, parameter count, mult-adds, and the two heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.models import CustomResNet
from cifarkit.models.summary import model_summary


@pytest.mark.slow
def test_parameter_count_and_mult_adds_match_the_assignment() -> None:
    """torchinfo at batch 512 reports 6,573,120 parameters and 194.18 G mult-adds, as the assignment's table."""
    stats = model_summary(512)
    assert stats.total_params == 6_573_120
    assert round(stats.total_mult_adds / 1e9, 2) == 194.18
    table = str(stats)
    assert "6,573,120" in table and "194.18" in table and "[3, 3]" in table


def test_stage_shapes_follow_the_diagram() -> None:
    """prep 64x32x32 -> layer1 128x16x16 -> layer2 256x8x8 -> layer3 512x4x4 -> logits 10."""
    model = CustomResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for stage in (model.prep, model.layer1, model.layer2, model.layer3):
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert model.forward_head(x).shape == (2, 10)


def test_every_conv_is_3x3_stride1_pad1_without_bias_and_fc_has_no_bias() -> None:
    """The assignment's convolution spec, and the bias-free FC that makes the count exact."""
    model = CustomResNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8
    for c in convs:
        assert c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) and c.bias is None
    assert model.fc.bias is None


def test_residual_stage_adds_its_input() -> None:
    """Layer1's output is X + ResBlock(X): zeroing the ResBlock's last BN makes the output equal X."""
    model = CustomResNet().eval()
    torch.nn.init.zeros_(model.layer1.res.conv2[1].weight)
    torch.nn.init.zeros_(model.layer1.res.conv2[1].bias)
    x = torch.randn(2, 64, 32, 32)
    assert torch.allclose(model.layer1(x), model.layer1.conv(x))


def test_forward_returns_logits_and_predict_proba_softmax() -> None:
    """forward gives unnormalised logits; inference.predict_proba (uint8 images in) gives rows summing to 1, equal to
    the softmax of the eval-mode logits of the normalised images, and keeps the training mode."""
    from cifarkit.inference import predict_proba

    model = CustomResNet().train()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    probs = torch.from_numpy(predict_proba(model, images, mean, std))
    assert model.training
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)
    model.eval()
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(mean)) / torch.tensor(std)  # by hand, NHWC
    assert torch.allclose(probs, torch.softmax(model(x.permute(0, 3, 1, 2)), 1), atol=1e-5)
