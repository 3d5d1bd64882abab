"""The model summary as torchinfo prints it (the assignment's table: 6,573,120 parameters, 194.18 G mult-adds)."""

from __future__ import annotations

from typing import Any

from cifarkit.models import CustomResNet


def model_summary(batch_size: int = 512, num_classes: int = 10) -> Any:
    """torchinfo's ModelStatistics for CustomResNet at input [batch_size, 3, 32, 32]; str() of it is the table."""
    from torchinfo import summary  # imported here: only this command needs it

    return summary(CustomResNet(num_classes), input_size=(batch_size, 3, 32, 32), device="cpu", verbose=0,
                   col_names=("input_size", "output_size", "num_params", "kernel_size", "mult_adds"),
                   row_settings=("var_names",))
