"""What the model costs and what the hardware could do: multiply-adds per image, the CPU's FMA peak and an
accelerator's measured matmul ceiling, for `cifarkit bench` to quote its throughput against.

    count_macs(CustomResNet())                      # 379,261,952 multiply-adds per image
    cpu_peak()["formula"]                           # "2 cores x 2 FMA units x 8 fp32 lanes x ..."
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cifarkit.cpuinfo import cpuinfo_fields, usable_cpus
from cifarkit.models import eval_mode

FLOPS_CONVENTION = ("FLOPs = 2 x multiply-adds of the convolutions and the FC (BN, ReLU, pooling not counted); "
                    "training = 3 x forward (backward ~ 2 x forward)")


def count_macs(model: nn.Module, *, image_size: int = 32) -> int:
    """Multiply-adds of one forward pass of one image, counted from the model's Conv2d and Linear layers.

    For CustomResNet: 379,261,952 (0.3793 G; x 512 = torchinfo's 194.18 G, which adds BN's 4,480 per image).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw  # per output element: Cin/groups x k x k

    def fc_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = [mod.register_forward_hook(conv_hook if isinstance(mod, nn.Conv2d) else fc_hook)
               for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total


def cpu_peak(*, bf16: bool = False) -> dict[str, Any] | None:
    """The CPU's FMA peak: cores x FMA units x lanes x FLOPs per FMA x clock; None if it cannot be read.

    fp32: 2 FLOPs per lane per FMA. bf16 (the AVX512-BF16 dot product VDPBF16PS): each fp32 lane takes two bf16
    products and their sum, so 4 FLOPs per lane per instruction.

    cores: the CPUs this process may run on (sched_getaffinity), capped at torch's thread count; clock: the highest
    "cpu MHz" in /proc/cpuinfo (a VM usually reports the base clock, so boost can exceed this "peak"); lanes: fp32
    per vector, 16 with avx512f, 8 with AVX2+FMA; FMA units: 2 per core (Zen 2+, Intel since Haswell), while Zen 1
    (family 23, model < 0x30) splits 256-bit FMAs into two 128-bit halves: 4 lanes.
    """
    fields = cpuinfo_fields()
    mhz = [float(v) for v in fields.get("cpu MHz", []) if v]
    flags = set(fields.get("flags", [""])[0].split())
    if not mhz or not ({"avx2", "fma"} <= flags or "avx512f" in flags):
        return None  # no clock or no FMA vectors (e.g. an ARM host): no honest peak to quote
    allowed = usable_cpus()
    cores = min(allowed, torch.get_num_threads())
    lanes = 16 if "avx512f" in flags else 8
    family = int(fields.get("cpu family", ["0"])[0] or 0)
    model = int(fields.get("model", ["0"])[0] or 0)
    if fields.get("vendor_id", [""])[0] == "AuthenticAMD" and family == 23 and model < 0x30:
        lanes = 4
    fma_units, flops_per_fma, clock_ghz = 2, 4 if bf16 else 2, max(mhz) / 1000
    peak = cores * fma_units * lanes * flops_per_fma * clock_ghz
    return {"cpu": fields.get("model name", [platform.processor()])[0], "cores": cores, "affinity_cpus": allowed,
            "torch_threads": torch.get_num_threads(), "fma_units": fma_units, "lanes": lanes,
            "flops_per_fma": flops_per_fma, "clock_ghz": clock_ghz, "peak_gflops": peak,
            "dtype": "bf16" if bf16 else "fp32",
            "formula": (f"{cores} cores x {fma_units} FMA units x {lanes} fp32 lanes x {flops_per_fma} FLOPs/lane x "
                        f"{clock_ghz:.3f} GHz = {peak:.1f} GFLOP/s")}


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA, MPS; a CPU runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, *, n: int = 8192, repeats: int = 10,
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The accelerator's measured dense-matmul ceiling: median rate of n x n x n products in the training's
    precision on random data (zeros run faster than real data and flatter it)."""
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    for _ in range(3):  # warm-up: handle creation, kernel selection, clocks ramping up
        a @ b
    rates = [2 * n**3 / device_seconds(lambda: a @ b, device) for _ in range(repeats)]
    return {"tflops": statistics.median(rates) / 1e12, "dtype": str(dtype).removeprefix("torch."), "n": n,
            "repeats": repeats}


def device_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of fn(), the device's queued work included (synchronized before and after)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0

