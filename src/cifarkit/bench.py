"""`cifarkit bench`: training, evaluation and data-pipeline throughput, side by side in one process.

Every figure is images per second, the median over `repeats`; the measurements are interleaved (reference step,
project step, evaluation, both pipelines, then again), so drift from other load on the machine hits them alike.
The reference is the barest loop: CustomResNet, Adam, CrossEntropyLoss, forward / backward / step on one pre-made
random batch. Both loops use the training's precision and memory format (bf16 autocast on CUDA, channels_last as
TrainConfig says), so their ratio is the cost of the project's step and nothing else.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit.config import TrainConfig
from cifarkit.data.loaders import build_train_batches
from cifarkit.device import pick_device, use_bf16
from cifarkit.models import build_model, eval_mode
from cifarkit.schedule import one_cycle
from cifarkit.system import cpuinfo_fields, usable_cpus
from cifarkit.train import train_step

FLOPS_CONVENTION = ("FLOPs = 2 x multiply-adds of the convolutions and the FC (BN, ReLU, pooling not counted); "
                    "training = 3 x forward (backward ~ 2 x forward)")
PIPELINE_MIN_BATCHES = 10  # the pipelines are cheap: time at least this many batches so the figure is not noise


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rate(fn: Callable[[], int], device: torch.device) -> float:
    """Images per second of fn(), which processes some images and returns how many; device work included."""
    images = 0

    def run() -> None:
        nonlocal images
        images = fn()

    seconds = _seconds(run, device)
    return images / seconds


def matmul_peak(device: torch.device, *, n: int = 8192, repeats: int = 10, bf16: bool = False) -> dict[str, Any]:
    """The accelerator's measured dense-matmul ceiling: median rate of n x n x n products in the training's
    precision on random data (zeros run faster than real data and flatter it)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    for _ in range(3):  # warm-up: handle creation, kernel selection, clocks ramping up
        a @ b
    rates = [2 * n**3 / _seconds(lambda: a @ b, device) for _ in range(repeats)]
    return {"tflops": statistics.median(rates) / 1e12, "dtype": str(dtype).removeprefix("torch."), "n": n,
            "repeats": repeats}


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    _synchronize(device)
    t0 = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - t0


def run_bench(*, device: str = "auto", batch_size: int = 512, steps: int = 5, warmup: int = 2,
              repeats: int = 3, precision: str = "auto") -> dict[str, Any]:
    """Measure and return every figure (images/s medians, GFLOP/s, CPU peak fraction, pipelines) as a dict."""
    dev = pick_device(device)
    config = TrainConfig(batch_size=batch_size, lr_min=1e-4, lr_max=1e-3, precision=precision)
    config.validate()
    autocast = use_bf16(config.precision, dev)  # as train.py
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(dev)

    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return build_model(device=dev, channels_last=config.channels_last).train()

    ref_model, proj_model, eval_model = make_model(), make_model(), make_model().eval()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss()
    proj_opt = torch.optim.Adam(proj_model.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    total_steps = warmup + repeats * steps + 1
    scheduler = one_cycle(proj_opt, lr_min=1e-4, lr_max=1e-3, epochs=1, steps_per_epoch=total_steps, peak_epoch=0.5)

    def reference(n: int) -> int:
        for _ in range(n):
            ref_opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = criterion(ref_model(x), y)
            loss.backward()
            ref_opt.step()
        return n * batch_size

    def project(n: int) -> int:
        for _ in range(n):
            train_step(proj_model, proj_opt, scheduler, x, y, autocast=autocast)
        return n * batch_size

    def evaluation(n: int) -> int:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            for _ in range(n):
                eval_model(x)
        return n * batch_size

    # Pipelines alone: the training's own batch sources (loaders.build_train_batches) over random uint8 images.
    n_batches = max(steps, PIPELINE_MIN_BATCHES)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size * n_batches, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int64)
    sources = {mode: build_train_batches(images, labels, TrainConfig(batch_size=batch_size, augment=mode),
                                         device=dev) for mode in ("albumentations", "batched")}
    workers = getattr(sources["albumentations"], "loader").num_workers
    epoch_counter = iter(range(1, 1 << 30))

    def pipeline(mode: str) -> Callable[[], int]:
        def run() -> int:
            return sum(len(yb) for _, yb in sources[mode].epoch(next(epoch_counter)))
        return run

    timed: dict[str, Callable[[], int]] = {
        "train_reference": lambda: reference(steps), "train_project": lambda: project(steps),
        "eval": lambda: evaluation(steps), "pipeline_albumentations": pipeline("albumentations"),
        "pipeline_batched": pipeline("batched"),
    }
    reference(warmup), project(warmup), evaluation(warmup)
    for mode in sources:
        pipeline(mode)()  # starts DataLoader workers, allocator pools
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(repeats):
        # Alternate which training loop goes first: a slow-down that lasts a while then spreads over both.
        order = ["train_reference", "train_project"] if r % 2 == 0 else ["train_project", "train_reference"]
        for name in order + ["eval", "pipeline_albumentations", "pipeline_batched"]:
            samples[name].append(_rate(timed[name], dev))

    med = {name: statistics.median(v) for name, v in samples.items()}
    macs = count_macs(build_model(device=dev))
    gflops = {"train_reference": med["train_reference"] * macs * 2 * 3 / 1e9,
              "train_project": med["train_project"] * macs * 2 * 3 / 1e9,
              "eval": med["eval"] * macs * 2 / 1e9}
    peak = cpu_peak(bf16=autocast) if dev.type == "cpu" else None
    # No datasheet figure on CUDA: the ceiling as measured here.
    accel = matmul_peak(dev, bf16=autocast) if dev.type == "cuda" else None
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        (peak["cpu"] if peak else platform.processor() or "cpu"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "repeats": repeats, "autocast_bf16": autocast, "channels_last": config.channels_last,
        "images_per_s": med, "samples": samples,
        "train_ratio": med["train_project"] / med["train_reference"],
        "train_ratio_paired": statistics.median(p / q for p, q in zip(samples["train_project"],
                                                                         samples["train_reference"])),
        "macs_per_image": macs, "flops_convention": FLOPS_CONVENTION, "gflops": gflops,
        "cpu_peak": peak,
        "matmul_peak": accel,
        "peak_fraction": {k: v / peak["peak_gflops"] for k, v in gflops.items()} if peak else
        {k: v / (1e3 * accel["tflops"]) for k, v in gflops.items()} if accel else None,
        "pipeline_workers": workers,
    }


