"""What a run leaves behind: config, schedule, LR-finder data, history.csv, steps.csv, metrics.json, model.pt, the
progress bar, one fixed-column line per epoch, and optional TensorBoard scalars. Only rank 0 writes."""

from __future__ import annotations

import csv
import math
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cifarkit import run as R
from cifarkit.atomic import atomic_write, write_json
from cifarkit.config import TrainConfig
from cifarkit.console import say
from cifarkit.cpuinfo import cpu_model, usable_cpus
from cifarkit.data import Cifar10
from cifarkit.data.sources import describe_data
from cifarkit.inference.model_file import save_model
from cifarkit.lr_finder import LRFinderResult
from cifarkit.report.render import fmt_count, fmt_epoch

# train_loss: what training minimises (with label smoothing, if any); train_ce: the plain cross-entropy, as test_loss
HISTORY_COLUMNS = ("epoch", "train_loss", "train_ce", "train_acc", "test_loss", "test_acc", "test_acc_tta", "lr",
                   "seconds", "images_per_second", "skipped_steps")
STEP_COLUMNS = ("step", "epoch", "loss", "lr")  # steps.csv: 1-based optimiser step and epoch, rank 0's batch loss


def hardware_info(device: torch.device) -> dict[str, Any]:
    info = {"cpu": cpu_model(), "cpu_cores": usable_cpus(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def duration(seconds: float) -> str:
    """"8 h 10 min", "12 min", "40 s": a time to wait, to the minute once it is longer than one."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def weights_checksum(model: nn.Module) -> float:
    """A position-weighted sum of every parameter and buffer: equal on two ranks only if their weights are. Summed in
    float32 on the weights' device (MPS has no float64), read once."""
    tensors = list(model.state_dict().values())
    total = torch.zeros((), device=tensors[0].device)
    for i, t in enumerate(tensors):
        if t.is_floating_point():
            total += t.float().sum() * (i + 1)
    return float(total)


class RunLog:
    """Files and console output of one run."""

    def __init__(self, run: Path, config: TrainConfig, *, enabled: bool, progress: bool) -> None:
        self.run, self.config, self.enabled = run, config, enabled
        self.progress = progress and enabled
        self.rows: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0.0
        self.metrics: dict[str, Any] = {}
        self.writer: Any = None
        self.classes: tuple[str, ...] = ()
        self.steps: list[list[float]] = []  # one STEP_COLUMNS row per optimiser step, on the host
        self.steps_per_epoch = 1
        self._losses: torch.Tensor | None = None  # step losses not yet on the host, kept on the device
        self._first = self._pending = 0  # the global step of _losses[0]; how many of _losses are filled

    def restore(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.steps = [list(row) for row in state.get("steps", [])]  # absent in checkpoints without per-step rows

    def state(self) -> dict[str, Any]:
        self._flush_steps()  # a mid-epoch checkpoint keeps the epoch's steps so far
        return {"rows": self.rows, "train_seconds": self.train_seconds, "train_images": self.train_images,
                "steps": self.steps}

    def lr_finder(self, result: LRFinderResult) -> None:
        if self.enabled:
            self.run.mkdir(parents=True, exist_ok=True)
            result.save(self.run)
            skipped = f" (+{result.skipped} skipped by the fp16 scaler)" if result.skipped else ""
            say(f"lr-find: {len(result.lrs)} steps{skipped}; LRMIN {result.lr_min:.3g} ({result.lr_min_rule}); "
                       f"LRMAX {result.lr_max:.3g} ({result.lr_max_rule})")

    def header(self, data: Cifar10, fingerprint: str | None, device: torch.device, world: int) -> None:
        """What the run trains on, and where: said before anything slow (the range test takes minutes on a CPU)."""
        self.hardware = "CPU" if device.type == "cpu" else "GPU"
        if not self.enabled:
            return
        say(describe_data(data, fingerprint))
        if data.synthetic:
            say(f"NOTE: training on {data.source}: results say nothing about CIFAR-10")
        info = hardware_info(device)
        say(f"device: {device} x{world} ({info.get('gpu') or info['cpu']}), precision {self.config.precision}")
        c = self.config
        if c.lr_min is None or c.lr_max is None:
            passes = c.lr_find_iters * c.batch_size / max(len(data.train_labels), 1)
            say(f"LR range test: {c.lr_find_iters} steps of {c.batch_size} images, {passes:.1f} passes over "
                       f"the {len(data.train_labels):,} training images (--lr-find-iters sets the steps)")

    def eta(self, epoch: int, steps: int, seconds: float) -> None:
        """After this process's first epoch of `steps` steps in `seconds`: how long the run takes at that pace."""
        left = self.config.epochs - epoch - 1
        if not self.enabled or steps <= 0 or left <= 0:
            return
        per_step = seconds / steps
        say(f"{self.config.epochs} epochs ≈ {duration(self.config.epochs * self.steps_per_epoch * per_step)} "
                   f"at {per_step:.{1 if per_step >= 1 else 3}f} s per step on this {self.hardware}; "
                   f"{duration(left * self.steps_per_epoch * per_step)} of training steps to go, plus evaluation")

    def start(self, config: TrainConfig, data: Cifar10, lrs: list[float], steps_per_epoch: int,
              device: torch.device, world: int) -> None:
        self.config = config  # now with the LRs the range test found
        self.classes = tuple(data.classes)
        self.lrs = lrs
        self.steps_per_epoch = steps_per_epoch
        self._losses = torch.zeros(steps_per_epoch, device=device) if self.enabled else None
        self.base = {"lr_min": self.config.lr_min, "lr_max": self.config.lr_max, "device": str(device),
                     "world_size": world, "hardware": hardware_info(device), "dataset": data.source,
                     "synthetic": data.synthetic, "train_images": len(data.train_labels),
                     "test_images": len(data.test_labels), "steps_per_epoch": steps_per_epoch}
        if not self.enabled:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        R.write_config(self.run, self.config)
        write_json(self.run / R.SCHEDULE, {"lrs": lrs, "steps_per_epoch": steps_per_epoch,
                                                "peak_epoch": self.config.peak_epoch, "epochs": self.config.epochs})
        c = self.config
        beta1 = f"; Adam beta1 {c.beta1_ends:g} -> {c.beta1_peak:g} -> {c.beta1_ends:g}" \
            if c.beta1_peak != c.beta1_ends else ""
        say(f"run {self.run}: {fmt_count(c.epochs, 'epoch')} x {fmt_count(steps_per_epoch, 'step')} of "
                   f"{c.batch_size}; one-cycle LR {c.lr_min:.3g} -> {c.lr_max:.3g} (peak at epoch "
                   f"{fmt_epoch(c.peak_epoch)}) -> {c.lr_min / c.final_div:.3g}{beta1}")
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self.writer = SummaryWriter(str(self.run / R.TENSORBOARD))
            for step, lr in enumerate(lrs):
                self.writer.add_scalar("lr", lr, step)

    def bar(self, epoch: int, total: int, initial: int) -> tqdm:
        return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                    disable=not self.progress, dynamic_ncols=True)

    def step(self, bar: tqdm, global_step: int, loss: torch.Tensor, sums: torch.Tensor, *, show: bool = True) -> None:
        """One step; `show`: also update the bar's loss and accuracy, which reads the device (the loop says when).
        `sums`: the epoch's (loss, cross-entropy, correct, seen) so far."""
        bar.update(1)
        if self._losses is not None:
            self._record_loss(global_step, loss)
        if self.progress and show:
            s = sums.tolist()
            bar.set_postfix_str(f"loss {float(loss):.4f} acc {100 * s[-2] / max(s[-1], 1):.2f}% "
                                f"lr {self.lrs[global_step]:.2e}")

    def epoch(self, epoch: int, *, train_loss: float, train_acc: float, test: dict[str, float], lr: float,
              seconds: float, train_seconds: float, images: float, skipped: int = 0,
              train_ce: float = math.nan) -> None:
        """One epoch's row and line; `skipped`: its steps that the fp16 gradient scaler skipped; `train_ce`: the
        train cross-entropy without label smoothing (the test loss's measure)."""
        images_per_second = images / train_seconds
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_ce": train_ce, "train_acc": train_acc,
               "test_loss": test["loss"], "test_acc": test["acc"], "test_acc_tta": test["acc_tta"], "lr": lr,
               "seconds": seconds, "images_per_second": images_per_second, "skipped_steps": skipped}
        self.rows.append(row)
        self.train_images += images
        self.train_seconds += train_seconds
        if not self.enabled:
            return
        tta = "" if math.isnan(test["acc_tta"]) else f" tta {100 * test['acc_tta']:6.2f}%"
        scaled = f" | {skipped:3d} skipped" if self.config.precision == "fp16" else ""  # only fp16 has a scaler
        say(f"epoch {epoch + 1:3d}/{self.config.epochs} | train loss {train_loss:.4f} acc "
                   f"{100 * train_acc:6.2f}% | test loss {test['loss']:.4f} acc {100 * test['acc']:6.2f}%{tta} | "
                   f"lr {lr:.3e} | {seconds:7.1f} s | {images_per_second:7.1f} img/s{scaled}")
        with atomic_write(self.run / R.HISTORY, text=True) as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            w.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                        for r in self.rows)
        R.write_metrics(self.run, self.summary())
        self._write_steps()
        if self.writer is not None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                self.writer.add_scalar(key, row[key], epoch + 1)

    def _record_loss(self, global_step: int, loss: torch.Tensor) -> None:
        """Keep a step's loss on the device: reading it on the host would make every step wait for the GPU."""
        assert self._losses is not None
        if self._pending == len(self._losses):  # not reached when epochs end on time; a safety valve
            self._flush_steps()
        if self._pending == 0:
            self._first = global_step
        self._losses[self._pending] = loss.detach()
        self._pending += 1

    def _flush_steps(self) -> None:
        """Move the pending step losses to the host: one sync per epoch (and per mid-epoch checkpoint)."""
        if self._losses is None or not self._pending:
            return
        for i, loss in enumerate(self._losses[: self._pending].tolist()):
            step = self._first + i
            self.steps.append([step + 1, step // self.steps_per_epoch + 1, loss, self.lrs[step]])
        self._pending = 0

    def _write_steps(self) -> None:
        """RUN/steps.csv: every step so far, rewritten whole (atomically) once per epoch."""
        self._flush_steps()
        with atomic_write(self.run / R.STEPS, text=True) as f:
            w = csv.writer(f)
            w.writerow(STEP_COLUMNS)
            w.writerows(self.steps)

    def summary(self) -> dict[str, Any]:
        accs = [r["test_acc"] for r in self.rows]
        out = {"final_test_accuracy": accs[-1] if accs else None, "best_test_accuracy": max(accs, default=None),
               "epochs_completed": len(self.rows), "epochs": self.config.epochs,
               "train_seconds": self.train_seconds,
               "skipped_steps": sum(r.get("skipped_steps", 0) for r in self.rows),  # rows of older runs lack it
               "images_per_second": self.train_images / self.train_seconds if self.train_seconds else None}
        if self.config.tta and self.rows:
            out["final_test_accuracy_tta"] = self.rows[-1]["test_acc_tta"]
        return out | self.base

    def finish(self, model: nn.Module, checksums: list[float]) -> list[dict[str, float]]:
        self.metrics = self.summary() | {"weights_checksum_per_rank": checksums}
        if self.enabled:
            save_model(self.run / R.MODEL, model, self.config, self.classes)
            R.write_metrics(self.run, self.metrics)
            if self.writer is not None:
                self.writer.close()
        return self.rows
