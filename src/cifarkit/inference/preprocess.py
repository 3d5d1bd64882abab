"""The one way images reach the model: any image a user gives -> uint8 [N, 32, 32, 3] (`as_images`), then uint8 NHWC
-> normalised float32 NCHW (`preprocess`, and `Preprocess` inside an exported graph), and softmax probabilities in
batches (`predict_proba`). Every inference path uses them: evaluate, predict, Grad-CAM, the app, export.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from cifarkit.data.augment import affine, normalize_affine, normalize_batch
from cifarkit.data.images import read_image, to_rgb32
from cifarkit.device import autocast
from cifarkit.errors import CifarkitError
from cifarkit.models import eval_mode, is_channels_last

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


def as_images(images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
    """uint8 [N, 32, 32, 3] from one image or a list: paths, PIL images, uint8 HxWx3 arrays, or an NxHxWx3 array;
    other sizes are resized (bilinear)."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    out = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            out.append(read_image(item))
        elif isinstance(item, Image.Image):
            out.append(to_rgb32(item))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise CifarkitError(f"images[{i}] is {item.dtype}: give uint8 pixels in 0..255, e.g. "
                                    "(x * 255).round().astype(np.uint8)")
            if not (item.ndim == 2 or item.ndim == 3 and item.shape[2] in (1, 3, 4)):
                raise CifarkitError(f"images[{i}] has shape {item.shape}: give HxWx3 images or one NxHxWx3 array")
            out.append(to_rgb32(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item))
        else:
            raise CifarkitError(f"images[{i}] is of type {type(item).__name__}: give paths, PIL images or uint8 "
                                "arrays")
    if not out:
        raise CifarkitError("images is empty: give at least one image")
    return np.stack(out)



def preprocess(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
               device: torch.device | str | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (numpy or torch, RGB) -> normalised float32 [N, 3, H, W] on `device`: what every
    inference path feeds the model (evaluate, predict, Grad-CAM, the app, export's graph)."""
    batch = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if device is not None:
        batch = batch.to(device)
    return normalize_batch(batch, mean, std, channels_last=channels_last)


class Preprocess(nn.Module):
    """`preprocess` as a module, its scale and shift held as buffers: the same step inside a traced or exported
    graph (cifarkit.export), where constants made during the first call would differ from later calls."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        scale, shift = affine(mean, std)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_affine(images, self.scale, self.shift)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
                  precision: str = "fp32", batch_size: int = 1024) -> np.ndarray:
    """Softmax probabilities float32 [N, classes] of `model` (eval mode, forward under `precision`) on uint8 NHWC
    images, preprocessed as at test time, in batches of `batch_size`."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], mean, std, device=device,
                           channels_last=is_channels_last(model))
            with autocast(precision, device):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    classes = int(getattr(model, "num_classes", 0))
    return torch.cat(out).numpy() if out else np.zeros((0, classes), np.float32)
