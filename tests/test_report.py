"""report.py turns a run folder into real PNGs, per_class.json and a report that references all of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

import cifarkit.commands as commands
import cifarkit.data.sources
from cifarkit import report
from cifarkit.data import normalization
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES, make_synthetic
from cifarkit.cli import build_parser
from cifarkit.cli_flags import given_config
from cifarkit.errors import CifarkitError
from cifarkit.inference import save_model
from cifarkit.models.custom_resnet import CustomResNet
from cifarkit.report.content import CAPTIONS, LOSS_PER_STEP, train_command_line
from cifarkit.report.figures import step_losses
from cifarkit.run import write_config
from by_hand import class_scores_by_hand, predictions_near_ties
from helpers import colour_pixels, png_pixels, slow_fixture

PLOTS = ("samples", "lr_finder", "loss", "accuracy", "lr_schedule", "misclassified", "confusion_matrix", "gradcam")
LR_MIN, LR_MAX = 2.5e-4, 3.2e-2


def make_run_files(run: Path, *, with_finder: bool = True, with_steps: bool = True) -> TrainConfig:
    """The files `train.fit` leaves in a run folder (docs/design.md), with plausible values and an untrained model."""
    run.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(data="synthetic", out=str(run), epochs=3, batch_size=16, test_subset=30, eval_batch_size=16,
                         lr_min=None if with_finder else LR_MIN, lr_max=None if with_finder else LR_MAX)
    write_config(run, config)
    torch.manual_seed(0)
    save_model(run / "model.pt", CustomResNet(), config, CLASSES)  # named fields, as fit writes it
    rows = ["epoch,train_loss,train_acc,test_loss,test_acc,test_acc_tta,lr,seconds,images_per_second"]
    rows += [f"{e},{2 / e:.4f},{0.2 * e:.4f},{2.1 / e:.4f},{0.19 * e:.4f},,{LR_MAX / e:.4g},{10 + e},{50.0}"
             for e in (1, 2, 3)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    if with_steps:  # 3 epochs x 4 steps
        (run / "steps.csv").write_text("step,epoch,loss,lr\n" + "".join(
            f"{k},{(k - 1) // 4 + 1},{2.3 / k ** 0.5:.4f},{LR_MAX / k:.4g}\n" for k in range(1, 13)))
    if with_finder:
        lrs = np.geomspace(1e-7, 1, 50)
        losses = 2.3 - 1.0 / (1 + np.exp(-(np.log10(lrs) + 3))) + np.where(lrs > 0.1, 5 * lrs, 0)
        (run / "lr_finder.json").write_text(json.dumps({
            "lrs": lrs.tolist(), "losses": losses.tolist(), "smoothed": losses.tolist(), "lr_min": LR_MIN,
            "lr_max": LR_MAX, "lr_min_rule": "rule-for-min", "lr_max_rule": "rule-for-max"}))
    lrs = list(np.r_[np.linspace(LR_MIN, LR_MAX, 4), np.linspace(LR_MAX, LR_MIN, 8)])
    (run / "schedule.json").write_text(json.dumps({"lrs": lrs, "steps_per_epoch": 4, "peak_epoch": 1.0, "epochs": 3}))
    (run / "metrics.json").write_text(json.dumps({
        "final_test_accuracy": 0.57, "best_test_accuracy": 0.57, "epochs_completed": 3, "epochs": 3,
        "lr_min": LR_MIN, "lr_max": LR_MAX, "train_seconds": 36.5, "images_per_second": 50.0, "device": "cpu",
        "world_size": 1, "hardware": {"cpu": "Test CPU", "cpu_cores": 2, "torch_threads": 1, "torch": torch.__version__,
                                      "python": "3.11"},
        "dataset": "synthetic (seed 0) - NOT CIFAR-10", "synthetic": True, "train_images": 40, "test_images": 30}))
    return config


@slow_fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder processed by report_command (which runs write_plots and write_report), data patched to be tiny."""
    run = tmp_path_factory.mktemp("runs") / "demo"
    make_run_files(run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", (40, 30))
        path = commands.report_command(run, device="cpu")
    assert path == run / "report.md"
    return run


# The colours each curve plot draws its data in (report/plots.py), and a floor on their pixels above what a legend's
# swatch takes (a line across the axes covers thousands of pixels; a swatch a few dozen).
CURVE_COLOURS = {"loss": ("tab:blue", "tab:orange"), "accuracy": ("tab:blue", "tab:orange"),
                 "lr_finder": ("tab:blue",), "lr_schedule": ("tab:purple",)}
LINE_PIXELS = 300


@pytest.mark.slow
def test_every_plot_is_a_real_picture(built: Path, assert_real_png: Callable[..., None]) -> None:
    """Every plot of the contract is written under RUN/plots/ as a PNG of sensible size that is not one colour, and
    shows its content: each curve plot has its lines' colours over far more pixels than a legend takes, the
    confusion matrix has blue cells, and in each gallery of images (samples, mistakes, Grad-CAM) most of the
    picture is not white background."""
    for name in PLOTS:
        assert_real_png(built / "plots" / f"{name}.png")
        pixels = png_pixels(built / "plots" / f"{name}.png")
        for colour in CURVE_COLOURS.get(name, ()):
            assert colour_pixels(pixels, colour, tolerance=40) > LINE_PIXELS, (name, colour)
        if name == "confusion_matrix":
            blue = (pixels[..., 2] - pixels[..., 0] > 60).sum()
            assert blue > 0.05 * pixels.shape[0] * pixels.shape[1], name
        if name in ("samples", "misclassified", "gradcam"):
            assert (pixels < 240).any(axis=-1).mean() > 0.2, name


@pytest.fixture
def by_hand(built: Path) -> SimpleNamespace:
    """The per-class figures of the run's 30 test images (SYNTHETIC_SIZES as patched in `built`; test_subset 30 keeps
    every one) as worked out here from a forward pass written here: those of its predictions, or of the same with
    one near-tie broken the other way, the one whose confusion matrix the run's per_class.json holds (a test fails
    here when none is)."""
    labels = make_synthetic(40, 30).test_labels
    confusion = json.loads((built / "per_class.json").read_text())["confusion"]
    hand = predictions_near_ties(built, make_synthetic(40, 30).test_images)
    near = [class_scores_by_hand(labels, p, len(CLASSES)) for p in hand]
    found = [s for s in near if s.confusion == confusion]
    assert found, (confusion, near[0].confusion)
    return found[0]


@pytest.mark.slow
def test_per_class_json(built: Path, by_hand: SimpleNamespace) -> None:
    """per_class.json holds, per class, the test images of that class, how many of them the run's weights get right,
    the accuracy, precision, recall and F1 with their macro averages, the confusion matrix and the most-confused
    pairs, as counted here from the 30 test images and a forward pass written here (one near-tie apart at most)."""
    per_class = json.loads((built / "per_class.json").read_text())
    assert per_class["classes"] == list(CLASSES)
    labels = make_synthetic(40, 30).test_labels
    assert per_class["total"] == by_hand.total == [int((labels == c).sum()) for c in range(10)]
    assert per_class["n_test"] == 30 and per_class["correct"] == by_hand.correct
    assert per_class["accuracy"] == [None if a is None else pytest.approx(a) for a in by_hand.accuracy]
    for key in ("precision", "recall", "f1"):
        assert per_class[key] == pytest.approx(getattr(by_hand, key)), key
    assert per_class["macro"] == pytest.approx(by_hand.macro)
    assert per_class["overall"] == pytest.approx(sum(by_hand.correct) / 30)
    assert per_class["most_confused"] == [[CLASSES[t], CLASSES[p], n] for t, p, n in by_hand.most_confused]


@pytest.mark.slow
def test_classification_report_and_most_confused_pairs(built: Path, by_hand: SimpleNamespace) -> None:
    """The run's interpretation: classification_report.csv has one row per class (its precision, recall, F1 and
    support) and then the macro average, each as worked out here (see `by_hand`); the most-confused pairs, largest
    first, appear in report.md."""
    import csv

    rows = list(csv.DictReader((built / "classification_report.csv").open()))
    assert [r["class"] for r in rows] == [*CLASSES, "macro avg"]
    for i, row in enumerate(rows[:-1]):
        assert int(row["support"]) == by_hand.total[i]
        assert float(row["recall"]) == pytest.approx(by_hand.recall[i])
        assert float(row["precision"]) == pytest.approx(by_hand.precision[i])
        assert float(row["f1"]) == pytest.approx(by_hand.f1[i])
    assert {k: float(rows[-1][k]) for k in ("precision", "recall", "f1")} == pytest.approx(by_hand.macro)
    assert int(rows[-1]["support"]) == 30
    pairs = by_hand.most_confused
    assert pairs, "an untrained model gets most of the 30 images wrong: some pair is confused"
    text = (built / "report.md").read_text()
    assert "### Most confused pairs" in text
    for t, p, n in pairs:
        assert f"| {CLASSES[t]} | {CLASSES[p]} | {n} |" in text, (CLASSES[t], CLASSES[p], n)


def test_the_train_again_line_is_a_command_that_parses() -> None:
    """The report's "Train again" line from a config.json as a run records it (data_fingerprint, extra, the LRs the
    range test found) is a `cifarkit train` command line argparse accepts, and its flags give back every choice that
    differs from the defaults: no recorded field (data_fingerprint, extra) is written as a flag."""
    values = TrainConfig(data="/data/cifar", out="runs/a", epochs=3, batch_size=16, lr_min=1e-5, lr_max=1e-3,
                         plots=False, data_fingerprint="ab" * 32, extra={"note": "x"}).to_dict()
    line = train_command_line(values, lrs_found=True)
    assert line.startswith("cifarkit train ")
    given = given_config(build_parser().parse_args(line.split()[1:]))
    assert given == {"out": "NEW_RUN", "data": "/data/cifar", "epochs": 3, "batch_size": 16, "plots": False}
    given = given_config(build_parser().parse_args(train_command_line(values, lrs_found=False).split()[1:]))
    assert (given["lr_min"], given["lr_max"]) == (1e-5, 1e-3)


@pytest.mark.slow
def test_report_references_plots_tables_and_lrs(built: Path, by_hand: SimpleNamespace) -> None:
    """report.md embeds every plot by relative path with a caption, has the per-class table with the figures worked
    out here (see `by_hand`), both LRs with their rules, the accuracies, the hardware, and says loudly that the data
    was synthetic; report.html has the same."""
    text = (built / "report.md").read_text()
    for name in PLOTS:
        assert f"](plots/{name}.png)" in text, name
    assert "| class | correct | images | precision | recall (accuracy) | F1 |" in text
    for i, name in enumerate(CLASSES):  # each class's figures as worked out here (see `by_hand`)
        figures = " | ".join(f"{v[i]:.3f}" for v in (by_hand.precision, by_hand.recall, by_hand.f1))
        assert f"\n| {name} | {by_hand.correct[i]} | {by_hand.total[i]} | {figures} |" in text, name
    macro = " | ".join(f"{by_hand.macro[k]:.3f}" for k in ("precision", "recall", "f1"))
    assert f"| **macro avg** |  | 30 | {macro} |" in text
    assert f"{LR_MIN:.3e}" in text and f"{LR_MAX:.3e}" in text and "rule-for-min" in text and "rule-for-max" in text
    assert "57.00%" in text and "Test CPU" in text
    assert "SYNTHETIC DATA" in text and "NOT on CIFAR-10" in text
    assert LOSS_PER_STEP in text  # steps.csv present: the loss plot shows every step
    # the command that trains it again: non-default flags only, LRs left to the range test that found them
    assert "`cifarkit train --out NEW_RUN --data synthetic --epochs 3 --batch-size 16 --test-subset 30" in text
    assert "--lr-min" not in text
    page = (built / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<img src='plots/") == len(PLOTS)
    assert "<strong>SYNTHETIC DATA" in page


@pytest.mark.slow
def test_report_without_lr_finder(tmp_path: Path, built: Path) -> None:
    """When the LRs were given (no lr_finder.json, no lr_finder.png) the report says so, still lists both LRs, and
    its train command passes them."""
    run = tmp_path / "given"
    make_run_files(run, with_finder=False, with_steps=False)
    shutil.copytree(built / "plots", run / "plots")
    (run / "plots" / "lr_finder.png").unlink()
    text = report.write_report(run).read_text()
    assert "lr_finder.png" not in text and "given by the user" in text and f"--lr-min {LR_MIN}" in text
    assert f"{LR_MIN:.3e}" in text and f"{LR_MAX:.3e}" in text
    assert "run `cifarkit report RUN`" in text  # no per_class.json here: the report says how to get the table
    assert CAPTIONS["loss"] in text and LOSS_PER_STEP not in text  # no steps.csv: the per-epoch caption


@pytest.mark.parametrize("missing", ["config.json", "model.pt", "metrics.json"])
def test_report_command_missing_file_is_one_clear_error(tmp_path: Path, missing: str) -> None:
    """A run folder without one of its files gives CifarkitError naming the file, before any work."""
    make_run_files(tmp_path / "run")
    (tmp_path / "run" / missing).unlink()
    with pytest.raises(CifarkitError, match=missing.replace(".", r"\.")):
        commands.report_command(tmp_path / "run", device="cpu")
    with pytest.raises(CifarkitError, match="no run folder"):
        commands.report_command(tmp_path / "absent", device="cpu")


def test_augmented_views_denormalise_to_uint8() -> None:
    """augmented_views undoes the pipeline's normalisation: an identity 'augmentation' gives the images back."""
    config = TrainConfig()
    mean, std = (np.asarray(v) for v in normalization(config.std))

    def normalise_only(image: np.ndarray) -> dict:
        return {"image": torch.from_numpy(((image / 255 - mean) / std).transpose(2, 0, 1).astype(np.float32))}

    images = make_synthetic(n_train=5, n_test=1).train_images
    views = report.augmented_views(images, normalise_only, config)
    assert views.dtype == np.uint8 and views.shape == images.shape
    assert np.abs(views.astype(int) - images).max() <= 1


def test_read_history_blank_cells_are_nan(tmp_path: Path) -> None:
    """history.csv's empty test_acc_tta cells read as NaN, numbers as floats."""
    (tmp_path / "h.csv").write_text("epoch,test_acc,test_acc_tta\n1,0.5,\n2,0.6,0.61\n")
    h = report.read_history(tmp_path / "h.csv")
    assert h["epoch"].tolist() == [1, 2] and np.isnan(h["test_acc_tta"][0]) and h["test_acc_tta"][1] == 0.61


def test_step_losses_from_steps_csv(tmp_path: Path) -> None:
    """step_losses puts each step at step / steps_per_epoch (from the fullest epoch, also when the last epoch is
    partial) with its loss; without steps.csv it gives nothing, so plot_loss falls back to per-epoch curves."""
    assert step_losses(tmp_path) == {}
    (tmp_path / "steps.csv").write_text("step,epoch,loss,lr\n" + "".join(
        f"{k},{(k - 1) // 4 + 1},{1 / k},0.01\n" for k in range(1, 11)))  # 2 epochs x 4 steps, then 2 steps
    curves = step_losses(tmp_path)
    assert curves["step_epoch"].tolist() == pytest.approx([k / 4 for k in range(1, 11)])
    assert curves["step_loss"].tolist() == pytest.approx([1 / k for k in range(1, 11)])
