"""fit(): the run folder it writes, determinism on CPU, exact resume after SIGTERM mid-epoch, and refusals."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import cifarkit.train as train_module
from cifarkit.config import TrainConfig
from cifarkit.data import make_synthetic, subset
from cifarkit.device import grad_scaler
from cifarkit.errors import CifarkitError
from cifarkit.run import read_config
from cifarkit.train import TrainingInterrupted, fit
from by_hand import predictions_by_hand
from helpers import SHORT_SYNTHETIC, history, model_weights, snapshot


def tiny_config(out: Path, **kw) -> TrainConfig:
    values = dict(out=str(out), epochs=2, batch_size=8, subset=32, test_subset=16, lr_min=1e-4, lr_max=1e-3,
                  plots=False, data="synthetic")
    return TrainConfig(**(values | kw))


def copy_of(run: Path, folder: Path) -> Path:
    """A private copy of `run` in `folder`, without its lock file: a test that may write leaves the shared run alone."""
    return Path(shutil.copytree(run, folder / "run-copy", ignore=shutil.ignore_patterns(".lock")))


@pytest.fixture(scope="module")
def data():
    """The images `--data synthetic` draws for the shared short run."""
    return make_synthetic(*SHORT_SYNTHETIC)


@pytest.fixture
def reference_run(short_run: Path) -> Path:
    """The uninterrupted 2-epoch run that the other tests compare against: the shared short run, made by
    `cifarkit train` with the flags that say what tiny_config says (test_same_seed_same_weights_on_cpu checks that
    fit(tiny_config) gives it bitwise)."""
    return short_run


@pytest.mark.slow
def test_run_folder_holds_history_metrics_config_and_weights(reference_run: Path) -> None:
    """history.csv has a row per epoch with the contract's columns; metrics.json has the promised keys, and its final
    accuracy is the share of the 16 test images that the saved weights, run by a forward pass written here, get
    right."""
    rows = history(reference_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_second"}
    metrics = json.loads((reference_run / "metrics.json").read_text())
    for key in ("final_test_accuracy", "best_test_accuracy", "epochs_completed", "lr_min", "lr_max",
                "train_seconds", "images_per_second", "device", "world_size"):
        assert key in metrics, key
    assert metrics["epochs_completed"] == 2 and metrics["world_size"] == 1 and metrics["synthetic"] is True
    data = subset(make_synthetic(64, 32), None, 16)  # the run's 16 test images, drawn as fit draws them
    right = predictions_by_hand(reference_run, data.test_images) == data.test_labels
    assert metrics["final_test_accuracy"] == pytest.approx(right.mean(), abs=1 / 16 + 1e-9)  # one near-tie apart
    assert (metrics["final_test_accuracy"] * 16) % 1 == pytest.approx(0, abs=1e-6)  # a whole number of 16 images
    assert read_config(reference_run / "config.json").lr_max == 1e-3
    assert (reference_run / "checkpoints" / "last.pt").is_file()
    assert len(json.loads((reference_run / "schedule.json").read_text())["lrs"]) == 2 * 4
    steps = list(csv.DictReader((reference_run / "steps.csv").read_text().splitlines()))  # 2 epochs x 4 steps
    assert list(steps[0]) == ["step", "epoch", "loss", "lr"] and len(steps) == 2 * 4


@pytest.mark.slow
def test_same_seed_same_weights_on_cpu(tmp_path: Path, data, reference_run: Path) -> None:
    """Two runs with one seed end with bitwise-equal weights."""
    fit(tiny_config(tmp_path / "again"), data=data, progress=False)
    ref, again = model_weights(reference_run / "model.pt"), model_weights(tmp_path / "again" / "model.pt")
    assert ref.keys() == again.keys() and all(torch.equal(ref[k], again[k]) for k in ref)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path, data, reference_run: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM at step 6 (epoch 2) writes a checkpoint at a step boundary; --resume ends bitwise equal to the
    uninterrupted run, with the same history and the same per-step losses."""
    real_step, calls = train_module.train_step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        out = real_step(*args, **kwargs)
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_module, "train_step", step_then_signal)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="SIGTERM at epoch 2, step 2"):
        fit(tiny_config(run), data=data, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    fit(tiny_config(run), data=data, resume=True, progress=False)
    ref, resumed = model_weights(reference_run / "model.pt"), model_weights(run / "model.pt")
    assert ref.keys() == resumed.keys() and all(torch.equal(ref[k], resumed[k]) for k in ref)
    for a, b in zip(history(reference_run), history(run), strict=True):
        assert (a["train_loss"], a["test_acc"], a["lr"]) == (b["train_loss"], b["test_acc"], b["lr"])
    assert (run / "steps.csv").read_text() == (reference_run / "steps.csv").read_text()


@pytest.mark.slow
def test_resume_with_another_recipe_is_refused(tmp_path: Path, data, reference_run: Path) -> None:
    """A changed training field on --resume is one clear error naming the field, and the run is left as it was."""
    run = copy_of(reference_run, tmp_path)
    before = snapshot(run, ignore=(".lock",))
    with pytest.raises(CifarkitError, match="weight_decay"):
        fit(tiny_config(run, weight_decay=0.5), data=data, resume=True, progress=False)
    assert snapshot(run, ignore=(".lock",)) == before


@pytest.mark.slow
def test_new_run_into_an_existing_run_is_refused(tmp_path: Path, data, reference_run: Path) -> None:
    """Without resume=True, a folder that already holds a checkpoint is not overwritten (every file as it was), and
    the error names the argument (resume=True), not the CLI flag."""
    run = copy_of(reference_run, tmp_path)
    before = snapshot(run, ignore=(".lock",)), (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(CifarkitError, match=r"resume=True"):
        fit(tiny_config(run), data=data, progress=False)
    assert (snapshot(run, ignore=(".lock",)), (run / "checkpoints" / "last.pt").stat().st_mtime_ns) == before


@pytest.mark.slow
def test_range_test_fills_missing_lrs(tmp_path: Path, data) -> None:
    """Without --lr-min/--lr-max the run starts with the range test and trains with what it found."""
    run = tmp_path / "found"
    fit(tiny_config(run, lr_min=None, lr_max=None, lr_find_iters=10, epochs=1), data=data, progress=False)
    found = json.loads((run / "lr_finder.json").read_text())
    config = read_config(run / "config.json")
    assert (config.lr_min, config.lr_max) == (found["lr_min"], found["lr_max"])
    assert config.lr_min < config.lr_max


@pytest.mark.slow
def test_tensorboard_logs_scalars_and_the_lr(tmp_path: Path, data) -> None:
    """--tensorboard writes an event file holding the per-epoch scalars and the per-step LR."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    fit(tiny_config(run, epochs=1, tensorboard=True), data=data, progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr", "train_loss", "train_acc", "test_loss", "test_acc"} <= tags
    assert len(events.Scalars("lr")) == 4


def test_label_smoothing_reaches_the_training_loss() -> None:
    """train_step's loss with label_smoothing e is (1 - e) x cross-entropy + e x the mean over classes of -log p
    (PyTorch's CrossEntropyLoss definition); with e = 0 it is the plain cross-entropy."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    with torch.no_grad():
        logp = model(x).log_softmax(1)
    ce, uniform = -logp.gather(1, y[:, None]).mean(), -logp.mean()
    for eps in (0.0, 0.2):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        loss, *_ = train_module.train_step(model, optimizer, scheduler, x, y, precision="fp32",
                                           scaler=grad_scaler("fp32", x.device), label_smoothing=eps)
        assert float(loss) == pytest.approx(float((1 - eps) * ce + eps * uniform), rel=1e-5)


@pytest.mark.slow
def test_run_records_the_precision_it_ran_in_and_resumes_under_auto(tmp_path: Path, data) -> None:
    """config.json holds the resolved precision (bf16, fp16 or fp32, never auto); bf16 autocast trains on the CPU to
    finite weights that differ from fp32's; --resume with the default auto keeps the saved precision, and another
    explicit precision is refused (it would change the numbers)."""
    runs = {p: tmp_path / p for p in ("bf16", "fp32")}
    for precision, run in runs.items():  # 16 images, 2 steps: bf16 autocast is slow on CPUs without bf16 units
        fit(tiny_config(run, epochs=1, subset=16, test_subset=8, precision=precision), data=data, progress=False)
        assert read_config(run / "config.json").precision == precision
    w16, w32 = model_weights(runs["bf16"] / "model.pt"), model_weights(runs["fp32"] / "model.pt")
    assert all(torch.isfinite(v).all() for v in w16.values() if v.is_floating_point())
    assert any(not torch.equal(w16[k], w32[k]) for k in w32 if w32[k].is_floating_point())
    (runs["bf16"] / "model.pt").unlink()  # stopped after its last checkpoint: its final weights are left to write
    fit(tiny_config(runs["bf16"], epochs=1, subset=16, test_subset=8), data=data, resume=True,
        progress=False)  # precision "auto"
    assert read_config(runs["bf16"] / "config.json").precision == "bf16"
    with pytest.raises(CifarkitError, match="precision"):
        fit(tiny_config(runs["bf16"], epochs=1, subset=16, test_subset=8, precision="fp32"), data=data, resume=True,
            progress=False)
