"""The resume policy, in one table: which fields a resumed run may change (checkpoint.RESUMABLE_FIELDS), which it
keeps from the checkpoint when left at their "find it" / "auto" value, and which it refuses to change; and a finished
run, which has nothing to resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cifarkit.checkpoint import RESUMABLE_FIELDS, resume_config
from cifarkit.cli import main
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES
from cifarkit.errors import CifarkitError
from cifarkit.inference import save_model
from cifarkit.models import CustomResNet
from cifarkit.run import read_metrics, write_config, write_metrics
from cifarkit.train import fit

SAVED = TrainConfig(data="/data/cifar", out="runs/a", epochs=5, lr_min=1e-6, lr_max=5e-3, precision="fp16",
                    workers=2, seed=3, augment="batched")

# (field, value given on resume, the value the resumed run uses; None: refused)
POLICY = [
    ("out", "runs/moved", "runs/moved"),  # the folder may have moved
    ("data", "/elsewhere/cifar", "/elsewhere/cifar"),  # the same data elsewhere; its fingerprint is checked apart
    ("device", "cpu", "cpu"),
    ("workers", 0, 0),
    ("plots", False, False),
    ("tensorboard", True, True),
    ("eval_batch_size", 256, 256),
    ("compile", True, True),
    ("extra", {"note": "resumed"}, {"note": "resumed"}),
    ("lr_min", None, 1e-6),  # left to the range test: the LRs the run found are kept
    ("lr_max", None, 5e-3),
    ("precision", "auto", "fp16"),  # auto keeps what ran
    ("precision", "fp32", None),  # another precision would train something else
    ("augment", "auto", "batched"),  # auto keeps the pipeline that ran, on any device (a CPU runs "batched" too)
    ("augment", "albumentations", None),  # another pipeline draws another random stream
    ("deterministic", True, None),  # a run is deterministic from its first step or not at all
    ("epochs", 24, None),
    ("lr_max", 1e-2, None),
    ("seed", 4, None),
    ("batch_size", 256, None),
    ("pad_mode", "zero", None),
    ("label_smoothing", 0.1, None),
]


@pytest.mark.parametrize("name, given, used", POLICY, ids=[f"{n}={g!r}" for n, g, _ in POLICY])
def test_resume_policy(name: str, given: object, used: object) -> None:
    """Each row: resuming SAVED with one field given as `given` uses `used`, or is refused in one line naming the
    field; every other field stays the saved one."""
    given_config = dataclasses.replace(SAVED, **{name: given})
    if used is None:
        with pytest.raises(CifarkitError, match=f"cannot resume: {name} is") as info:
            resume_config(SAVED, given_config)
        assert "\n" not in str(info.value)
        return
    merged = resume_config(SAVED, given_config)
    assert getattr(merged, name) == used
    assert dataclasses.replace(merged, **{name: getattr(SAVED, name)}) == SAVED


def test_the_table_covers_every_resumable_field() -> None:
    """Every field that may change on resume has a row above (a new one needs a decision and a row)."""
    assert RESUMABLE_FIELDS <= {name for name, _, used in POLICY if used is not None}


def finished_run(folder: Path) -> Path:
    """A run folder as a finished one-epoch run leaves it, without training: config.json, metrics.json of every
    epoch, history.csv, model.pt and its last checkpoint."""
    config = TrainConfig(data="/data/cifar", out=str(folder), epochs=1, lr_min=1e-6, lr_max=5e-3, precision="fp32",
                         device="cpu", augment="batched")
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"format": "not read by a finished run"}, folder / "checkpoints" / "last.pt")
    save_model(folder / "model.pt", CustomResNet().eval(), config, CLASSES)
    write_config(folder, config)
    write_metrics(folder, {"final_test_accuracy": 0.25, "best_test_accuracy": 0.25, "epochs_completed": 1,
                           "epochs": 1})
    (folder / "history.csv").write_text("epoch,train_loss,test_acc\n1,2.5,0.25\n")
    return folder


def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A finished run: `train --resume` says in one stderr line that it is finished (its epochs and accuracy, as
    metrics.json holds them), exits 0 and rewrites nothing (every file's bytes and modification time as they were:
    no plot, no report, no model.pt); stdout has the run's result line, as after training. fit(resume=True) returns
    the History read back from the folder."""
    run = finished_run(tmp_path / "run")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert err == (f"{run} is already finished (1 epoch, final test accuracy 0.2500): nothing to resume; "
                   f"`cifarkit report {run}` redraws its plots and report\n")
    assert out == f"final_test_accuracy=0.2500 best_test_accuracy=0.2500 run={run}\n"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before
    history = fit(TrainConfig(out=str(run)), resume=True, progress=False)
    assert history.metrics == read_metrics(run) and history.epochs == [{"epoch": 1.0, "train_loss": 2.5,
                                                                        "test_acc": 0.25}]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before
