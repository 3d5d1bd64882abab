"""The bodies of the commands: summary, cache, train, lr-find, evaluate, predict and report (app and export live
with their optional extras in `cifarkit.app` and `cifarkit.export`; sweep and compare in `cifarkit.study`). cli.py
parses the flags, calls one of these and prints what it returns.

Each checks all its inputs first (weights, data, fingerprints), then says on stderr what it uses, then works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cifarkit import run as R
from cifarkit.checkpoint import saved_config
from cifarkit.config import TrainConfig
from cifarkit.console import say
from cifarkit.data import data_fingerprint, resolve_data, subset
from cifarkit.data.archive import cache_root
from cifarkit.data.cache import cache_entries, clear_cache, format_cache
from cifarkit.data.sources import describe_data
from cifarkit.device import pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.inference import evaluate, open_run, predict
from cifarkit.lr_finder import LRFinderResult, lr_find
from cifarkit.models.summary import model_summary
from cifarkit.report import write_plots, write_report
from cifarkit.report.interpret import classification_report, most_confused
from cifarkit.report.plots import plot_lr_finder, save_figure
from cifarkit.train import History, fit

SUMMARY_PRECISION = ("summary: --precision does not apply: the table counts parameters and multiply-adds, which are "
                     "the same in every precision")


def summary_command(batch_size: int, *, precision: str | None = None) -> str:
    """`cifarkit summary`: torchinfo's table of the model for an input batch of `batch_size`; a `precision` given is
    said not to apply (the counts are the same in every precision)."""
    if precision is not None:
        say(SUMMARY_PRECISION)
    return model_summary(batch_size)


def cache_command(*, clear: bool = False) -> str:
    """`cifarkit cache`: what the data cache holds (entries, sizes, the data each came from); with `clear`, empty it
    and say how much was removed."""
    root = cache_root()
    if clear:
        entries, size = clear_cache(root)
        return f"cleared {root}: {entries} entr{'y' if entries == 1 else 'ies'}, {size / 1e6:,.1f} MB"
    return format_cache(cache_entries(root), root)


def train_command(given: dict[str, Any], *, resume: bool = False) -> History:
    """`cifarkit train`: the fields given (TrainConfig names, as the flags give them) over the defaults; with resume,
    over the recipe the run in `out` recorded, continued from its last checkpoint."""
    if resume:
        out = Path(given.get("out", TrainConfig.out))
        config = TrainConfig.from_dict(saved_config(out).to_dict() | given)
    else:
        config = TrainConfig(**given)
    return fit(config, resume=resume)


def lr_find_command(config: TrainConfig) -> LRFinderResult:
    """The range test on config's data; writes OUT/lr_finder.json and OUT/lr_finder.png."""
    config.validate()
    out = R.check_run_out(config.out, kind="lr-find")  # before minutes of range test
    data = resolve_data(config.data)
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    train = subset(data, config.subset, None, seed=config.seed)
    say(f"{describe_data(train, data_fingerprint(data), test=False)}; {device}, {precision}")
    result = lr_find(config, train, precision=precision)  # drawn once: a short subset is said once
    out.mkdir(parents=True, exist_ok=True)
    written = result.save(out)
    save_figure(plot_lr_finder(result.lrs, result.losses, result.smoothed, lr_min=result.lr_min,
                               lr_max=result.lr_max), out / R.LR_FINDER_PLOT)
    say(f"wrote {written} and {out / R.LR_FINDER_PLOT}")
    return result


def evaluate_command(path: Path, *, data: str | None, device: str, precision: str = "auto", tta: bool = False,
                     test_subset: int | None = None, report: bool = False) -> dict[str, Any]:
    """Test loss and accuracy (and flip-TTA accuracy) of a run's weights on the whole test set, or a class-balanced
    `test_subset` of it; `images` says how many were used. With `report`, "report" holds the classification report
    (precision, recall, F1 per class) and the most-confused pairs as text."""
    run = open_run(path, data=data, device=device, precision=precision)
    full = run.recorded_data()
    dataset = run.test_data(test_subset)
    for line in run.notes():
        say(line)
    say(f"{describe_data(dataset, data_fingerprint(full))}; {run.device}, {run.precision}")
    images = torch.from_numpy(dataset.test_images).to(run.device)
    labels = torch.from_numpy(dataset.test_labels).to(run.device)
    result = evaluate(run.model, images, labels, run.config, precision=run.precision, tta=tta,
                      mean=run.mean, std=run.std)
    out: dict[str, Any] = {"test_accuracy": result["acc"], "test_loss": result["loss"]}
    if tta:
        out["test_accuracy_tta"] = result["acc_tta"]
    out["images"] = len(labels)
    if report:
        pred = run.predict_proba(dataset.test_images).argmax(axis=1)
        pairs = most_confused(dataset.test_labels, pred, dataset.classes, top=10)
        out["report"] = str(classification_report(dataset.test_labels, pred, dataset.classes)) + \
            "\nmost confused (true -> predicted: test images)\n" + \
            "".join(f"  {t} -> {p}: {n}\n" for t, p, n in pairs)
    return out


def predict_command(path: Path, images: list[str], *, device: str, precision: str = "auto", top_k: int = 1,
                    data: str | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """(image, its top_k (class, probability) pairs) for each image file; class names from `data` when given."""
    run = open_run(path, device=device, precision=precision)
    classes = None
    if data is not None:
        names = resolve_data(data)
        if len(names.classes) != len(run.classes):
            raise CifarkitError(f"{names.source} has {len(names.classes)} classes, the model "
                                f"{len(run.classes)}: give the data it was trained on")
        classes = names.classes
    results = predict(run, images, top_k=top_k, classes=classes)
    for line in run.notes():
        say(line)
    if data is not None:
        say(f"class names: from {names.source}, given by --data")
    return list(zip(images, results))


def report_command(run_or_weights: Path, *, data_source: str | None = None, device: str = "auto",
                 precision: str = "auto") -> Path:
    """`cifarkit report RUN`: reload the run's config, weights and test data, redraw every plot, rewrite the report.

    RUN is a run folder (drawn from RUN/model.pt, or from its last checkpoint while it is going or stopped) or a
    weights file inside one. The data is the run's own, checked by fingerprint, unless `data_source` is given.
    """
    path = Path(run_or_weights)
    run_dir = R.report_folder(path)
    run = open_run(path, data=data_source, device=device, precision=precision)
    full = run.recorded_data()
    data = run.test_data()
    for line in run.notes():
        say(line)
    say(f"{describe_data(data, data_fingerprint(full))}; {run.device}, {run.precision}")
    write_plots(run_dir, model=run.model, data=data, config=run.config, device=run.device, precision=run.precision)
    return write_report(run_dir)
