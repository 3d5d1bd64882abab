"""RunLog keeps the training loss of every step on the device, writes it once per epoch as RUN/steps.csv, and carries
the steps of an interrupted epoch through the checkpoint."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch

from cifarkit.config import TrainConfig
from cifarkit.data import make_synthetic
from cifarkit.runlog import STEP_COLUMNS, RunLog

EPOCHS, STEPS = 2, 3
LRS = [1e-4 * (k + 1) for k in range(EPOCHS * STEPS)]


def new_log(run: Path) -> RunLog:
    config = TrainConfig(data="synthetic", out=str(run), epochs=EPOCHS, lr_min=1e-4, lr_max=1e-3)
    return RunLog(run, config, enabled=True, progress=False)


def start(log: RunLog, device: str = "cpu") -> None:
    log.start(log.config, make_synthetic(n_train=10, n_test=5), LRS, STEPS, torch.device(device), 1)


def loss_of(step: int) -> float:
    return 2.0 / (step + 1) + 0.01 * (step % 2)


def run_steps(log: RunLog, steps: range) -> None:
    """Global steps `steps` as the training loop reports them, with each epoch's end where one ends."""
    sums = torch.zeros(3, dtype=torch.float64)
    for step in steps:
        with log.bar(step // STEPS, STEPS, step % STEPS) as bar:
            log.step(bar, step, torch.tensor(loss_of(step)), sums)
        if (step + 1) % STEPS == 0:
            log.epoch(step // STEPS, train_loss=1.0, train_acc=0.5, test={"loss": 1.0, "acc": 0.5, "acc_tta": math.nan},
                      lr=LRS[step], seconds=1.0, train_seconds=1.0, images=24.0)


def test_steps_csv_has_a_row_per_step(tmp_path: Path) -> None:
    """After two epochs of three steps, steps.csv has the columns step, epoch, loss, lr and six rows: 1-based step
    and epoch, each step's loss (as float32) and the LR the step used."""
    log = new_log(tmp_path)
    start(log)
    run_steps(log, range(EPOCHS * STEPS))
    with open(tmp_path / "steps.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == STEP_COLUMNS == ("step", "epoch", "loss", "lr")
    assert len(rows) - 1 == EPOCHS * STEPS
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]
    assert [int(r[1]) for r in rows[1:]] == [1, 1, 1, 2, 2, 2]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([loss_of(k) for k in range(6)], rel=1e-6)
    assert [float(r[3]) for r in rows[1:]] == LRS


def test_steps_survive_a_mid_epoch_checkpoint(tmp_path: Path) -> None:
    """A run stopped after one step of epoch 2 keeps that step in RunLog.state() (which loads with weights_only, as
    the checkpoint does); restored and continued, it writes the same steps.csv as an uninterrupted run."""
    whole = new_log(tmp_path / "whole")
    start(whole)
    run_steps(whole, range(EPOCHS * STEPS))

    first = new_log(tmp_path / "resumed")
    start(first)
    run_steps(first, range(STEPS + 1))
    buffer = io.BytesIO()
    torch.save({"history": first.state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["history"]
    assert len(state["steps"]) == STEPS + 1

    second = new_log(tmp_path / "resumed")
    second.restore(state)
    start(second)
    run_steps(second, range(STEPS + 1, EPOCHS * STEPS))
    assert (tmp_path / "resumed" / "steps.csv").read_text() == (tmp_path / "whole" / "steps.csv").read_text()


def test_a_step_never_reads_the_loss_on_the_host(tmp_path: Path) -> None:
    """RunLog.step only copies the loss on its device: with meta tensors, which hold no values to read, steps run;
    the first read is the end of the epoch's flush (state() here)."""
    log = new_log(tmp_path)
    start(log, "meta")
    sums = torch.zeros(3, device="meta")
    with log.bar(0, STEPS, 0) as bar:
        for step in range(STEPS):
            log.step(bar, step, torch.zeros((), device="meta"), sums)
    with pytest.raises(NotImplementedError, match="meta"):
        log.state()
