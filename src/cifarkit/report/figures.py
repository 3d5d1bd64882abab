"""Every figure of a run folder: RUN/plots/*.png and RUN/per_class.json, from the trained model, the data and the
run's files. Each figure comes from a plot function of `plots` or `galleries`, which take data and return it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cifarkit import run as R
from cifarkit.atomic import write_json, write_text
from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, normalization
from cifarkit.data.transforms import build_train_transform, seed_transform
from cifarkit.device import autocast
from cifarkit.inference.preprocess import predict_proba, preprocess
from cifarkit.report import galleries, plots
from cifarkit.report.content import read_history
from cifarkit.report.gradcam import grad_cam
from cifarkit.report.interpret import classification_report, confusion_matrix, most_confused, top_losses

N_MISCLASSIFIED, N_GRADCAM, SAMPLES_PER_CLASS = 20, 20, 3


def augmented_views(images: np.ndarray, transform: Callable[..., dict[str, Any]], config: TrainConfig) -> np.ndarray:
    """One augmented view per uint8 HWC image, de-normalised back to uint8 HWC for display.

    `transform(image=hwc_uint8)["image"]` must be a normalised CHW float tensor (the training pipeline's output).
    """
    mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in normalization(config.std))
    views = []
    for image in images:
        chw = np.asarray(transform(image=image)["image"], dtype=np.float32)
        views.append(np.clip((chw * std + mean) * 255, 0, 255).round().astype(np.uint8).transpose(1, 2, 0))
    return np.stack(views) if views else np.zeros((0, 32, 32, 3), np.uint8)


def _train_transform(config: TrainConfig) -> Callable[..., dict[str, Any]]:
    transform = build_train_transform(config)
    seed_transform(transform, config.seed)  # the same views every time the report is rebuilt
    return transform


def samples_figure(data: Cifar10, config: TrainConfig, *, per_class: int = SAMPLES_PER_CLASS) -> Figure:
    """The first `per_class` training images of each class, each beside one augmented view drawn by config's
    training pipeline (seeded by config.seed, so the same views every time).

        fig = samples_figure(cifarkit.resolve_data("synthetic"), TrainConfig())
    """
    labels = np.asarray(data.train_labels)
    picks = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(data.classes))])
    picks = picks.astype(np.int64)
    views = augmented_views(data.train_images[picks], _train_transform(config), config)
    return galleries.plot_samples(data.train_images[picks], labels[picks], data.classes, views, per_class=per_class)


def write_plots(run_dir: Path, *, model: nn.Module, data: Cifar10, config: TrainConfig, device: torch.device,
                precision: str = "fp32") -> list[Path]:
    """Write every plot the run folder allows into RUN/plots/ and per-class accuracy into RUN/per_class.json.

    The model's predictions and Grad-CAM's forward pass run under `precision` ("bf16"/"fp16"/"fp32", as
    device.resolve_precision gives it), as in training; Grad-CAM's gradients follow the forward's dtypes and are
    averaged in fp32.
    """
    run_dir = Path(run_dir)
    out, written = run_dir / R.PLOTS, []

    def save(fig: Any, name: str) -> None:
        written.append(plots.save_figure(fig, out / f"{name}.png"))

    save(samples_figure(data, config), "samples")

    if (f := R.read_optional_json(run_dir / R.LR_FINDER)) is not None:
        save(plots.plot_lr_finder(f["lrs"], f["losses"], f["smoothed"], f.get("lr_min"), f.get("lr_max")),
             "lr_finder")
    if (s := R.read_optional_json(run_dir / R.SCHEDULE)) is not None:
        save(plots.plot_lr_schedule(s["lrs"], s["steps_per_epoch"], s.get("peak_epoch")), "lr_schedule")
    if (run_dir / R.HISTORY).is_file():
        h = read_history(run_dir / R.HISTORY)
        if len(h.get("epoch", ())):
            # Like with like: the train cross-entropy without label smoothing, as the test loss (older runs: the loss)
            plain = "train_ce" in h
            save(plots.plot_loss(h["epoch"], h["train_ce" if plain else "train_loss"], h["test_loss"],
                                 **step_losses(run_dir), smoothing=config.label_smoothing if plain else 0.0), "loss")
            save(plots.plot_accuracy(h["epoch"], h["train_acc"], h["test_acc"], h.get("test_acc_tta")), "accuracy")

    model = model.to(device)
    mean, std = normalization(config.std)
    probs = predict_proba(model, data.test_images, mean, std, precision=precision,
                          batch_size=config.eval_batch_size)
    true, pred = np.asarray(data.test_labels), probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    matrix = confusion_matrix(true, pred, len(data.classes))
    save(plots.plot_confusion_matrix(matrix, data.classes), "confusion_matrix")
    write_interpretation(run_dir, true, pred, data.classes)

    wrong = top_losses(probs, true, N_MISCLASSIFIED).index  # the mistakes, highest loss first
    true_prob = probs[np.arange(len(true)), true]
    save(galleries.plot_misclassified(data.test_images[wrong], true[wrong], pred[wrong], conf[wrong], data.classes,
                                      true_prob=true_prob[wrong],
                                      title=f"Top losses: the {len(wrong)} misclassified test images with the "
                                            "highest loss (true class least probable first)" if len(wrong)
                                      else "Misclassified test images"),
         "misclassified")
    shown = wrong[:N_GRADCAM]
    title = f"Grad-CAM on the {len(shown)} highest-loss mistakes"
    if len(shown) == 0:  # a perfect model: explain correct predictions instead of drawing nothing
        shown = np.argsort(-conf, kind="stable")[:N_GRADCAM]
        title = f"Grad-CAM on {len(shown)} correctly classified test images (no mistakes to explain)"
    heat = np.zeros((0, 32, 32))
    if len(shown):
        with autocast(precision, device):
            heat = grad_cam(model, preprocess(data.test_images[shown], mean, std, device=device), pred[shown])
    save(galleries.plot_gradcam(data.test_images[shown], heat, true[shown], pred[shown], data.classes, conf[shown],
                                true_prob=true_prob[shown], title=title), "gradcam")
    return written


def step_losses(run_dir: Path) -> dict[str, np.ndarray]:
    """`plot_loss`'s per-step keywords from RUN/steps.csv ({} without it): each step's loss at the epoch count at
    its end, step / steps_per_epoch (the rows of the fullest epoch: every complete epoch has them all)."""
    path = Path(run_dir) / R.STEPS
    steps = read_history(path) if path.is_file() else {}
    if not len(steps.get("step", ())):
        return {}
    per_epoch = int(np.bincount(steps["epoch"].astype(np.int64)).max())
    return {"step_epoch": steps["step"] / per_epoch, "step_loss": steps["loss"]}


def write_interpretation(run_dir: Path, true: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> None:
    """RUN/per_class.json (counts, accuracy, precision, recall, F1 per class, macro averages, the confusion matrix and
    the most-confused pairs) and RUN/classification_report.csv, from the test set's true and predicted labels."""
    matrix = confusion_matrix(true, pred, len(classes))
    report = classification_report(true, pred, classes)
    correct, total = np.diag(matrix), matrix.sum(axis=1)
    write_json(run_dir / R.PER_CLASS, {
        "classes": list(classes), "correct": correct.tolist(), "total": total.tolist(),
        "accuracy": [float(c / t) if t else None for c, t in zip(correct, total)],
        "precision": report.precision.tolist(), "recall": report.recall.tolist(), "f1": report.f1.tolist(),
        "macro": report.macro, "overall": float(correct.sum() / max(total.sum(), 1)), "n_test": int(total.sum()),
        "confusion": matrix.tolist(),  # rows: true class, columns: predicted class
        "most_confused": [list(pair) for pair in most_confused(true, pred, classes, top=10)],
    })
    write_text(run_dir / R.CLASSIFICATION_REPORT, report.to_csv())
