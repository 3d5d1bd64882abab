"""How a run stops early: on SIGINT/SIGTERM at a step boundary (with a checkpoint), or on a non-finite loss."""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from cifarkit import distributed as D
from cifarkit.errors import CifarkitError, TrainingInterrupted

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "check_step", "non_finite", "stop_on_signals"]


class NonFiniteLoss(CifarkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, int]]:
    """SIGINT/SIGTERM set a flag that the loop reads after each step, so it stops at a consistent point."""
    flag: dict[str, int] = {}
    handler = lambda signum, frame: flag.setdefault("signum", signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_step(step: int, loss: torch.Tensor, signalled: bool, check_every: int, ctx: D.DistContext,
               device: torch.device) -> tuple[bool, bool]:
    """(non-finite loss, stop requested) after a step. Under torchrun every rank must stop at the same step, so the
    ranks agree in one collective, at check steps only (reading the loss waits for the GPU)."""
    if step % check_every:
        return False, signalled and not ctx.enabled
    nonfinite = not torch.isfinite(loss).item()
    if ctx.enabled:
        nonfinite, signalled = D.any_ranks([nonfinite, signalled], ctx, device)
    return nonfinite, signalled


def non_finite(value: float, epoch: int, step: int, ckpt_path: Path, when: str) -> NonFiniteLoss:
    """The error for a NaN or infinite loss: the step, and that the last good checkpoint is kept."""
    shown = value if not math.isfinite(value) else "nan or inf on another rank"
    return NonFiniteLoss(f"the loss became {shown} {when} step {step} (epoch {epoch + 1}); stopped, and "
                         f"{ckpt_path} keeps the last good state: lower --lr-max")
