"""The LR range test (Smith 2015; fastai, torch-lr-finder): train briefly while the LR grows exponentially and
watch the loss. `find_lr` returns data; plotting lives in plots.py.

Suggestion rules (pinned by tests on synthetic curves with known answers) follow Smith's range test
("Cyclical Learning Rates for Training Neural Networks", 2017, section 3.3: the bounds are where the loss starts
to fall and where it stops falling):
- The curve used is the raw loss smoothed by a centred moving average. A centred window is zero-phase: an online
  EMA (what torch-lr-finder plots) lags by about 1/(1-beta) = 20 steps at beta 0.95, which on a 200-step sweep over
  8 decades shifts every suggestion 0.8 decade towards larger LRs.
- LRMAX = the LR at the minimum of the smoothed loss: the largest LR at which the loss still falls. One-cycle
  visits it only briefly, at the peak, and BatchNorm keeps the network stable there. The often-used alternative,
  the steepest descent, marks where an *untrained* network learns fastest (for Adam, 1e-4..1e-3), a decade or more
  below what this network tolerates once it has warmed up (Adam one-cycle ResNet-9 recipes peak near 1e-2).
- LRMIN = the first LR at which the smoothed loss has fallen by 10% of its total fall (start -> minimum): where the
  loss begins to fall clearly. Below it Adam's steps barely move the weights, so a cycle that starts and ends there
  needs no annihilation.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cifarkit.errors import CifarkitError

LR_MIN_RULE = "first LR where the smoothed loss has fallen 10% of its total fall"
LR_MAX_RULE = "LR at the minimum of the smoothed loss (where it stops falling)"
DIVERGENCE_FACTOR = 4.0  # stop once the EMA of the loss exceeds 4x its best (torch-lr-finder's diverge_th is 5)
MIN_FALL_FRACTION = 0.10


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    lr_min: float
    lr_max: float
    lr_min_rule: str = LR_MIN_RULE
    lr_max_rule: str = LR_MAX_RULE

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, path: Path) -> "LRFinderResult":
        return cls(**json.loads(Path(path).read_text()))


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
    i_max = max(i_best, min(i_min + 1, len(lrs) - 1))  # a cliff right at LRMIN: one point on, so LRMIN < LRMAX
    return float(lrs[i_min]), float(lrs[i_max])


def find_lr(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *,
            start_lr: float = 1e-7, end_lr: float = 10.0, iters: int = 200, weight_decay: float = 1e-4,
            optimizer: torch.optim.Optimizer | None = None, autocast: bool = False,
            progress: bool = True) -> LRFinderResult:
    """Run the range test with Adam (or `optimizer`) on `batches`; the model and optimizer are restored after."""
    device = next(model.parameters()).device
    model_state = copy.deepcopy(model.state_dict())
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=start_lr, weight_decay=weight_decay)
    opt_state = copy.deepcopy(opt.state_dict())
    gamma = (end_lr / start_lr) ** (1 / max(iters - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    ema, best, beta = 0.0, math.inf, 0.95
    was_training = model.training
    model.train()
    try:
        bar = tqdm(range(iters), desc="lr-find", disable=not progress, leave=False)
        for i in bar:
            lr = start_lr * gamma**i
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                break
            lrs.append(lr)
            losses.append(value)
            ema = beta * ema + (1 - beta) * value
            ema_debiased = ema / (1 - beta ** (i + 1))
            best = min(best, ema_debiased)
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{value:.3f}")
            if i >= 10 and ema_debiased > DIVERGENCE_FACTOR * best:
                break
    finally:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        model.train(was_training)
    smoothed = smooth_centered(np.asarray(losses), window=max(3, len(losses) // 20) | 1)
    lr_min, lr_max = suggest_lrs(np.asarray(lrs), smoothed)
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed.tolist(), lr_min=lr_min, lr_max=lr_max)
