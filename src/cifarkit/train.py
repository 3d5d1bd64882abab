"""fit(config): the assignment's run end to end: data, LR range test, one-cycle Adam, evaluation, checkpoints.

The loop is forward -> loss -> backward -> step -> schedule; logging, checkpoints and plots are named functions.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit import distributed as D
from cifarkit.checkpoint import RunLock, load_checkpoint, restore_weights, save_checkpoint, set_rng_state
from cifarkit.config import RESUMABLE_FIELDS, TrainConfig
from cifarkit.data import Cifar10, resolve_data, subset
from cifarkit.errors import CifarkitError
from cifarkit.augment import normalize_batch
from cifarkit.loaders import build_train_batches, repeat_epochs
from cifarkit.lr_finder import LRFinderResult, find_lr
from cifarkit.models import CustomResNet
from cifarkit.runlog import RunLog, weights_checksum
from cifarkit.schedule import one_cycle, schedule_lrs


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written at a step boundary; `train --resume` continues from it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(CifarkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class History:
    run_dir: Path
    epochs: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto": cuda, then mps, then cpu. Asking for a device that is not there is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CifarkitError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CifarkitError("--device mps was asked for, but MPS is not available here; use --device cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise CifarkitError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX flags in /proc/cpuinfo; False if unreadable).

    Where it does, bf16 autocast pays: on this project's 2-core AMD EPYC (avx512_bf16) a batch-512 training step took
    1.6 s against 3.0 s in fp32. Without those units we have measured nothing, so we stay with fp32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return bool({"avx512_bf16", "amx_bf16"} & set(cpuinfo.split()))


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: --precision bf16/fp32 as asked; auto: CUDA, or a CPU with bf16 units."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               x: torch.Tensor, y: torch.Tensor, *, autocast: bool,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns the batch's mean loss and number correct, as tensors left on the device."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)  # logits: softmax lives in the loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach().float(), (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, *,
             autocast: bool = False, tta: bool = False, ctx: D.DistContext = D.DistContext()) -> dict[str, float]:
    """Loss and accuracy on uint8 [M, 32, 32, 3] images held on the device, in eval mode. Under torchrun each rank
    takes a contiguous slice, so every test image counts exactly once. With tta, also the flip-TTA accuracy."""
    was_training = model.training
    model.eval()
    lo, hi = D.shard_range(len(labels), ctx)
    sums = torch.zeros(4, dtype=torch.float64, device=images.device)  # loss sum, correct, correct with TTA, count
    for start in range(lo, hi, config.eval_batch_size):
        stop = min(start + config.eval_batch_size, hi)
        x = normalize_batch(images[start:stop], config.mean, config.std_values, channels_last=config.channels_last)
        y = labels[start:stop]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        if tta:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
                flipped = model(torch.flip(x, dims=[3])).float()
            sums[2] += ((logits.softmax(1) + flipped.softmax(1)).argmax(1) == y).sum()
        sums[3] += stop - start
    model.train(was_training)
    loss, correct, correct_tta, count = D.all_reduce_sum(sums, ctx).tolist()
    return {"loss": loss / count, "acc": correct / count, "acc_tta": correct_tta / count if tta else float("nan")}


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


def resume_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved recipe, with only the fields that do not change what is trained taken from `given`."""
    merged = saved.to_dict()
    for key, value in given.to_dict().items():
        if key in RESUMABLE_FIELDS:
            merged[key] = value
        elif value != merged[key] and not (key in ("lr_min", "lr_max") and value is None) \
                and not (key == "precision" and value == "auto"):
            raise CifarkitError(f"cannot resume: {key} is {value!r} here but {merged[key]!r} in the checkpoint; "
                                "a resumed run keeps its recipe (or start a new run with another --out)")
    return TrainConfig.from_dict(merged)


def fit(config: TrainConfig, *, data: Cifar10 | None = None, resume: bool = False, progress: bool = True) -> History:
    """Train `config` into config.out; with resume, continue exactly from RUN/checkpoints/last.pt."""
    config.validate()
    device = pick_device(config.device)
    ctx = D.init_distributed(device.type)
    device = pick_device(config.device, ctx.local_rank)
    run = Path(config.out)
    try:
        with RunLock(run) if ctx.is_main else contextlib.nullcontext():
            return _fit(config, data, resume, progress, run, device, ctx)
    finally:
        D.shutdown(ctx)


