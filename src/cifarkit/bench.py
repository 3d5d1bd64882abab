"""`cifarkit bench`: training, evaluation and data-pipeline throughput, side by side in one process.

Every figure is images per second, the median over `repeats`; the measurements are interleaved (reference step,
project step, evaluation, both pipelines, then again), so drift from other load on the machine hits them alike.
The reference is the barest loop: CustomResNet, Adam, CrossEntropyLoss, forward / backward / step on one pre-made
random batch. Both loops use the training's precision (device.resolve_precision) and memory format (channels_last as
TrainConfig says); in fp16 both step through a GradScaler, so their ratio is the cost of the project's step and
nothing else. In fp16 a third loop, the bare one without the scaler, gives the scaler's own cost.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit.config import TrainConfig
from cifarkit.data.loaders import build_train_batches
from cifarkit.device import (AUTOCAST_DTYPES, autocast, backend_settings, backward_kernels, grad_scaler, pick_device,
                             resolve_precision)
from cifarkit.flops import FLOPS_CONVENTION, count_macs, cpu_peak, device_seconds, matmul_peak
from cifarkit.models import build_model
from cifarkit.schedule import one_cycle
from cifarkit.train import train_step

PIPELINE_MIN_BATCHES = 10  # the pipelines are cheap: time at least this many batches so the figure is not noise


def _rate(fn: Callable[[], int], device: torch.device) -> float:
    """Images per second of fn(), which processes some images and returns how many; device work included."""
    images = 0

    def run() -> None:
        nonlocal images
        images = fn()

    seconds = device_seconds(run, device)
    return images / seconds


def run_bench(*, device: str = "auto", batch_size: int = 512, steps: int = 5, warmup: int = 2,
              repeats: int = 3, precision: str = "auto") -> dict[str, Any]:
    """Measure and return every figure (images/s medians, GFLOP/s, CPU peak fraction, pipelines) as a dict.

    precision: auto, bf16, fp16 or fp32, resolved as `cifarkit train` resolves it. cuDNN autotunes (CUDA) for the
    bench only, as for a run (device.backend_settings).
    """
    dev = pick_device(device)
    with backend_settings(dev):
        return _measure(dev, batch_size=batch_size, steps=steps, warmup=warmup, repeats=repeats, precision=precision)


def _measure(dev: torch.device, *, batch_size: int, steps: int, warmup: int, repeats: int,
             precision: str) -> dict[str, Any]:
    config = TrainConfig(batch_size=batch_size, lr_min=1e-4, lr_max=1e-3, precision=precision)
    config.validate()
    prec = resolve_precision(config.precision, dev)  # as train.py
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(dev)

    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return build_model(device=dev, channels_last=config.channels_last).train()

    proj_model, eval_model = make_model(), make_model().eval()
    criterion = nn.CrossEntropyLoss()
    proj_opt = torch.optim.Adam(proj_model.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    proj_scaler = grad_scaler(prec, dev)
    total_steps = warmup + repeats * steps + 1
    scheduler = one_cycle(proj_opt, lr_min=1e-4, lr_max=1e-3, epochs=1, steps_per_epoch=total_steps, peak_epoch=0.5)

    def bare_loop(scaler: torch.amp.GradScaler) -> Callable[[int], int]:
        """The reference: forward, loss, backward, step, with `scaler`'s calls only (a pass-through when off)."""
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=config.weight_decay)

        def run(n: int) -> int:
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                with autocast(prec, dev):
                    loss = criterion(model(x), y)
                with backward_kernels(proj_scaler, dev):  # the project's kernels: ratios compare loops, not kernels
                    scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            return n * batch_size
        return run

    reference = bare_loop(grad_scaler(prec, dev))
    # fp16 only: the bare loop without a scaler, whose ratio to `reference` is the GradScaler's own cost
    unscaled = bare_loop(grad_scaler("fp32", dev)) if prec == "fp16" else None

    def project(n: int) -> int:
        for _ in range(n):
            train_step(proj_model, proj_opt, scheduler, x, y, precision=prec, scaler=proj_scaler)
        return n * batch_size

    def evaluation(n: int) -> int:
        with torch.inference_mode(), autocast(prec, dev):
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

    loops = {"train_reference": reference, "train_project": project} | \
        ({"train_unscaled": unscaled} if unscaled is not None else {})
    for loop in (*loops.values(), evaluation):
        loop(warmup)
    timed: dict[str, Callable[[], int]] = {name: partial(loop, steps) for name, loop in loops.items()} | {
        "eval": partial(evaluation, steps), "pipeline_albumentations": pipeline("albumentations"),
        "pipeline_batched": pipeline("batched"),
    }
    for mode in sources:
        pipeline(mode)()  # starts DataLoader workers, allocator pools
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(repeats):
        # Alternate which training loop goes first: a slow-down that lasts a while then spreads over all of them.
        order = list(loops) if r % 2 == 0 else list(loops)[::-1]
        for name in order + ["eval", "pipeline_albumentations", "pipeline_batched"]:
            samples[name].append(_rate(timed[name], dev))

    med = {name: statistics.median(v) for name, v in samples.items()}
    macs = count_macs(build_model(device=dev))
    gflops = {name: med[name] * macs * 2 * 3 / 1e9 for name in loops} | {"eval": med["eval"] * macs * 2 / 1e9}
    # fp16 on a CPU runs on its fp32 FMAs (no fp16 vector units on AVX2/AVX-512F): fp32's peak is its ceiling.
    peak = cpu_peak(bf16=prec == "bf16") if dev.type == "cpu" else None
    # No datasheet figure on CUDA: the ceiling as measured here.
    accel = matmul_peak(dev, dtype=AUTOCAST_DTYPES.get(prec, torch.float32)) if dev.type == "cuda" else None
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        (peak["cpu"] if peak else platform.processor() or "cpu"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "repeats": repeats, "precision": prec, "channels_last": config.channels_last,
        "images_per_s": med, "samples": samples,
        "train_ratio": med["train_project"] / med["train_reference"],
        "train_ratio_paired": statistics.median(p / q for p, q in zip(samples["train_project"],
                                                                         samples["train_reference"])),
        # fp16: bare loop with the GradScaler / without it (1.0: the scaler costs nothing)
        "scaler_ratio": med["train_reference"] / med["train_unscaled"] if unscaled is not None else None,
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
        f"{result['repeats']} interleaved repeats; precision: {result['precision']}"
        f"{' (autocast + GradScaler in both loops)' if result['scaler_ratio'] is not None else ''}, "
        f"channels_last: {result['channels_last']}",
        "",
        "training (images/s)",
        f"  bare reference loop (model, Adam, CE)  {ips['train_reference']:10.1f}   {gf['train_reference']:8.1f} "
        f"GFLOP/s{pct('train_reference')}",
        f"  cifarkit.train.train_step              {ips['train_project']:10.1f}   {gf['train_project']:8.1f} "
        f"GFLOP/s{pct('train_project')}",
        f"  ratio project / reference              {result['train_ratio']:10.3f}   (paired per repeat: "
        f"{result['train_ratio_paired']:.3f})",
        *([f"  bare loop without the GradScaler       {ips['train_unscaled']:10.1f}   {gf['train_unscaled']:8.1f} "
           f"GFLOP/s{pct('train_unscaled')}",
           f"  ratio with / without the GradScaler    {result['scaler_ratio']:10.3f}   (the scaler's own cost)"]
          if result["scaler_ratio"] is not None else []),
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
