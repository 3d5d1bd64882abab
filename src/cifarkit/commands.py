"""The CLI's commands beyond `train`: the LR range test on its own, evaluation, prediction and the report of a run.

Each checks all its inputs first (weights, data, fingerprints), then says on stderr what it uses, then works.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from cifarkit.api import check_weights_file, find_weights, load_model, lr_find, predict, weights_note
from cifarkit.config import TrainConfig
from cifarkit.data import data_fingerprint, resolve_data, subset
from cifarkit.data.sources import data_of_run, describe_data
from cifarkit.device import pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.lr_finder import LRFinderResult
from cifarkit.report import predict_proba, write_plots, write_report
from cifarkit.report.interpret import classification_report, most_confused
from cifarkit.report.plots import plot_lr_finder, save_figure
from cifarkit.train import evaluate


def note(line: str) -> None:
    """What a command uses, said before it works: on stderr, so stdout keeps only results."""
    print(line, file=sys.stderr, flush=True)


def lr_find_command(config: TrainConfig) -> LRFinderResult:
    """The range test on config's data; writes OUT/lr_finder.json and OUT/lr_finder.png."""
    config.validate()
    data = resolve_data(config.data)
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    train = subset(data, config.subset, None, seed=config.seed)
    note(f"{describe_data(train, data_fingerprint(data), test=False)}; {device}, {precision}")
    result = lr_find(config, train, precision=precision)  # drawn once: a short subset is said once
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "lr_finder.json")
    save_figure(plot_lr_finder(result.lrs, result.losses, result.smoothed, lr_min=result.lr_min,
                               lr_max=result.lr_max), out / "lr_finder.png")
    note(f"wrote {out / 'lr_finder.json'} and {out / 'lr_finder.png'}")
    return result


def evaluate_command(path: Path, *, data: str | None, device: str, precision: str = "auto", tta: bool = False,
                     test_subset: int | None = None, report: bool = False) -> dict[str, Any]:
    """Test loss and accuracy (and flip-TTA accuracy) of a run's weights on the whole test set, or a class-balanced
    `test_subset` of it; `images` says how many were used. With `report`, "report" holds the classification report
    (precision, recall, F1 per class) and the most-confused pairs as text."""
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    weights = find_weights(path)
    model, config = load_model(weights, dev)
    full = data_of_run(config.data, config.data_fingerprint, data, owner=f"the run of {weights}")
    dataset = subset(full, None, test_subset, seed=config.seed)
    note(weights_note(weights))
    note(f"{describe_data(dataset, data_fingerprint(full))}; {dev}, {precision}")
    images = torch.from_numpy(dataset.test_images).to(dev)
    labels = torch.from_numpy(dataset.test_labels).to(dev)
    result = evaluate(model, images, labels, config, precision=precision, tta=tta)
    out: dict[str, Any] = {"test_accuracy": result["acc"], "test_loss": result["loss"]}
    if tta:
        out["test_accuracy_tta"] = result["acc_tta"]
    out["images"] = len(labels)
    if report:
        pred = predict_proba(model, dataset.test_images, config, dev, precision).argmax(axis=1)
        pairs = most_confused(dataset.test_labels, pred, dataset.classes, top=10)
        out["report"] = str(classification_report(dataset.test_labels, pred, dataset.classes)) + \
            "\nmost confused (true -> predicted: test images)\n" + \
            "".join(f"  {t} -> {p}: {n}\n" for t, p, n in pairs)
    return out


def predict_command(path: Path, images: list[str], *, device: str, precision: str = "auto", top_k: int = 1,
                    data: str | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """(image, its top_k (class, probability) pairs) for each image file; class names from `data` when given."""
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    weights = find_weights(path)
    loaded = load_model(weights, dev)
    classes = None
    if data is not None:
        names = resolve_data(data)
        if len(names.classes) != loaded.model.num_classes:
            raise CifarkitError(f"{names.source} has {len(names.classes)} classes, the model "
                                f"{loaded.model.num_classes}: give the data it was trained on")
        classes = names.classes
    results = predict(loaded, images, top_k=top_k, classes=classes, precision=precision)
    note(weights_note(weights))
    if data is not None:
        note(f"class names: from {names.source}, given by --data")
    return list(zip(images, results))


def build_report(run_or_weights: Path, *, data_source: str | None = None, device: str = "auto",
                 precision: str = "auto") -> Path:
    """`cifarkit report RUN`: reload the run's config, weights and test data, redraw every plot, rewrite the report.

    RUN is a run folder (drawn from RUN/model.pt, or from its last checkpoint while it is going or stopped) or a
    weights file inside one. The data is the run's own, checked by fingerprint, unless `data_source` is given.
    """
    path = Path(run_or_weights)
    if path.is_file():
        check_weights_file(path)
        run_dir = next((p for p in (path.parent, path.parent.parent) if (p / "config.json").is_file()), None)
        if run_dir is None:
            raise CifarkitError(f"{path} is not inside a run folder (no config.json beside it); give the run folder")
    elif path.is_dir():
        run_dir = path
    else:
        raise CifarkitError(f"no run folder at {path}: give the --out folder of a `cifarkit train` run")
    for name in ("config.json", "metrics.json"):
        if not (run_dir / name).is_file():
            raise CifarkitError(f"{run_dir} has no {name}: give the folder of a `cifarkit train` run that "
                                "completed at least one epoch")
    weights = path if path.is_file() else find_weights(run_dir)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model, _ = load_model(weights, dev)
    config = TrainConfig.load(run_dir / "config.json")
    full = data_of_run(config.data, config.data_fingerprint, data_source, owner=f"run {run_dir}")
    data = subset(full, None, config.test_subset, seed=config.seed)
    note(weights_note(weights))
    note(f"{describe_data(data, data_fingerprint(full))}; {dev}, {precision}")
    write_plots(run_dir, model=model, data=data, config=config, device=dev, precision=precision)
    return write_report(run_dir)
