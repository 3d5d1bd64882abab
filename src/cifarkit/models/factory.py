"""The one place that makes the network for training, evaluation, benchmarks and saved weights."""

from __future__ import annotations

import torch

from cifarkit.models.custom_resnet import CustomResNet


def build_model(num_classes: int = 10, *, device: torch.device | str = "cpu",
                channels_last: bool = False) -> CustomResNet:
    """`CustomResNet(num_classes)` on `device`, in NHWC memory format when `channels_last` (faster convolutions on
    GPUs and oneDNN CPUs)."""
    model = CustomResNet(num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def is_channels_last(model: torch.nn.Module) -> bool:
    """Whether `model` is in NHWC memory format (as build_model(channels_last=True) leaves it): inputs in the same
    format spare each convolution a conversion."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
