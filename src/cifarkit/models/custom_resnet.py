"""The assignment's custom ResNet for CIFAR-10 (the "ResNet-9" of the DAWNBench era), top-down as drawn.

    PrepLayer  conv3x3 -> BN -> ReLU                                   [64,  32, 32]
    Layer1     X = conv3x3 -> MaxPool2 -> BN -> ReLU                   [128, 16, 16]
               R1 = ResBlock(X) = (conv-BN-ReLU) x 2;  out = X + R1    [128, 16, 16]
    Layer2     conv3x3 -> MaxPool2 -> BN -> ReLU                       [256,  8,  8]
    Layer3     X = conv3x3 -> MaxPool2 -> BN -> ReLU                   [512,  4,  4]
               R3 = ResBlock(X);  out = X + R3                         [512,  4,  4]
    MaxPool(4) -> flatten -> FC(512 -> 10)                             [10]

Every convolution is 3x3, stride 1, padding 1, without bias (a BN follows each). The FC has no bias either,
so the total is exactly 6,573,120 parameters, as in the assignment's torchinfo table.
"""

from __future__ import annotations

import torch
from torch import nn



def conv_bn_relu(c_in: int, c_out: int, *, pool: bool = False) -> nn.Sequential:
    """conv3x3 -> [MaxPool2] -> BN -> ReLU. Pooling before BN is the assignment's order (and halves BN's cost)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """(conv-BN-ReLU) x 2 at constant width; the caller adds it to its input (out = X + R)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class DownResStage(nn.Module):
    """Layer1 / Layer3: X = conv -> MaxPool -> BN -> ReLU, then out = X + ResBlock(X)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(c_in, c_out, pool=True)
        self.res = ResBlock(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x)


STAGES = ("prep", "layer1", "layer2", "layer3")  # the named stages, input to output


class CustomResNet(nn.Module):
    """The assignment's network. `forward` returns logits (probabilities: cifarkit.inference.predict_proba)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.prep = conv_bn_relu(3, 64)  # [B, 64, 32, 32]
        self.layer1 = DownResStage(64, 128)  # [B, 128, 16, 16]
        self.layer2 = conv_bn_relu(128, 256, pool=True)  # [B, 256, 8, 8]
        self.layer3 = DownResStage(256, 512)  # [B, 512, 4, 4]
        self.pool = nn.MaxPool2d(4)  # [B, 512, 1, 1]
        self.fc = nn.Linear(512, num_classes, bias=False)  # [B, num_classes]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, 32, 32] -> the last feature map [B, 512, 4, 4] (Grad-CAM's default layer)."""
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map [B, 512, 4, 4] -> logits [B, num_classes]."""
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, {stage name: its output}) in one pass, for Grad-CAM at any stage (timm's name for this)."""
        stages: dict[str, torch.Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            stages[name] = x
        return self.forward_head(x), stages
