"""fit(config): the assignment's run end to end: data, LR range test, one-cycle Adam, evaluation, checkpoints.

The loop is forward -> loss -> backward -> step -> schedule; logging, checkpoints and plots are named functions.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit import distributed as D
from cifarkit.checkpoint import (PartialEpoch, load_checkpoint, restore_weights, resume_config, save_checkpoint,
                                 set_rng_state)
from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, subset
from cifarkit.data.loaders import BatchSource, build_train_batches, resolve_augment
from cifarkit.device import (autocast, backend_settings, backward_step, grad_scaler, host_sync_every, pick_device,
                             resolve_precision)
from cifarkit.errors import CifarkitError
from cifarkit.inference import evaluate
from cifarkit.interruptions import TrainingInterrupted, check_step, non_finite, stop_on_signals
from cifarkit.lr_finder import range_test
from cifarkit.models import build_model
from cifarkit.report import write_plots, write_report
from cifarkit.run import CHECKPOINT, check_run_out, claim_run_folder
from cifarkit.runlog import RunLog, weights_checksum
from cifarkit.schedule import one_cycle, schedule_lrs
from cifarkit.training_data import run_data


@dataclass
class History:  # what fit returns: the run folder, one dict per epoch (history.csv's rows), metrics.json
    run_dir: Path
    epochs: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               x: torch.Tensor, y: torch.Tensor, *, precision: str, scaler: torch.amp.GradScaler,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step in `precision` through `scaler` (device.grad_scaler); returns the batch's mean loss, its
    sums (loss, cross-entropy without label smoothing, number correct: float32 [3]), both left on the device, and
    whether the fp16 scaler skipped the step.

        loss, sums, skipped = train_step(model, opt, sched, x, y, precision="fp16", scaler=grad_scaler("fp16", dev))
    """
    with autocast(precision, x.device):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)  # logits: softmax lives in the loss
    skipped = backward_step(loss, optimizer, scaler)
    with warnings.catch_warnings():  # a skipped step still takes its place in the schedule: the run keeps its length
        if skipped:  # torch reads a skipped first step as a scheduler stepped before its optimizer, and warns
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        scheduler.step()
    loss, logits = loss.detach().float(), logits.detach()
    plain = F.cross_entropy(logits.float(), y) if label_smoothing else loss  # comparable with the test loss
    return loss, torch.stack([loss * len(y), plain * len(y), (logits.argmax(1) == y).sum().float()]), skipped


def fit(config: TrainConfig, *, data: Cifar10 | str | None = None, resume: bool = False,
        progress: bool = True) -> History:
    """Train `config` into config.out; with resume, continue exactly from RUN/checkpoints/last.pt.

        history = fit(TrainConfig(epochs=24, out="runs/a"))   # the assignment, LRs from the range test
        history = fit(TrainConfig(out="runs/b"), data="synthetic")   # data: a Cifar10, a path or "synthetic"
        history.metrics["final_test_accuracy"]

    The run records the data it used (config.json's `data` and `data_fingerprint`); a resumed run trains on exactly
    that data. A start that fails before the first checkpoint leaves no run folder behind.
    """
    config.validate()
    device = pick_device(config.device)
    ctx = D.init_distributed(device.type)
    device = pick_device(config.device, ctx.local_rank)
    run = Path(config.out)
    try:
        if ctx.is_main:  # before the data loads: a folder that cannot take the run is refused first
            check_run_out(run, kind="resume" if resume else "train")
        config, source = run_data(config, data, resume, run)  # checked before the run folder is made
        with claim_run_folder(run, enabled=ctx.is_main), backend_settings(device, deterministic=config.deterministic):
            state = _setup(config, source, resume, progress, run, device, ctx)
            _train(state)
            return _finish(state)
    finally:
        D.shutdown(ctx)


@dataclass
class _Run:
    """Everything the loop reads and updates, built once by `_setup`."""

    config: TrainConfig
    data: Cifar10
    model: nn.Module  # the weights that are saved
    net: nn.Module  # what the loop calls: the model, possibly wrapped in DDP and compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchSource
    lrs: list[float]
    log: RunLog
    device: torch.device
    ctx: D.DistContext
    run: Path
    scaler: torch.amp.GradScaler  # fp16's loss scaler; a pass-through in bf16 and fp32
    start_epoch: int = 0
    start_step: int = 0
    partial: PartialEpoch | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.run / CHECKPOINT


