"""The run's curves and matrices as matplotlib Figures: LR range test, loss, accuracy, LR schedule, confusion matrix.

Drawn without pyplot, so importing or calling this module changes no global state (safe on headless servers). Every
plot takes an optional `ax` to draw into and returns the Figure; `save_figure` writes any Figure as PNG, including
the image grids (samples, misclassified, Grad-CAM) of `cifarkit.report.galleries`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 130
TRAIN_COLOUR, TEST_COLOUR, TTA_COLOUR = "tab:blue", "tab:orange", "tab:green"


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write `fig` as a PNG (parents created) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    if fig.canvas.manager is not None:  # created through pyplot (e.g. in a notebook): let pyplot forget it too
        import matplotlib.pyplot as plt

        plt.close(fig)
    else:
        fig.clear()
    return path


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        parent = ax.figure
        return getattr(parent, "figure", parent), ax  # the root Figure, also when ax lives in a SubFigure
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_lr_finder(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    lr_min: float | None = None,
    lr_max: float | None = None,
    *,
    ax: Axes | None = None,
) -> Figure:
    """LR range test: raw loss (faint) and smoothed loss (bold) against the LR on a log axis, LRMIN/LRMAX marked."""
    fig, ax = _axes(ax, (8, 5))
    lrs, losses, smoothed = (np.asarray(a, dtype=float) for a in (lrs, losses, smoothed))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss (raw)")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2.5, label="loss (smoothed)")
    ax.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:
        # The sweep ends by diverging; cap the y axis at the highest smoothed loss before its minimum so the
        # informative dip is not squashed by the blow-up.
        best = int(np.nanargmin(np.where(np.isfinite(smoothed), smoothed, np.inf)))
        top = float(np.max(finite[: best + 1] if best > 0 else finite[:1]))
        raw = losses[np.isfinite(losses)]
        bottom = float(min(finite.min(), raw.min() if raw.size else finite.min()))
        span = max(top - bottom, 1e-3)
        ax.set_ylim(bottom - 0.05 * span, top + 0.25 * span)
    swept = lrs[np.isfinite(lrs) & (lrs > 0)]
    if swept.size:  # the axis ends where the sweep did, no empty decade after the last LR (autoscale is now off)
        ax.set_xlim(float(swept.min()), float(swept.max()))
    for value, name, colour, offset in ((lr_min, "LRMIN", "tab:green", 0.97), (lr_max, "LRMAX", "tab:red", 0.87)):
        if value is None:
            continue
        ax.axvline(value, color=colour, linestyle="--", linewidth=1.5, label=f"{name} = {value:.2e}")
        # The label goes right of its line, or left of it in the last fifth of the axis, where it would spill over.
        lo, hi = np.log10(ax.get_xlim())
        left = (np.log10(value) - lo) / max(hi - lo, 1e-9) > 0.8
        ax.text(value, offset, f"{name} \n{value:.2e} " if left else f" {name}\n {value:.2e}", color=colour,
                fontsize=10, fontweight="bold", va="top", ha="right" if left else "left",
                transform=ax.get_xaxis_transform())
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    return fig


def _epoch_axis(ax: Axes, epochs: Sequence[float] = ()) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(epochs):  # half an epoch of margin: a one-epoch run is a centred point, not a tick-less sliver
        ax.set_xlim(float(np.min(epochs)) - 0.5, float(np.max(epochs)) + 0.5)
        if len(epochs) <= 30:
            ax.set_xticks(np.asarray(epochs, dtype=float))
            ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)


def moving_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Centred mean over `window` values (odd; shorter at the ends), skipping NaN/inf: it does not lag the data
    as an exponential average does, so it lines up with the epoch means."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    kernel = np.ones(max(1, window | 1))
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(float), kernel, mode="same")
    return np.divide(sums, counts, out=np.full(values.shape, np.nan), where=counts > 0)


def plot_loss(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    test_loss: Sequence[float],
    *,
    step_epoch: Sequence[float] | None = None,
    step_loss: Sequence[float] | None = None,
    smoothing: float = 0.0,
    ax: Axes | None = None,
) -> Figure:
    """Train and test loss per epoch; with the loss of every step (`step_loss`, at `step_epoch`: the epoch count at
    each step's end, step / steps_per_epoch), also that, faint, with its moving mean, on the same epoch axis.
    `smoothing`: the label smoothing of the per-step losses, said in their legend (`train_loss` and `test_loss` are
    plain cross-entropy), since they sit above the cross-entropy.

        plot_loss(h["epoch"], h["train_loss"], h["test_loss"], step_epoch=s["step"] / 98, step_loss=s["loss"])
    """
    fig, ax = _axes(ax, (8, 5))
    if step_epoch is not None and step_loss is not None and len(step_loss):
        _loss_per_step(ax, epochs, train_loss, test_loss, np.asarray(step_epoch, float), np.asarray(step_loss, float),
                       smoothing)
    else:
        ax.plot(epochs, train_loss, "o-", color=TRAIN_COLOUR, label="train")
        ax.plot(epochs, test_loss, "s-", color=TEST_COLOUR, label="test")
        _epoch_axis(ax, epochs)
        ax.set_title("Loss per epoch")
        ax.legend()
    ax.set_ylabel("cross-entropy loss")
    return fig


def _loss_per_step(ax: Axes, epochs: Sequence[int], train_loss: Sequence[float], test_loss: Sequence[float],
                   x: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> None:
    """plot_loss with the loss of every step `y` at epochs `x`: an axis from 0 to the last epoch."""
    window = len(y) // 40 | 1  # ~1/40 of the run: smooths batch noise, keeps the one-cycle's bends
    what = f"train with label smoothing {smoothing:g}" if smoothing else "train"
    ax.plot(x, y, color=TRAIN_COLOUR, alpha=0.25 if window > 1 else 0.6, linewidth=0.8, label=f"{what}, per step")
    if window > 1:
        ax.plot(x, moving_mean(y, window), color=TRAIN_COLOUR, linewidth=2, label=f"{what}, mean of {window} steps")
    # An epoch's train loss is the mean over its steps: it belongs mid-epoch; the test loss is measured at its end.
    # clip_on=False: the last test point sits on the right edge of the axis, a whole square, not half of one.
    ax.plot(np.asarray(epochs, dtype=float) - 0.5, train_loss, "o", color=TRAIN_COLOUR, markeredgecolor="white",
            markersize=7, zorder=3, label="train, epoch mean (mid-epoch)")
    ax.plot(epochs, test_loss, "s-", color=TEST_COLOUR, markeredgecolor="white", markersize=7, zorder=3,
            clip_on=False, label="test, end of epoch")
    _epoch_axis(ax)
    end = max(float(np.max(epochs)), float(x.max()))
    ax.set_xlim(0, end)
    if end <= 2:  # a run of an epoch or two: fractions of an epoch on the axis, not just 0, 1, 2
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    ax.set_title(f"Loss per step and per epoch ({len(y)} steps)")
    ax.legend(loc="upper right")  # where a falling loss leaves room ("best" would test thousands of points)


def plot_accuracy(
    epochs: Sequence[int],
    train_acc: Sequence[float],
    test_acc: Sequence[float],
    test_acc_tta: Sequence[float] | None = None,
    *,
    ax: Axes | None = None,
) -> Figure:
    """Train and test accuracy per epoch in % (inputs are fractions), the best test epoch annotated."""
    fig, ax = _axes(ax, (8, 5))
    epochs = np.asarray(epochs)
    test = 100 * np.asarray(test_acc, dtype=float)
    ax.plot(epochs, 100 * np.asarray(train_acc, dtype=float), "o-", color=TRAIN_COLOUR, label="train (augmented)")
    ax.plot(epochs, test, "s-", color=TEST_COLOUR, label="test")
    if test_acc_tta is not None:
        tta = 100 * np.asarray(test_acc_tta, dtype=float)
        if np.isfinite(tta).any():
            ax.plot(epochs, tta, "^--", color=TTA_COLOUR, label="test, flip TTA")
    if test.size and np.isfinite(test).any():  # the best epoch as a star, its value in the legend (no text to collide)
        best = int(np.nanargmax(test))
        ax.plot([epochs[best]], [test[best]], "*", color="tab:red", markersize=15, zorder=3,
                label=f"best test {test[best]:.2f}% (epoch {epochs[best]:g})")
    _epoch_axis(ax, epochs)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per epoch")
    ax.legend(loc="lower right")
    return fig


def plot_lr_schedule(
    lrs: Sequence[float], steps_per_epoch: int, peak_epoch: float | None = None, *, ax: Axes | None = None
) -> Figure:
    """The LR of every optimiser step against the epoch (step / steps_per_epoch), the peak marked."""
    fig, ax = _axes(ax, (8, 4.5))
    lrs = np.asarray(lrs, dtype=float)
    # Step k runs from epoch k/spe to (k+1)/spe at one LR: drawn as a staircase, the peak step ends exactly at the
    # peak epoch and the run ends at the last epoch (invisible steps at real sizes, honest at tiny ones).
    x = np.arange(len(lrs) + 1) / max(steps_per_epoch, 1)
    if lrs.size:
        # Values go in the legend, not beside the curve, where they would cross the rising and falling lines.
        ax.plot(x, np.append(lrs, lrs[-1]), drawstyle="steps-post", color="tab:purple", linewidth=2,
                label=f"LR per step (start {lrs[0]:.2e}, end {lrs[-1]:.2e})")
        top = int(np.argmax(lrs))
        ax.plot([x[top + 1]], [lrs[top]], "o", color="tab:red", label=f"highest LR {lrs[top]:.2e}")
    if peak_epoch is not None:
        ax.axvline(peak_epoch, color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"peak: end of epoch {peak_epoch:.3g}")
    _epoch_axis(ax)
    ax.set_xlim(0, max(x[-1], 1e-9))
    ax.set_ylim(0, 1.25 * float(lrs.max()) if lrs.size and lrs.max() > 0 else None)  # headroom for the legend
    ax.set_ylabel("learning rate")
    ax.set_title("One-cycle LR schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.legend(loc="upper right")
    return fig


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], *, ax: Axes | None = None) -> Figure:
    """Counts written in the cells; colour is the row-normalised share, so rare and common classes compare."""
    fig, ax = _axes(ax, (8.5, 7.5))
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    ax.set_title(f"Confusion matrix on {total} test images (accuracy {100 * accuracy:.2f}%)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return fig
