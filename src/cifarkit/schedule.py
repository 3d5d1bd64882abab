"""The one-cycle learning-rate policy as a pure function of the step.

LR rises linearly from lr_min to lr_max at the end of epoch `peak_epoch`, then falls linearly to lr_min at the end of
the last epoch. "No annihilation": it never goes below lr_min (unless the reference's variant, final_div > 1, asks
for a final LR of lr_min / final_div). Optionally the momentum (Adam's beta1) cycles the other way, as in Smith's
policy and PyTorch's OneCycleLR (0.95 -> 0.85 -> 0.95 there): low momentum while the LR is high.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def one_cycle_lr(step: int, *, lr_min: float, lr_max: float, total_steps: int, peak_step: int,
                 final_div: float = 1.0) -> float:
    """LR for optimizer step `step` (0-based; the LR used by the step, so step 0 uses lr_min).

    The last step (total_steps - 1) uses the final LR; the peak step uses lr_max.
    """
    final = lr_min / final_div
    if step <= peak_step:  # (a peak at step 0, in a tiny run, starts at lr_max)
        return lr_max if peak_step == 0 else lr_min + (lr_max - lr_min) * step / peak_step
    last = total_steps - 1
    frac = min(1.0, (step - peak_step) / max(last - peak_step, 1))
    return lr_max + (final - lr_max) * frac


def one_cycle_momentum(lr: float, *, lr_min: float, lr_max: float, momentum_peak: float,
                       momentum_ends: float) -> float:
    """The momentum for a step whose LR is `lr`: momentum_ends at lr_min (and below), momentum_peak at lr_max,
    linear in the LR between, so it mirrors the LR cycle."""
    frac = min(max((lr - lr_min) / (lr_max - lr_min), 0.0), 1.0)
    return momentum_ends + (momentum_peak - momentum_ends) * frac


class OneCycle(LambdaLR):
    """LambdaLR that also sets each group's momentum (Adam's beta1, SGD's momentum) from the step's LR.

    The momentum is a function of the LR alone, and Adam keeps its betas in the optimizer's state_dict, so a restored
    optimizer and scheduler continue exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float],
                 momentum_of: Callable[[float], float] | None) -> None:
        self.momentum_of = momentum_of  # set first: LambdaLR's constructor takes the first step
        super().__init__(optimizer, factor)

    def state_dict(self) -> dict:
        state = super().state_dict()
        del state["momentum_of"]  # rebuilt from the config; a function would not load under weights_only=True
        return state

    def step(self, epoch: int | None = None) -> None:  # epoch: LRScheduler's legacy argument, passed on
        super().step(epoch)
        if self.momentum_of is None:
            return
        for group in self.optimizer.param_groups:
            momentum = self.momentum_of(group["lr"])
            if "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            else:
                group["momentum"] = momentum


def peak_step_of(peak_epoch: float, steps_per_epoch: int) -> int:
    """The step at the end of epoch `peak_epoch` (fractional epochs allowed): the last step of that epoch."""
    return max(0, round(peak_epoch * steps_per_epoch) - 1)


def one_cycle(optimizer: torch.optim.Optimizer, *, lr_min: float, lr_max: float, epochs: int,
              steps_per_epoch: int, peak_epoch: float = 5.0, final_div: float = 1.0,
              momentum: tuple[float, float] | None = None) -> OneCycle:
    """A LambdaLR stepped once per batch; its state_dict holds only the step, so it resumes exactly.

    momentum: (at the LR peak, at the ends) to cycle Adam's beta1 (SGD's momentum) against the LR; None leaves it.
    """
    total = epochs * steps_per_epoch
    peak = peak_step_of(peak_epoch, steps_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr_max  # LambdaLR multiplies the base LR; lr_max keeps the factor in [0, 1]
        group["initial_lr"] = lr_max

    def factor(step: int) -> float:
        return one_cycle_lr(step, lr_min=lr_min, lr_max=lr_max, total_steps=total, peak_step=peak,
                            final_div=final_div) / lr_max

    momentum_of = None if momentum is None else partial(one_cycle_momentum, lr_min=lr_min, lr_max=lr_max,
                                                         momentum_peak=momentum[0], momentum_ends=momentum[1])
    return OneCycle(optimizer, factor, momentum_of)


def schedule_lrs(*, lr_min: float, lr_max: float, epochs: int, steps_per_epoch: int, peak_epoch: float,
                 final_div: float = 1.0) -> list[float]:
    """The LR of every step of a run (for plots and the run folder)."""
    total = epochs * steps_per_epoch
    peak = peak_step_of(peak_epoch, steps_per_epoch)
    return [one_cycle_lr(s, lr_min=lr_min, lr_max=lr_max, total_steps=total, peak_step=peak, final_div=final_div)
            for s in range(total)]