def format_bench(result: dict[str, Any]) -> str:
    """The figures as the text `cifarkit bench` prints."""
    ips, gf = result["images_per_s"], result["gflops"]
    frac = result["peak_fraction"] or {}

    def pct(key: str) -> str:
        return f"  {100 * frac[key]:5.1f}% of peak" if key in frac else ""

    lines = [
        f"cifarkit bench: {result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"{result['threads']} threads",
        f"batch {result['batch_size']}, {result['steps']} steps per timing, {result['warmup']} warm-up, median of "
        f"{result['repeats']} interleaved repeats; bf16 autocast: {result['autocast_bf16']}, "
        f"channels_last: {result['channels_last']}",
        "",
        "training (images/s)",
        f"  bare reference loop (model, Adam, CE)  {ips['train_reference']:10.1f}   {gf['train_reference']:8.1f} "
        f"GFLOP/s{pct('train_reference')}",
        f"  cifarkit.train.train_step              {ips['train_project']:10.1f}   {gf['train_project']:8.1f} "
        f"GFLOP/s{pct('train_project')}",
        f"  ratio project / reference              {result['train_ratio']:10.3f}   (paired per repeat: "
        f"{result['train_ratio_paired']:.3f})",
        f"evaluation (eval mode, no grad)          {ips['eval']:10.1f}   {gf['eval']:8.1f} GFLOP/s{pct('eval')}",
        f"  model: {result['macs_per_image'] / 1e9:.4f} G multiply-adds per image forward "
        f"({result['macs_per_image'] * 512 / 1e9:.2f} G at batch 512)",
        f"  {result['flops_convention']}",
    ]
    peak = result["cpu_peak"]
    if peak:
        lines += [f"CPU {peak.get('dtype', 'fp32')} FMA peak: {peak['formula']}",
                  f"  cores = min(sched_getaffinity {peak['affinity_cpus']}, torch threads {peak['torch_threads']}); "
                  f"clock = /proc/cpuinfo 'cpu MHz' (base clock in a VM: boost can beat it); "
                  f"lanes {peak['lanes']} = fp32 per {'512' if peak['lanes'] == 16 else '256' if peak['lanes'] == 8 else '128'}"
                  f"-bit vector; FMA units per core {peak['fma_units']}"]
    elif result.get("matmul_peak"):
        mm = result["matmul_peak"]
        lines.append(f"peak = measured dense matmul ceiling: {mm['tflops']:.1f} TFLOP/s ({mm['n']}^3 {mm['dtype']} "
                     f"products, median of {mm['repeats']}, random data)")
    elif result["device"] == "cpu":
        lines.append("CPU fp32 FMA peak: unknown (no /proc/cpuinfo clock or no AVX2/FMA flags)")
    train_ips = ips["train_project"]
    lines += [
        "data pipelines alone (images/s)",
        f"  albumentations DataLoader ({result['pipeline_workers']} workers) {ips['pipeline_albumentations']:10.1f}"
        f"   ({ips['pipeline_albumentations'] / train_ips:.1f}x training)",
        f"  batched on device (DeviceBatches)       {ips['pipeline_batched']:10.1f}   "
        f"({ips['pipeline_batched'] / train_ips:.1f}x training, "
        f"{ips['pipeline_batched'] / ips['pipeline_albumentations']:.1f}x albumentations)",
    ]
    return "\n".join(lines)
