"""A model's test predictions as numbers: per-class precision/recall/F1, the most confused pairs, the top losses.

Pure numpy (no torch, no matplotlib), so the functions serve the report, the app and a notebook alike:

    >>> from cifarkit.interpret import classification_report, most_confused, top_losses
    >>> report = classification_report(true, probs.argmax(1), CLASSES)
    >>> print(report)                       # fixed-width table, as sklearn's classification_report
    >>> report.to_csv()                     # the same rows as CSV text
    >>> most_confused(true, pred, CLASSES, top=3)   # [(true class, predicted class, count), ...], most first
    >>> worst = top_losses(probs, true, k=20)   # misclassified images, highest loss first
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def confusion_matrix(true: Sequence[int], pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts int64 [num_classes, num_classes]: rows are true classes, columns predicted ones."""
    true, pred = _labels(true, pred, num_classes)
    return np.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _labels(true: Sequence[int], pred: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in length: {len(true)} and {len(pred)}")
    for name, labels in (("true", true), ("pred", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} holds a label outside 0..{num_classes - 1}")
    return true, pred


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (a class never predicted has precision 0, as sklearn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


@dataclass(frozen=True)
class ClassificationReport:
    """Per-class precision, recall, F1 (float64 [C]) and support (int64 [C]), with accuracy and macro averages."""

    classes: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float

    @property
    def macro(self) -> dict[str, float]:
        """The unweighted means over classes (every class counts once, whatever its support)."""
        return {"precision": float(self.precision.mean()), "recall": float(self.recall.mean()),
                "f1": float(self.f1.mean())}

    def rows(self) -> list[dict[str, str | float | int]]:
        """One dict per class, then "macro avg": keys class, precision, recall, f1, support."""
        rows: list[dict[str, str | float | int]] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.classes, self.precision, self.recall, self.f1, self.support)]
        rows.append({"class": "macro avg", **self.macro, "support": int(self.support.sum())})
        return rows

    def to_csv(self) -> str:
        """rows() as CSV text with a header line (full float precision)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["class", "precision", "recall", "f1", "support"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()

    def to_text(self, digits: int = 2) -> str:
        """A fixed-width table laid out as sklearn's classification_report (accuracy and macro avg at the foot)."""
        width = max(len("macro avg"), *(len(c) for c in self.classes))
        cell = max(len("precision"), digits + 2)  # the widest header word, or "0.xx"
        head = " " * width + "".join(f" {h:>{cell}}" for h in ("precision", "recall", "f1-score", "support"))

        def line(name: str, values: Sequence[float | None], support: int) -> str:
            cells = "".join(f" {'':>{cell}}" if v is None else f" {v:>{cell}.{digits}f}" for v in values)
            return f"{name:>{width}}{cells} {support:>{cell}}"

        lines = [head, ""]
        lines += [line(c, (p, r, f), int(s))
                  for c, p, r, f, s in zip(self.classes, self.precision, self.recall, self.f1, self.support)]
        total = int(self.support.sum())
        macro = self.macro
        lines += ["", line("accuracy", (None, None, self.accuracy), total),
                  line("macro avg", (macro["precision"], macro["recall"], macro["f1"]), total)]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()


def classification_report(true: Sequence[int], pred: Sequence[int], classes: Sequence[str]) -> ClassificationReport:
    """Precision, recall and F1 of each class from true and predicted labels (ints in 0..len(classes)-1).

    A class that is never predicted has precision 0; one with no test images has recall 0 (sklearn's
    zero_division=0); F1 is 0 where precision + recall is 0.
    """
    matrix = confusion_matrix(true, pred, len(classes)).astype(np.float64)
    hits = np.diag(matrix)
    precision, recall = _ratio(hits, matrix.sum(axis=0)), _ratio(hits, matrix.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = matrix.sum()
    return ClassificationReport(tuple(classes), precision, recall, f1, matrix.sum(axis=1).astype(np.int64),
                                float(hits.sum() / total) if total else 0.0)


def most_confused(true: Sequence[int], pred: Sequence[int], classes: Sequence[str],
                  top: int = 10) -> list[tuple[str, str, int]]:
    """The `top` off-diagonal cells of the confusion matrix as (true class, predicted class, count), largest first
    (ties in row-major order); pairs never confused are left out, as fastai's `interp.most_confused()`."""
    matrix = confusion_matrix(true, pred, len(classes))
    np.fill_diagonal(matrix, 0)
    flat = matrix.ravel()
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0][:max(top, 0)]
    n = len(classes)
    return [(classes[i // n], classes[i % n], int(flat[i])) for i in order]


@dataclass(frozen=True)
class TopLosses:
    """Misclassified images, highest loss first: their `index` into the inputs, the predicted class `pred`, the
    probabilities of the true class `p_true` and of the predicted one `p_pred`, and `loss` = -ln(p_true)."""

    index: np.ndarray
    pred: np.ndarray
    p_true: np.ndarray
    p_pred: np.ndarray
    loss: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def top_losses(probs: np.ndarray, true: Sequence[int], k: int | None = None) -> TopLosses:
    """The k misclassified images (all of them when k is None) with the highest cross-entropy loss.

    probs: float [N, C] class probabilities (softmax outputs); true: [N] labels. Ties keep input order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = np.asarray(true, dtype=np.int64).ravel()
    if probs.ndim != 2 or len(probs) != len(true):
        raise ValueError(f"probs must be [N, C] for {len(true)} labels, got shape {probs.shape}")
    rows = np.arange(len(true))
    pred = probs.argmax(axis=1)
    p_true = probs[rows, true]
    loss = -np.log(np.clip(p_true, np.finfo(np.float64).tiny, None))  # p = 0 gives a large, finite loss
    wrong = np.flatnonzero(pred != true)
    wrong = wrong[np.argsort(-loss[wrong], kind="stable")][:k]
    return TopLosses(wrong, pred[wrong], p_true[wrong], probs[wrong, pred[wrong]], loss[wrong])
