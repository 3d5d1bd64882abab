"""Test loss and accuracy (and flip-TTA accuracy) of a model on images held on the device: what each epoch of
training and `cifarkit evaluate` report. Under torchrun each rank takes its own slice and the sums are shared.

    result = evaluate(model, images, labels, config, precision="bf16", tta=True)
    result["loss"], result["acc"], result["acc_tta"]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit import distributed as D
from cifarkit.config import TrainConfig
from cifarkit.data import normalization
from cifarkit.device import autocast
from cifarkit.inference.preprocess import preprocess
from cifarkit.models import eval_mode, is_channels_last


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, *,
             precision: str = "fp32", tta: bool = False, ctx: D.DistContext = D.DistContext(),
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict[str, float]:
    """Loss and accuracy on uint8 [M, 32, 32, 3] images held on the device, in eval mode, forward passes under
    `precision` ("bf16"/"fp16"/"fp32", as resolved by device.resolve_precision). Under torchrun each rank takes a
    contiguous slice, so every test image counts exactly once. With tta, also the flip-TTA accuracy. Inputs take the
    model's memory format; sums are float32 (counts exact below 2^24 images; MPS has no float64). `mean`, `std`:
    the normalisation a model file records (default: config.std's)."""
    if mean is None or std is None:
        mean, std = normalization(config.std)
    lo, hi = D.shard_range(len(labels), ctx)
    sums = torch.zeros(4, device=images.device)  # loss sum, correct, correct with TTA, count
    channels_last = is_channels_last(model)
    with eval_mode(model):
        for start in range(lo, hi, config.eval_batch_size):
            stop = min(start + config.eval_batch_size, hi)
            x = preprocess(images[start:stop], mean, std, channels_last=channels_last)
            y = labels[start:stop]
            with autocast(precision, x.device):
                logits = model(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum")
            sums[1] += (logits.argmax(1) == y).sum()
            if tta:
                with autocast(precision, x.device):
                    flipped = model(torch.flip(x, dims=[3])).float()
                sums[2] += ((logits.softmax(1) + flipped.softmax(1)).argmax(1) == y).sum()
            sums[3] += stop - start
    loss, correct, correct_tta, count = D.all_reduce_sum(sums, ctx).tolist()
    return {"loss": loss / count, "acc": correct / count, "acc_tta": correct_tta / count if tta else float("nan")}
