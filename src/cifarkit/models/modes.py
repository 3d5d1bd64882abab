"""`eval_mode` and `train_mode`: run a block in one mode and restore the model's previous mode afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`with eval_mode(model): ...` runs the block with BN on running statistics and restores the previous mode."""
    with _mode(model, training=False):
        yield model


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The same for train mode (BN on batch statistics), as the LR range test needs."""
    with _mode(model, training=True):
        yield model


@contextmanager
def _mode(model: nn.Module, *, training: bool) -> Iterator[None]:
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)
