"""The LR range test (Smith 2015; fastai, torch-lr-finder): train briefly while the LR grows exponentially and
watch the loss. `range_test` is the one engine (fit calls it on the model it is about to train); `lr_find` is the
public function that runs it alone on a fresh model; both return data, and plotting lives in report/plots.py.

    result = lr_find(TrainConfig(lr_find_iters=200), data="synthetic")   # or range_test(model, batches, config)
    result.lr_min, result.lr_max                      # the suggestions; result.lrs / .losses / .smoothed: the curve

Rules, on the raw loss smoothed by a centred (zero-lag) moving average over 5% of the sweep:
- LRMIN: the first LR at which the smoothed loss has fallen by 10% of its total fall (where it begins to fall).
- LRMAX: half the LR at the valley's right edge, where the smoothed loss, past its minimum, has risen back by 10% of
  its fall. The minimum itself wanders a decade across sweeps; the edge is steady, and half of it lands where
  24-epoch runs did best (docs/design.md#lrmax-rule; tests/test_lr_finder.py replays 27 measured sweeps).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, resolve_data, subset
from cifarkit.data.loaders import BatchSource, build_train_batches, repeat_epochs
from cifarkit.device import autocast, backward_step, grad_scaler, pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.models import build_model, train_mode
from cifarkit.run import write_lr_finder

LR_MIN_RULE = "first LR where the smoothed loss has fallen 10% of its total fall"
LR_MAX_RULE = "half the LR where the smoothed loss has risen 10% of its fall above its minimum"
DIVERGENCE_FACTOR = 4.0  # stop once the EMA of the loss exceeds 4x its best (torch-lr-finder's diverge_th is 5)
MIN_FALL_FRACTION = 0.10
RISE_FRACTION = 0.10  # the valley's right edge: the smoothed loss back above its minimum by 10% of the fall
LR_MAX_MARGIN = 2.0  # LRMAX = edge / 2


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    lr_min: float
    lr_max: float
    lr_min_rule: str = LR_MIN_RULE
    lr_max_rule: str = LR_MAX_RULE
    skipped: int = 0  # steps the fp16 gradient scaler skipped: not on the curve

    def save(self, path: Path) -> Path:
        """Write the curve and its picks as JSON: to RUN/lr_finder.json when `path` is a run folder, else to the file
        `path`; returns the file written."""
        return write_lr_finder(path, asdict(self))


def smooth_centered(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks symmetrically at the ends so there is no lag and no padding."""
    n = len(values)
    half = max(0, window // 2)
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    out = np.empty(n)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out[i] = (csum[i + h + 1] - csum[i - h]) / (2 * h + 1)
    return out


def smooth_losses(losses: np.ndarray) -> np.ndarray:
    """The range test's curve: a centred moving average over 5% of the sweep (at least 3 points, odd)."""
    return smooth_centered(np.asarray(losses, dtype=np.float64), window=max(3, len(losses) // 20) | 1)


def suggest_lrs(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(LRMIN, LRMAX) by the module's rules, from a smoothed loss curve."""
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    if len(lrs) < 5:
        raise CifarkitError(f"the LR range test stopped after {len(lrs)} steps: too few to suggest LRs")
    i_best = int(np.argmin(smoothed))
    fall = smoothed[0] - smoothed[i_best]
    if not fall > 0:
        raise CifarkitError("the loss never fell during the LR range test: raise --lr-find-end or check the data")
    below = np.flatnonzero(smoothed[: i_best + 1] <= smoothed[0] - MIN_FALL_FRACTION * fall)
    i_min = int(below[0])
    rising = np.flatnonzero(smoothed[i_best:] > smoothed[i_best] + RISE_FRACTION * fall)
    i_edge = i_best + int(rising[0]) - 1 if rising.size else len(lrs) - 1  # the last LR still in the valley
    # A cliff right after LRMIN: at least the next LR of the sweep, so that LRMIN < LRMAX.
    lr_max = max(lrs[i_edge] / LR_MAX_MARGIN, lrs[min(i_min + 1, len(lrs) - 1)])
    return float(lrs[i_min]), float(lr_max)


def range_test(model: nn.Module, batches: BatchSource | Iterator[tuple[torch.Tensor, torch.Tensor]],
               config: TrainConfig, *, optimizer: torch.optim.Optimizer | None = None, precision: str | None = None,
               progress: bool = True) -> LRFinderResult:
    """The range test on `model` with config's sweep (lr_find_start, lr_find_end, lr_find_iters), weight decay, loss
    and precision, with Adam (or `optimizer`); the model and optimizer are restored after. `batches`: a BatchSource,
    repeated for as long as the sweep runs, or an iterator of (images, labels).

    precision: what training runs in, when the caller has resolved it already (`fit` does); None resolves
    config.precision on the model's device, as training would. fp16 steps go through a gradient scaler, and a step it
    skips (inf or NaN gradients while its scale comes down) is left off the curve.
    """
    device = next(model.parameters()).device
    if precision is None:
        precision = resolve_precision(config.precision, device)
    if not isinstance(batches, Iterator):
        batches = repeat_epochs(batches)
    start_lr, end_lr, iters = config.lr_find_start, config.lr_find_end, config.lr_find_iters
    scaler = grad_scaler(precision, device)
    model_state = copy.deepcopy(model.state_dict())
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=start_lr, weight_decay=config.weight_decay)
    opt_state = copy.deepcopy(opt.state_dict())
    gamma = (end_lr / start_lr) ** (1 / max(iters - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    ema, best, beta = 0.0, math.inf, 0.95
    skipped = 0
    with train_mode(model):  # BN on batch statistics, as in training; the previous mode comes back after
        try:
            bar = tqdm(range(iters), desc="lr-find", disable=not progress, leave=False)
            for i in bar:
                lr = start_lr * gamma**i
                for group in opt.param_groups:
                    group["lr"] = lr
                x, y = next(batches)
                with autocast(precision, device):
                    loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
                step_skipped = backward_step(loss, opt, scaler)
                value = loss.item()
                if not math.isfinite(value):
                    break
                if step_skipped:  # the weights did not move: this LR has no loss of its own
                    skipped += 1
                    continue
                lrs.append(lr)
                losses.append(value)
                ema = beta * ema + (1 - beta) * value
                ema_debiased = ema / (1 - beta ** len(losses))
                best = min(best, ema_debiased)
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{value:.3f}")
                if len(losses) > 10 and ema_debiased > DIVERGENCE_FACTOR * best:
                    break
        finally:
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state)
    smoothed = smooth_losses(np.asarray(losses))
    lr_min, lr_max = suggest_lrs(np.asarray(lrs), smoothed)
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed.tolist(), lr_min=lr_min, lr_max=lr_max,
                          skipped=skipped)


def lr_find(config: TrainConfig, data: Cifar10 | str | None = None, *, precision: str | None = None) -> LRFinderResult:
    """The LR range test of `config` (its sweep, batch, augmentation, subset, loss and precision) on a fresh model, on
    `data` (a Cifar10, a path or "synthetic"; None: config.data as `fit` resolves it). `precision`: one already
    resolved by device.resolve_precision (None: resolve config.precision here).

        result = cifarkit.lr_find(TrainConfig(lr_find_iters=200), data="cifar-10-python.tar.gz")
        result.lr_min, result.lr_max
        cifarkit.plot_lr_finder(result.lrs, result.losses, result.smoothed, result.lr_min, result.lr_max)
    """
    config.validate()
    device = pick_device(config.device)
    config = dataclasses.replace(config, precision=precision or resolve_precision(config.precision, device))
    torch.manual_seed(config.seed)
    if not isinstance(data, Cifar10):
        data = resolve_data(config.data if data is None else str(data))
    data = subset(data, config.subset, None, seed=config.seed)
    model = build_model(len(data.classes), device=device, channels_last=config.channels_last)
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device)
    return range_test(model, batches, config, precision=config.precision)