def _setup(config: TrainConfig, data: Cifar10, resume: bool, progress: bool, run: Path, device: torch.device,
           ctx: D.DistContext) -> _Run:
    """Model, LRs (from the range test unless given), optimizer and schedule on `data` (from run_data); on resume,
    the saved state."""
    ckpt_path = run / CHECKPOINT
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        config = resume_config(TrainConfig.from_dict(state["config"]), config)
        if state.get("world_size", 1) != ctx.world_size:  # each rank's data order depends on the world size
            raise CifarkitError(f"cannot resume: {ckpt_path} was written by {state.get('world_size', 1)} process(es), "
                                f"this run has {ctx.world_size}; resume with as many (torchrun --nproc_per_node)")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = subset(data, config.subset, config.test_subset, seed=config.seed)
    model = build_model(len(data.classes), device=device, channels_last=config.channels_last)
    config = replace(config, precision=resolve_precision(config.precision, device),  # config.json: what ran, not auto
                     augment=resolve_augment(config.augment, device))
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device, rank=ctx.rank,
                                  world_size=ctx.world_size)
    D.check_setup(config.batch_size, config.sync_bn, ctx, device)
    log = RunLog(run, config, enabled=ctx.is_main, progress=progress)
    log.header(data, config.data_fingerprint, device, ctx.world_size)  # before the range test: minutes on a CPU
    if config.lr_min is None or config.lr_max is None:
        # Rank 0 runs the range test alone: on the global batch, as a one-process run does, so it finds the same LRs.
        # Every rank takes its suggestions; the range test runs under the run's precision, with a scaler of its own.
        found = None
        if ctx.is_main:
            lr_batches = build_train_batches(data.train_images, data.train_labels, config, device=device) \
                if ctx.enabled else batches
            result = range_test(model, lr_batches, config, progress=log.progress, precision=config.precision)
            log.lr_finder(result)
            found = (result.lr_min, result.lr_max)
            del lr_batches
        lr_min, lr_max = D.broadcast_object(found, ctx)
        config = replace(config, lr_min=config.lr_min or lr_min, lr_max=config.lr_max or lr_max)
        config.validate()
    assert config.lr_min is not None and config.lr_max is not None and config.peak_epoch is not None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr_max, weight_decay=config.weight_decay)
    cycle = dict(lr_min=config.lr_min, lr_max=config.lr_max, epochs=config.epochs, steps_per_epoch=len(batches),
                 peak_epoch=config.peak_epoch, final_div=config.final_div)
    lrs = schedule_lrs(**cycle)
    scheduler = one_cycle(optimizer, **cycle, momentum=(config.beta1_peak, config.beta1_ends))
    r = _Run(config, data, model, model, optimizer, scheduler, batches, lrs, log, device, ctx, run,
             grad_scaler(config.precision, device))
    if state is not None:
        restore_weights(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty from a scaler that is off (bf16, fp32), absent before fp16 existed
            r.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        r.start_epoch, r.start_step = state["epoch"], state["step_in_epoch"]
        r.partial = PartialEpoch.from_dict(state["partial"])
        log.restore(state["history"])
    log.start(config, data, lrs, len(batches), device, ctx.world_size)
    if config.sync_bn and ctx.enabled:
        r.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    r.net = model
    if ctx.enabled:
        r.net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        r.net = torch.compile(r.net)  # type: ignore[assignment]
    return r


def _train(r: _Run) -> None:
    """The loop: forward -> loss -> backward -> step -> schedule, then evaluate and checkpoint each epoch."""
    c, steps = r.config, len(r.batches)
    test_x, test_y = torch.from_numpy(r.data.test_images).to(r.device), torch.from_numpy(r.data.test_labels).to(r.device)
    every = host_sync_every(r.device)  # the loop reads the device (loss, stop, progress bar) at these steps only
    # open_bars: an error or a signal mid-epoch closes the bar first, so its message starts a line of its own
    with stop_on_signals() as stop, contextlib.ExitStack() as open_bars:
        for epoch in range(r.start_epoch, c.epochs):
            t0 = time.perf_counter() - (r.partial.seconds if r.partial else 0.0)
            sums = _epoch_sums(r.partial, r.ctx, r.device)  # loss, cross-entropy, correct, seen: on the device
            skipped = int(r.partial.skipped) if r.partial else 0  # steps the fp16 scaler skipped: alike on every rank
            bar = open_bars.enter_context(r.log.bar(epoch, steps, r.start_step))
            for step, (x, y) in enumerate(r.batches.epoch(epoch, r.start_step), start=r.start_step):
                loss, batch_sums, step_skipped = train_step(r.net, r.optimizer, r.scheduler, x, y,
                                                            precision=c.precision, scaler=r.scaler,
                                                            label_smoothing=c.label_smoothing)
                skipped += step_skipped
                sums[:3] += batch_sums  # in-place adds on the device: no step waits on the host
                sums[3] += len(y)
                r.log.step(bar, epoch * steps + step, loss, sums, show=step % every == 0)
                nonfinite, stopping = check_step(step, loss, "signum" in stop, every, r.ctx, r.device)
                if nonfinite:
                    raise non_finite(float(loss), epoch, epoch * steps + step + 1, r.ckpt_path, "at")
                if stopping:
                    _stop(r, epoch, step + 1, sums, skipped, time.perf_counter() - t0,
                          stop.get("signum", signal.SIGTERM))
            bar.close()
            train_seconds = time.perf_counter() - t0
            if epoch == r.start_epoch:  # speak early: this process's first steps time the whole run
                r.log.eta(epoch, steps - r.start_step, train_seconds - (r.partial.seconds if r.partial else 0.0))
            train_loss, train_ce, train_correct, count = D.all_reduce_sum(sums, r.ctx).tolist()
            if not math.isfinite(train_loss):  # a GPU reads the loss every 25 steps: never evaluate or save NaN weights
                raise non_finite(train_loss, epoch, (epoch + 1) * steps, r.ckpt_path, "by")
            D.sync_buffers(r.model, r.ctx)
            test = evaluate(r.model, test_x, test_y, c, precision=c.precision, tta=c.tta, ctx=r.ctx)
            r.log.epoch(epoch, train_loss=train_loss / count, train_ce=train_ce / count,
                        train_acc=train_correct / count, test=test,
                        lr=r.lrs[(epoch + 1) * steps - 1], seconds=time.perf_counter() - t0,
                        train_seconds=train_seconds, images=count, skipped=skipped)
            r.start_step, r.partial = 0, None
            _save(r, epoch + 1, 0, None)


def _epoch_sums(partial: PartialEpoch | None, ctx: D.DistContext, device: torch.device) -> torch.Tensor:
    """(loss sum, cross-entropy sum, correct, seen) to start an epoch from, float32 (MPS has no float64; the counts
    are exact below 2^24 images). An interrupted epoch carries on from each rank's own sums (float32 -> checkpoint ->
    float32 is exact), so the epoch's figures are the uninterrupted run's to the bit; a checkpoint without them has
    the totals, which rank 0 carries on while the other ranks start from zero."""
    values = [0.0] * 4
    if partial and partial.per_rank:
        values = partial.per_rank[ctx.rank]
    elif partial and ctx.is_main:
        values = [partial.loss_sum, partial.ce_sum, partial.correct, partial.seen]
    return torch.tensor(values, dtype=torch.float32, device=device)


def _stop(r: _Run, epoch: int, step_in_epoch: int, sums: torch.Tensor, skipped: int, seconds: float,
          signum: int) -> None:
    """A signal: save the epoch so far at this step boundary, then stop."""
    per_rank = D.gather_rows(sums, r.ctx)
    loss_sum, ce_sum, correct, seen = (sum(column) for column in zip(*per_rank))
    _save(r, epoch, step_in_epoch, PartialEpoch(loss_sum, correct, seen, seconds, skipped, ce_sum, per_rank))
    raise TrainingInterrupted(signum, f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step "
                              f"{step_in_epoch}; checkpoint saved to {r.ckpt_path}; continue with: cifarkit train "
                              f"--resume --out {r.run}")


def _save(r: _Run, epoch: int, step_in_epoch: int, partial: PartialEpoch | None) -> None:
    """The checkpoint: a dict of named fields (docs/design.md#resume)."""
    if partial is not None and not math.isfinite(partial.loss_sum):  # a NaN since the last check (GPU)
        raise non_finite(partial.loss_sum, epoch, epoch * len(r.batches) + step_in_epoch, r.ckpt_path, "by")
    if r.ctx.is_main:
        save_checkpoint(r.ckpt_path, {"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
                                      "scheduler": r.scheduler.state_dict(), "scaler": r.scaler.state_dict(),
                                      "epoch": epoch,
                                      "step_in_epoch": step_in_epoch,
                                      "partial": asdict(partial) if partial else None,
                                      "config": r.config.to_dict(), "history": r.log.state(),
                                      "world_size": r.ctx.world_size})


def _finish(r: _Run) -> History:
    """Final metrics and weights, then the run's plots and report."""
    checksums = D.gather_floats(weights_checksum(r.model), r.ctx, r.device)
    history = r.log.finish(r.model, checksums)
    if r.ctx.is_main and r.config.plots:
        write_plots(r.run, model=r.model, data=r.data, config=r.config, device=r.device, precision=r.config.precision)
        write_report(r.run)
    D.barrier(r.ctx)
    return History(run_dir=r.run, epochs=history, metrics=r.log.metrics)

