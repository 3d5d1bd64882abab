"""What a tiny CPU run does that would hurt on other devices, counted under a TorchDispatchMode:

  - float64 tensors made during one `fit` (each augmentation path, plots on) and one `predict`: MPS has none;
  - host reads (aten._local_scalar_dense: `.item()`, `float(t)`, `.tolist()`; each a sync on a GPU) per training
    step in fp16 and fp32, in `train_step` and in a whole `fit`, beside a bare loop through torch's GradScaler.
    Reads inside optimizer.step are left out: Adam's step counters live on the CPU, whatever the device.

    PYTHONPATH=src python bench/dispatch_counts.py            # CPU, tiny synthetic data, a few minutes

tests/test_devices.py loads `Count` and `step_reads` from here, and holds the counts to what they should be.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import cifarkit
import cifarkit.train as train_module
from cifarkit.config import TrainConfig
from cifarkit.data import make_synthetic
from cifarkit.device import backward_kernels, grad_scaler
from cifarkit.models import build_model
from cifarkit.schedule import one_cycle

READ = torch.ops.aten._local_scalar_dense.default


def origin() -> str:
    """file:line of the innermost caller outside torch and this file: where a tensor was made or read."""
    for frame in reversed(traceback.extract_stack()[:-2]):  # less origin() and __torch_dispatch__
        if "/torch/" not in frame.filename and frame.filename != __file__:
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "?"


class Count(TorchDispatchMode):
    """Every float64 tensor made (op and origin), and the host reads made outside optimizer.step (by origin), since
    Adam reads its own step counters, CPU tensors on every device."""

    def __init__(self) -> None:
        super().__init__()
        self.float64: list[str] = []
        self.reads: collections.Counter[str] = collections.Counter()
        self.in_step = False

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "in_step", True))
        optimizer.register_step_post_hook(lambda *_: setattr(self, "in_step", False))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is READ and not self.in_step:
            self.reads[origin()] += 1
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
               for t in (out if isinstance(out, (tuple, list)) else [out])):
            self.float64.append(f"{func} at {origin()}")
        return out


def watching_fit(count: Count, config: TrainConfig, data: Any) -> None:
    """fit, with every Adam it builds watched by `count`."""
    real_adam = torch.optim.Adam

    def adam(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        opt = real_adam(*args, **kwargs)
        count.watch(opt)
        return opt

    torch.optim.Adam = adam  # type: ignore[misc]
    try:
        cifarkit.fit(config, data=data, progress=False)
    finally:
        torch.optim.Adam = real_adam  # type: ignore[misc]


def step_reads(precision: str, steps: int, project: bool, images: int = 2) -> float:
    """Host reads per step, outside optimizer.step, of `steps` training steps on `images` images: through train_step
    (project), or through the bare loop torch documents for GradScaler (scale, backward, step, update)."""
    torch.manual_seed(0)
    model = build_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-3, epochs=1, steps_per_epoch=steps + 1, peak_epoch=0.5)
    scaler = grad_scaler(precision, torch.device("cpu"))
    x, y = torch.randn(images, 3, 32, 32), torch.arange(images)
    count = Count()
    count.watch(opt)
    with count:
        for _ in range(steps):
            if project:
                train_module.train_step(model, opt, sched, x, y, precision=precision, scaler=scaler)
                continue
            opt.zero_grad()
            with torch.autocast("cpu", torch.float16, enabled=precision == "fp16"):
                loss = F.cross_entropy(model(x), y)
            with backward_kernels(scaler, x.device):  # the project's fp16 CPU kernels: the slow ones cost minutes
                scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return sum(count.reads.values()) / steps


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    data = make_synthetic(n_train=8, n_test=4)
    config = dict(epochs=1, batch_size=2, lr_min=1e-4, lr_max=1e-3, device="cpu")
    steps = 8 // 2
    with tempfile.TemporaryDirectory() as tmp:
        for augment in ("albumentations", "batched"):
            count = Count()
            with count:
                cifarkit.fit(TrainConfig(out=f"{tmp}/{augment}", augment=augment, precision="fp32", **config),
                             data=data, progress=False)
                cifarkit.predict(f"{tmp}/{augment}", data.test_images, device="cpu", precision="fp32")
            print(f"float64 tensors in fit ({augment}, plots) + predict: {len(count.float64)}")
            for where, n in collections.Counter(count.float64).most_common():
                print(f"    {n:4d}  {where}")
        fit_reads = {}
        for precision in ("fp32", "fp16"):
            count = Count()
            with count:
                watching_fit(count, TrainConfig(out=f"{tmp}/{precision}", augment="batched", precision=precision,
                                                plots=False, **config), data)
            fit_reads[precision] = sum(count.reads.values())
            print(f"host reads in a fit of {steps} steps, {precision}: {fit_reads[precision]}  {dict(count.reads)}")
        print(f"fit, fp16 - fp32: {(fit_reads['fp16'] - fit_reads['fp32']) / steps:g} per step")
    for precision in ("fp32", "fp16"):
        print(f"host reads per step, {precision}: train_step {step_reads(precision, 4, True):g}, "
              f"bare GradScaler loop {step_reads(precision, 4, False):g}")


if __name__ == "__main__":
    main()
