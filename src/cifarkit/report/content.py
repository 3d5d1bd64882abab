"""What a run's report says (RUN/report.md and report.html), built as blocks from the run folder's files alone.

`cifarkit.report.render` writes the blocks out as Markdown and HTML; the figures it embeds come from `figures`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit import run as R
from cifarkit.atomic import write_text
from cifarkit.config import NOT_FLAGS, TrainConfig
from cifarkit.errors import CifarkitError
from cifarkit.report.render import (Block, fmt_count, fmt_duration, fmt_epoch, fmt_lr, fmt_pct, to_html,
                                    to_markdown)

# What each plot shows and what to look for (the report's captions), in the report's order.
CAPTIONS: dict[str, str] = {
    "samples": "Training images per class, each beside one augmented view (pad-and-crop, flip, CutOut): "
               "check that the class is still recognisable after augmentation.",
    "lr_finder": "LR range test: the training loss (raw and smoothed) while the LR grows exponentially; the loss "
                 "falls once the LR is large enough to learn and diverges once it is too large.",
    "lr_schedule": "One-cycle schedule actually used, per step: linear rise LRMIN -> LRMAX up to the peak epoch, "
                   "then linear fall back to the final LR.",
    "loss": "Train and test loss per epoch: both should fall; a test loss rising while train loss falls means "
            "overfitting.",
    "accuracy": "Train (on augmented images) and test accuracy per epoch: the gap between them is the "
                "generalisation gap; the best epoch is marked.",
    "confusion_matrix": "Confusion matrix of the final model on the test set: off-diagonal cells show which classes "
                        "are confused (typically cat/dog, automobile/truck).",
    "misclassified": "Top losses: the misclassified test images with the highest loss first (the lowest probability "
                     "of the true class), each with the true class's probability and the predicted class's: are "
                     "they ambiguous images, label noise or true errors?",
    "gradcam": "Grad-CAM on the same mistakes (layer3, 4x4 upsampled), each beside its original: the heatmap over "
               "the image, at the opacity its title states, is bright where the evidence pushed the model towards "
               "the wrong class and dark where there was none. Evidence on the background hints at a shortcut.",
}
# The loss caption when RUN/steps.csv holds the loss of every step.
LOSS_PER_STEP = ("Training loss of every step (faint) with its moving mean, the epoch means of the training loss "
                 "(drawn mid-epoch) and the test loss (end of each epoch): both should fall; a test loss rising "
                 "while the training loss falls means overfitting.")


def read_history(path: Path) -> dict[str, np.ndarray]:
    """history.csv (or steps.csv) as columns of floats (empty cells, e.g. test_acc_tta without --tta, become NaN)."""
    rows = R.read_rows(path)
    keys = rows[0].keys() if rows else ()
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else math.nan for r in rows]) for k in keys}


def _blocks(run_dir: Path) -> list[Block]:
    for name in (R.CONFIG, R.METRICS):
        if not (run_dir / name).is_file():
            raise CifarkitError(f"{run_dir} has no {name}: give the folder of a finished `cifarkit train` run")
    config = R.read_config(run_dir).to_dict()
    m = R.read_metrics(run_dir)
    finder, per_class = R.read_optional_json(run_dir / R.LR_FINDER), R.read_optional_json(run_dir / R.PER_CLASS)
    history = read_history(run_dir / R.HISTORY) if (run_dir / R.HISTORY).is_file() else {}
    epochs = history.get("epoch", np.array([]))
    test_acc = history.get("test_acc", np.array([]))
    best_epoch = int(epochs[int(np.nanargmax(test_acc))]) if len(test_acc) and np.isfinite(test_acc).any() else None
    hw = m.get("hardware") or {}
    final_lr = m.get("lr_min") / config.get("final_div", 1.0) if m.get("lr_min") else None

    dataset = str(m.get("dataset", "?"))
    if m.get("synthetic") and "synthetic" not in dataset.lower():
        dataset += " (SYNTHETIC, not CIFAR-10)"
    b: list[Block] = [("h1", f"cifarkit run `{run_dir.name}`")]
    if m.get("synthetic"):
        b.append(("warn", "**SYNTHETIC DATA: these results are NOT on CIFAR-10.** The run used the synthetic "
                          "stand-in (coloured stripe patterns), which only checks that the pipeline works; its "
                          "accuracies say nothing about CIFAR-10."))
    done, planned = m.get("epochs_completed", "?"), m.get("epochs", config.get("epochs"))
    stopped = f" (of {planned} planned: stopped early or still running; `cifarkit train --resume` continues it)" if planned not in (None, done) else ""
    images = (f" on {m['train_images']:,} training and {m['test_images']:,} test images"
              if m.get("train_images") and m.get("test_images") else "")
    b.append(("p", f"The assignment's custom ResNet (6,573,120 parameters) was trained for "
                   f"**{fmt_count(done, 'epoch')}**{stopped} with Adam and the one-cycle policy (LR "
                   f"{fmt_lr(m.get('lr_min'))} -> {fmt_lr(m.get('lr_max'))} at epoch "
                   f"{fmt_epoch(config.get('peak_epoch', 0))} -> {fmt_lr(final_lr)}), batch "
                   f"{config.get('batch_size')}{images}. Data: {dataset}. It reached a final test accuracy of "
                   f"**{fmt_pct(m.get('final_test_accuracy'))}** (best {fmt_pct(m.get('best_test_accuracy'))}"
                   + (f" at epoch {best_epoch}" if best_epoch else "") +
                   f") in {fmt_duration(m.get('train_seconds'))} of training on {m.get('device', '?')}."))
    results = [["final test accuracy", fmt_pct(m.get("final_test_accuracy"))],
               ["best test accuracy", fmt_pct(m.get("best_test_accuracy")) + (f" (epoch {best_epoch})" if best_epoch
                                                                            else "")]]
    if m.get("final_test_accuracy_tta") is not None:
        results.append(["final test accuracy, flip TTA", fmt_pct(m.get("final_test_accuracy_tta"))])
    results += [["epochs completed", f"{done}{stopped}"],
                ["dataset", dataset],
                ["train / test images", f"{m.get('train_images', '?')} / {m.get('test_images', '?')}"]]
    b += [("h2", "Results"), ("table", ["metric", "value"], results)]
    b += _per_class_blocks(per_class)

    rules = [finder.get(f"{k}_rule", "LR range test") if finder else "given by the user" for k in ("lr_min", "lr_max")]
    b += [("h2", "Learning rates"), ("table", ["", "value", "rule"], [
        ["LRMIN", fmt_lr(m.get("lr_min")), rules[0]], ["LRMAX", fmt_lr(m.get("lr_max")), rules[1]]]),
          ("p", f"Found by the LR range test (`{R.LR_FINDER}`)." if finder else
           "The LRs were given in the configuration, so no LR range test was run.")]
    captions = dict(CAPTIONS, lr_finder=CAPTIONS["lr_finder"] + f" Rules: LRMIN = {rules[0]}; LRMAX = {rules[1]}.")
    if (run_dir / R.STEPS).is_file():
        captions["loss"] = LOSS_PER_STEP
        if config.get("label_smoothing") and "train_ce" in history:
            captions["loss"] += (f" Training used label smoothing {config['label_smoothing']:g}: the per-step curve is "
                                 "the smoothed loss it minimises, which stays above the cross-entropy; the epoch means "
                                 "and the test loss are both plain cross-entropy.")
    sections = [("", ["lr_finder", "lr_schedule"]), ("Training curves", ["loss", "accuracy"]),
                ("Data and augmentation", ["samples"]), ("Errors", ["confusion_matrix", "misclassified", "gradcam"])]
    for title, names in sections:  # "": continues the section above
        present = [n for n in names if (run_dir / R.PLOTS / f"{n}.png").is_file()]
        if present and title:
            b.append(("h2", title))
        b += [("img", f"{R.PLOTS}/{n}.png", n.replace("_", " "), captions[n]) for n in present]

    if len(epochs):
        b.append(("h2", "History"))
        cols = [("epoch", "epoch", lambda v: f"{v:.0f}"), ("train loss", "train_loss", lambda v: f"{v:.4f}"),
                ("train acc", "train_acc", fmt_pct), ("test loss", "test_loss", lambda v: f"{v:.4f}"),
                ("test acc", "test_acc", fmt_pct), ("LR", "lr", fmt_lr), ("seconds", "seconds", lambda v: f"{v:.1f}")]
        cols = [c for c in cols if c[1] in history]
        b.append(("table", [c[0] for c in cols],
                  [[c[2](history[c[1]][i]) for c in cols] for i in range(len(epochs))]))
    b += [("h2", "Timing and hardware"), ("table", ["", "value"], [
        ["training time", fmt_duration(m.get("train_seconds"))],
        ["throughput", f"{m['images_per_second']:.0f} images/s" if m.get("images_per_second") else "n/a"],
        ["device", f"{m.get('device', '?')} x {m.get('world_size', 1)} process(es)"],
        ["CPU", f"{hw.get('cpu', '?')} ({hw.get('cpu_cores', '?')} cores usable)"],
        ["GPU", str(hw.get("gpu") or "none")], ["PyTorch threads", str(hw.get("torch_threads", "?"))],
        ["PyTorch / Python", f"{hw.get('torch', '?')} / {hw.get('python', '?')}"]])]
    b += [("h2", "Configuration"),
          ("table", ["field", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in config.items()]),
          ("p", f"Train again with `{train_command_line(config, bool(finder))}`; redraw the plots and this report with "
                f"`cifarkit report {run_dir}`.")]
    return b


def _per_class_blocks(per_class: dict[str, Any] | None) -> list[Block]:
    """The classification report (precision, recall = per-class accuracy, F1, macro averages) and the most-confused
    pairs, from RUN/per_class.json."""
    if not per_class:
        return [("h3", "Per class"), ("p", f"No {R.PER_CLASS} in the run folder: run `cifarkit report RUN` to compute "
                                       "it.")]
    has_prf = "precision" in per_class  # written by cifarkit since the classification report exists
    rows = []
    for i, name in enumerate(per_class["classes"]):
        row = [name, str(per_class["correct"][i]), str(per_class["total"][i])]
        row += [f"{per_class[k][i]:.3f}" for k in ("precision", "recall", "f1")] if has_prf else \
            [fmt_pct(per_class["accuracy"][i])]
        rows.append(row)
    if has_prf:
        macro = per_class["macro"]
        rows.append(["**macro avg**", "", str(per_class["n_test"]),
                     *(f"{macro[k]:.3f}" for k in ("precision", "recall", "f1"))])
    head = ["class", "correct", "images", "precision", "recall (accuracy)", "F1"] if has_prf else \
        ["class", "correct", "total", "accuracy"]
    b: list[Block] = [("h3", f"Per class (classification report, also in `{R.CLASSIFICATION_REPORT}`)"),
                      ("table", head, rows)]
    pairs = per_class.get("most_confused") or []
    if pairs:
        b += [("h3", "Most confused pairs"),
              ("table", ["true class", "predicted as", "test images"], [[t, p, str(n)] for t, p, n in pairs])]
    return b


def train_command_line(values: dict[str, Any], lrs_found: bool) -> str:
    """The `cifarkit train` command line that gives this config (config.json's `values`): only the flags that differ
    from the defaults, never a field that is no flag (config.NOT_FLAGS), the LRs left out when the range test found
    them.

        train_command_line(read_config(run).to_dict(), lrs_found=True)  # "cifarkit train --out NEW_RUN --epochs 3"
    """
    # peak_epoch's default follows the epochs: compare with the default for this run's epochs
    defaults = TrainConfig(epochs=values.get("epochs", TrainConfig.epochs)).to_dict() | {"epochs": TrainConfig.epochs}
    skip = {*NOT_FLAGS, "out"} | ({"lr_min", "lr_max"} if lrs_found else set())  # LRs found by the range test
    words = ["cifarkit train --out NEW_RUN"]
    for f in dataclasses.fields(TrainConfig):
        value = values.get(f.name)
        if f.name in skip or value is None or value == defaults[f.name]:
            continue
        flag = "--" + f.name.replace("_", "-")
        words.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(words)


def write_report(run_dir: Path) -> Path:
    """Write RUN/report.md (and the same as RUN/report.html) from the run folder's files; returns report.md."""
    run_dir = Path(run_dir)
    blocks = _blocks(run_dir)
    write_text(run_dir / R.REPORT_HTML, to_html(blocks, f"cifarkit run {run_dir.name}"))
    path = run_dir / R.REPORT
    write_text(path, to_markdown(blocks))
    return path
