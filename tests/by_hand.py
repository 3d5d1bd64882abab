"""Independent answers for tests: a run's model.pt run by a forward pass written here rather than the product's, and
the figures of its predictions counted one image at a time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from helpers import model_weights


def _logits_by_hand(run: Any, images: Any) -> Any:
    """The float32 logits of a run's model.pt on `images` (uint8 N x 32 x 32 x 3), by a forward pass written here
    rather than the product's: the weights in a fresh CustomResNet in eval mode, each pixel (x / 255 - mean) / std
    with the run's normalisation (config.json's std), autocast in the run's precision (auto: what
    `choose_precision` picks for this CPU)."""
    import json

    import numpy as np
    import torch

    from cifarkit.data import normalization
    from cifarkit.device import choose_precision
    from cifarkit.models import CustomResNet

    config = json.loads((run / "config.json").read_text())
    model = CustomResNet()
    model.load_state_dict(model_weights(run / "model.pt", bare=True))
    mean, std = (np.asarray(v, dtype=np.float32) for v in normalization(config["std"]))
    x = torch.from_numpy(((np.asarray(images, dtype=np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy())
    precision = choose_precision("cpu") if config["precision"] == "auto" else config["precision"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model.eval()(x).float()


def predictions_by_hand(run: Any, images: Any) -> Any:
    """The classes a run's model.pt gives `images` (uint8 N x 32 x 32 x 3), by a forward pass written here rather
    than the product's (see `_logits_by_hand`): the argmax of the logits."""
    return _logits_by_hand(run, images).argmax(1).numpy()


def probabilities_by_hand(run: Any, images: Any) -> Any:
    """The softmax probabilities (float32 N x classes) a run's model.pt gives `images`, by the forward pass written
    here (see `_logits_by_hand`)."""
    import torch

    return torch.softmax(_logits_by_hand(run, images), dim=1).numpy()


def top_k_by_hand(probabilities: Any, classes: Any, k: int) -> list[list[tuple[str, float]]]:
    """Per row of `probabilities`, its k most likely classes with their probabilities, most likely first."""
    return [[(classes[j], float(row[j])) for j in sorted(range(len(row)), key=lambda j: -row[j])[:k]]
            for row in probabilities]


def class_scores_by_hand(labels: Any, predictions: Any, n_classes: int) -> SimpleNamespace:
    """The per-class figures of predictions against true labels, counted here one image at a time: `confusion`
    (rows true, columns predicted), `correct`, `total`, `accuracy` (None for a class without images), `precision`
    (0 for a class never predicted), `recall` (0 without images), `f1` (0 where precision + recall is 0), their
    unweighted means `macro`, and `most_confused`: the off-diagonal cells as [true, predicted, count], largest first,
    ties in row-major order, none of count 0, at most 10."""
    confusion = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(labels, predictions, strict=True):
        confusion[int(t)][int(p)] += 1
    correct = [confusion[c][c] for c in range(n_classes)]
    total = [sum(confusion[c]) for c in range(n_classes)]
    predicted = [sum(row[c] for row in confusion) for c in range(n_classes)]
    precision = [correct[c] / predicted[c] if predicted[c] else 0.0 for c in range(n_classes)]
    recall = [correct[c] / total[c] if total[c] else 0.0 for c in range(n_classes)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    cells = [(confusion[t][p], t, p) for t in range(n_classes) for p in range(n_classes) if t != p and confusion[t][p]]
    return SimpleNamespace(
        confusion=confusion, correct=correct, total=total, precision=precision, recall=recall, f1=f1,
        accuracy=[correct[c] / total[c] if total[c] else None for c in range(n_classes)],
        macro={name: sum(values) / n_classes for name, values in
               (("precision", precision), ("recall", recall), ("f1", f1))},
        most_confused=[[t, p, n] for n, t, p in sorted(cells, key=lambda cell: (-cell[0], cell[1], cell[2]))][:10])


NEAR_TIE = 0.02  # a top-two logit gap, relative to the top logit (at least 1), that bf16 rounding can close


def predictions_near_ties(run: Any, images: Any) -> list[Any]:
    """The classes a run's model.pt gives `images` by the forward pass written here, then every copy of them with one
    near-tie broken the other way (an image whose top two logits lie within NEAR_TIE of each other, given its
    runner-up): what another forward pass of the same weights may give (bf16 rounding in other kernels)."""
    import numpy as np

    logits = _logits_by_hand(run, images).numpy()
    order = np.argsort(-logits, axis=1, kind="stable")
    predictions = order[:, 0]
    moved = []
    for i, row in enumerate(logits):
        top, runner_up = row[order[i, 0]], row[order[i, 1]]
        if top - runner_up <= NEAR_TIE * max(1.0, abs(float(top))):
            copy = predictions.copy()
            copy[i] = order[i, 1]
            moved.append(copy)
    return [predictions, *moved]
