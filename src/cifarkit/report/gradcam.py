"""Grad-CAM (Selvaraju et al., 2017) for CustomResNet, in a few lines of our own.

The heatmap is ReLU(sum_k alpha_k * A_k), where A_k are the channels of a feature map and alpha_k the spatial mean of
d(class score)/dA_k; it is upsampled bilinearly to the image size and scaled to [0, 1] per image.

Which feature map. The default is layer3's output, [512, 4, 4], the map that the head max-pools and classifies:
the paper's choice (the last conv map is the most class-specific), and the only one whose heatmap explains
exactly the evidence the classifier used. Its 4x4 grid is coarse (each cell covers 8x8 pixels), so `layer="layer2"`
([256, 8, 8]) is offered for a finer map; its gradients pass through layer3's convolutions and residual sum, so it
mixes in class-agnostic edges and texture and is noisier. Read layer3 for "where", layer2 for "roughly what".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.models import eval_mode
from cifarkit.models.custom_resnet import STAGES

LAYERS = STAGES  # prep [64, 32, 32], layer1 [128, 16, 16], layer2 [256, 8, 8], layer3 [512, 4, 4]


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Sequence[int] | torch.Tensor | None = None,
    *,
    layer: str = "layer3",
) -> np.ndarray:
    """Heatmaps float32 [B, H, W] in [0, 1] (all zero where no evidence) for normalised images [B, 3, H, W].

    target: the class to explain per image; None explains the predicted class. The model is run in eval mode
    (BN on running statistics, as at test time) and its mode is restored afterwards.
    """
    device = next(model.parameters()).device
    x = images.to(device=device, dtype=torch.float32).detach().requires_grad_(True)  # a graph even without params
    if layer not in LAYERS:
        raise CifarkitError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    with eval_mode(model), torch.enable_grad():  # callers often hold torch.no_grad(); Grad-CAM needs the graph
        logits, stages = model.forward_intermediates(x)
        features = stages[layer]
        if target is None:
            classes = logits.argmax(dim=1)
        else:
            classes = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
        score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
        (grads,) = torch.autograd.grad(score, features)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # alpha_k: one weight per channel and image
    cam = F.relu((weights * features.detach().float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    cam = torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.cpu().numpy().astype(np.float32)
