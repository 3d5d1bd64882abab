"""The CLI's commands beyond `train`: the LR range test on its own, evaluation, prediction and the report of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarkit.checkpoint import load_model
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES, normalization, resolve_data, subset
from cifarkit.data.augment import normalize_batch
from cifarkit.data.images import read_image
from cifarkit.data.loaders import build_train_batches
from cifarkit.device import pick_device
from cifarkit.errors import CifarkitError
from cifarkit.lr_finder import LRFinderResult, range_test
from cifarkit.models import build_model
from cifarkit.report import write_plots, write_report
from cifarkit.report.plots import plot_lr_finder, save_figure
from cifarkit.train import evaluate


def lr_find_command(config: TrainConfig) -> LRFinderResult:
    """The range test on config's data; writes OUT/lr_finder.json and OUT/lr_finder.png."""
    config.validate()
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    data = subset(resolve_data(config.data), config.subset, None, seed=config.seed)
    model = build_model(len(data.classes), device=device, channels_last=config.channels_last)
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device)
    result = range_test(model, batches, config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "lr_finder.json")
    save_figure(plot_lr_finder(result.lrs, result.losses, result.smoothed, lr_min=result.lr_min,
                               lr_max=result.lr_max), out / "lr_finder.png")
    return result


def evaluate_command(path: Path, *, data: str | None, device: str, tta: bool) -> dict[str, float]:
    dev = pick_device(device)
    model, config = load_model(path, dev)
    config.tta = tta
    dataset = subset(resolve_data(data or config.data), None, config.test_subset, seed=config.seed)
    images, labels = torch.from_numpy(dataset.test_images).to(dev), torch.from_numpy(dataset.test_labels).to(dev)
    config.channels_last = False
    result = evaluate(model, images, labels, config)
    out = {"test_accuracy": result["acc"], "test_loss": result["loss"]}
    if tta:
        out["test_accuracy_tta"] = result["acc_tta"]
    return out


def predict_command(path: Path, images: list[Path], device: str) -> list[tuple[Path, str, float]]:
    """(image, predicted class, its probability) for each image file."""
    dev = pick_device(device)
    model, config = load_model(path, dev)
    batch = torch.from_numpy(np.stack([read_image(p) for p in images])).to(dev)
    probs = model.predict_proba(normalize_batch(batch, *normalization(config.std)))
    classes = CLASSES if model.num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(model.num_classes))
    conf, idx = probs.max(1)
    return [(p, classes[int(i)], float(c)) for p, i, c in zip(images, idx, conf)]


def build_report(run_dir: Path, *, data_source: str | None = None, device: str = "auto") -> Path:
    """`cifarkit report RUN`: reload the run's config, weights and test data, redraw every plot, rewrite the report.

    A finished run is drawn from RUN/model.pt; a run still in progress (or stopped) from its last checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CifarkitError(f"no run folder at {run_dir}: give the --out folder of a `cifarkit train` run")
    for name in ("config.json", "metrics.json"):
        if not (run_dir / name).is_file():
            raise CifarkitError(f"{run_dir} has no {name}: give the folder of a `cifarkit train` run that "
                                "completed at least one epoch")
    weights = run_dir / "model.pt"
    if not weights.is_file():
        weights = run_dir / "checkpoints" / "last.pt"
    if not weights.is_file():
        raise CifarkitError(f"{run_dir} has neither model.pt nor checkpoints/last.pt: nothing to draw")
    dev = pick_device(device)
    model, _ = load_model(weights, dev)
    config = TrainConfig.load(run_dir / "config.json")
    data = resolve_data(data_source or config.data)
    data = subset(data, None, config.test_subset, seed=config.seed)
    write_plots(run_dir, model=model, data=data, config=config, device=dev)
    return write_report(run_dir)