def _fit(config: TrainConfig, data: Cifar10 | None, resume: bool, progress: bool, run: Path, device: torch.device,
         ctx: D.DistContext) -> History:
    ckpt_path = run / "checkpoints" / "last.pt"
    if resume and not ckpt_path.exists():  # stopped before its first epoch ended: there is nothing to lose
        raise CifarkitError(f"nothing to resume in {run}: no checkpoint yet (it is written at the end of the first "
                            "epoch); start the run again without --resume")
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        config = resume_config(TrainConfig.from_dict(state["config"]), config)
        if state.get("world_size", 1) != ctx.world_size:  # each rank's data order depends on the world size
            raise CifarkitError(f"cannot resume: {ckpt_path} was written by {state.get('world_size', 1)} process(es), "
                                f"this run has {ctx.world_size}; resume with as many (torchrun --nproc_per_node)")
    elif ckpt_path.exists():
        raise CifarkitError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once, then uses the fastest
    data = subset(data or resolve_data(config.data), config.subset, config.test_subset, seed=config.seed)
    model = CustomResNet(len(data.classes)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = use_bf16(config.precision, device)
    config = replace(config, precision="bf16" if autocast else "fp32")  # config.json records what ran, not "auto"
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device, rank=ctx.rank,
                                  world_size=ctx.world_size)
    D.check_setup(config.batch_size, config.sync_bn, ctx, device)
    log = RunLog(run, config, enabled=ctx.is_main, progress=progress)
    if config.lr_min is None or config.lr_max is None:
        # Rank 0 runs the range test alone: on the global batch, as a one-process run does, so it finds the same LRs.
        lr_batches = build_train_batches(data.train_images, data.train_labels, config, device=device) \
            if ctx.enabled and ctx.is_main else batches
        config = find_lrs(model, lr_batches, config, log, ctx)
        del lr_batches
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr_max, weight_decay=config.weight_decay)
    lrs = schedule_lrs(lr_min=config.lr_min, lr_max=config.lr_max, epochs=config.epochs,  # type: ignore[arg-type]
                       steps_per_epoch=len(batches), peak_epoch=config.peak_epoch, final_div=config.final_div)
    scheduler = one_cycle(optimizer, lr_min=config.lr_min, lr_max=config.lr_max, epochs=config.epochs,  # type: ignore[arg-type]
                          steps_per_epoch=len(batches), peak_epoch=config.peak_epoch,  # type: ignore[arg-type]
                          final_div=config.final_div, momentum=(config.beta1_peak, config.beta1_ends))
    start_epoch, start_step, partial = 0, 0, None
    if state is not None:
        restore_weights(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, start_step, partial = state["epoch"], state["step_in_epoch"], state.get("partial")
        log.restore(state["history"])
    log.start(config, data, lrs, len(batches), device, ctx.world_size)
    if config.sync_bn and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    test_x = torch.from_numpy(data.test_images).to(device)
    test_y = torch.from_numpy(data.test_labels).to(device)

    def checkpoint(epoch: int, step_in_epoch: int, partial: torch.Tensor | None = None) -> None:
        if partial is not None and not math.isfinite(float(partial[0])):  # a NaN since the last check (GPU)
            raise non_finite(float(partial[0]), epoch, epoch * len(batches) + step_in_epoch, ckpt_path, "by")
        if ctx.is_main:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "scaler": None, "epoch": epoch,
                                        "step_in_epoch": step_in_epoch, "partial": partial,
                                        "config": config.to_dict(), "history": log.state(),
                                        "world_size": ctx.world_size})

    check_every = 1 if device.type == "cpu" else 25  # reading the loss on the host waits for the GPU
    # open_bars: an error or a signal mid-epoch closes the bar first, so its message starts a line of its own
    with stop_on_signals() as stop, contextlib.ExitStack() as open_bars:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter() - (float(partial[3]) if partial is not None else 0.0)
            # An interrupted epoch's sums were reduced over ranks into the checkpoint: rank 0 carries them on.
            sums = partial[:3].to(device) if partial is not None and ctx.is_main else \
                torch.zeros(3, dtype=torch.float64, device=device)
            bar = open_bars.enter_context(log.bar(epoch, len(batches), start_step))
            for step, (x, y) in enumerate(batches.epoch(epoch, start_step), start=start_step):
                loss, correct = train_step(net, optimizer, scheduler, x, y, autocast=autocast,
                                           label_smoothing=config.label_smoothing)
                sums[0] += loss.double() * len(y)  # in-place adds on the device: no step waits on the host
                sums[1] += correct
                sums[2] += len(y)
                log.step(bar, epoch * len(batches) + step, loss, sums)
                nonfinite, stopping = check_step(step, loss, "signum" in stop, check_every, ctx, device)
                if nonfinite:
                    raise non_finite(float(loss), epoch, epoch * len(batches) + step + 1, ckpt_path, "at")
                if stopping:
                    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                    checkpoint(epoch, step + 1, torch.cat([D.all_reduce_sum(sums, ctx).cpu(), elapsed]))
                    signum = stop.get("signum", signal.SIGTERM)
                    raise TrainingInterrupted(signum, f"stopped by {signal.Signals(signum).name} at epoch "
                                              f"{epoch + 1}, step {step + 1}; checkpoint saved to {ckpt_path}; "
                                              f"continue with: cifarkit train --resume --out {run}")
            bar.close()
            train_seconds = time.perf_counter() - t0
            train_loss, train_correct, count = D.all_reduce_sum(sums, ctx).tolist()
            if not math.isfinite(train_loss):  # a GPU reads the loss every 25 steps: never evaluate or save NaN weights
                raise non_finite(train_loss, epoch, (epoch + 1) * len(batches), ckpt_path, "by")
            D.sync_buffers(model, ctx)
            test = evaluate(model, test_x, test_y, config, autocast=autocast, tta=config.tta, ctx=ctx)
            log.epoch(epoch, train_loss=train_loss / count, train_acc=train_correct / count, test=test,
                      lr=lrs[(epoch + 1) * len(batches) - 1], seconds=time.perf_counter() - t0,
                      train_seconds=train_seconds, images=count)
            start_step, partial = 0, None
            checkpoint(epoch + 1, 0)
    checksums = D.gather_floats(weights_checksum(model), ctx, device)
    history = log.finish(model, checksums)
    if ctx.is_main and config.plots:
        from cifarkit.report import write_plots, write_report  # matplotlib is loaded only when plots are drawn

        write_plots(run, model=model, data=data, config=config, device=device)
        write_report(run)
    D.barrier(ctx)
    return History(run_dir=run, epochs=history, metrics=log.metrics)


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


def range_test(model: nn.Module, batches: Any, config: TrainConfig, *, progress: bool = True) -> LRFinderResult:
    """The LR range test with config's sweep, weight decay, loss and precision, on endless repeats of `batches`."""
    device = next(model.parameters()).device
    return find_lr(model, repeat_epochs(batches), start_lr=config.lr_find_start, end_lr=config.lr_find_end,
                   iters=config.lr_find_iters, weight_decay=config.weight_decay,
                   label_smoothing=config.label_smoothing, autocast=use_bf16(config.precision, device),
                   progress=progress)


def find_lrs(model: nn.Module, batches: Any, config: TrainConfig, log: RunLog, ctx: D.DistContext) -> TrainConfig:
    """Fill the missing LRMIN/LRMAX with the range test's suggestions (run on rank 0, shared with all ranks)."""
    found = None
    if ctx.is_main:
        result = range_test(model, batches, config, progress=log.progress)
        log.lr_finder(result)
        found = (result.lr_min, result.lr_max)
    lr_min, lr_max = D.broadcast_object(found, ctx)
    values = config.to_dict() | {"lr_min": config.lr_min or lr_min, "lr_max": config.lr_max or lr_max}
    config = TrainConfig.from_dict(values)
    config.validate()
    return config
