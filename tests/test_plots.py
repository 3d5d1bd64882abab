"""Plots and image grids render real, readable PNGs from plain arrays; Grad-CAM returns sensible heatmaps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from cifarkit import galleries, plots
from cifarkit.data import CLASSES, make_synthetic
from cifarkit.gradcam import grad_cam
from cifarkit.models.custom_resnet import CustomResNet


@pytest.fixture(scope="module")
def small() -> dict:
    """Tiny synthetic data: 10 classes for titles, 3 classes where a grid's size is the cost."""
    return {"data": make_synthetic(n_train=40, n_test=20), "three": make_synthetic(n_train=9, n_test=3, num_classes=3)}


def test_samples_grid(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """The samples grid (rows = classes, originals beside augmented views) saves as a real PNG."""
    data = small["three"]
    views = np.ascontiguousarray(data.train_images[:, ::-1])  # any uint8 HWC stand-in for the augmented view
    fig = galleries.plot_samples(data.train_images, data.train_labels, data.classes, views, per_class=2)
    assert isinstance(fig, Figure)
    assert_real_png(plots.save_figure(fig, tmp_path / "samples.png"))


def test_samples_without_views_and_with_several_views(tmp_path: Path, small: dict,
                                                      assert_real_png: Callable[..., None]) -> None:
    """Samples work with no augmented views and with V views per image ([N, V, 32, 32, 3])."""
    data = small["three"]
    assert_real_png(plots.save_figure(galleries.plot_samples(data.train_images, data.train_labels, data.classes),
                                      tmp_path / "a.png"))
    views = np.stack([data.train_images, data.train_images[:, :, ::-1]], axis=1)
    assert_real_png(plots.save_figure(galleries.plot_samples(data.train_images, data.train_labels, data.classes, views,
                                                             per_class=1), tmp_path / "b.png"))


def test_lr_finder_plot_tolerates_divergence(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """The LR-finder plot draws raw and smoothed loss on a log axis with both LRs labelled, even with inf/NaN."""
    lrs = np.geomspace(1e-6, 1, 60)
    losses = 2.3 - np.linspace(0, 1, 60) + np.r_[np.zeros(55), [1, 3, 10, np.inf, np.nan]]
    fig = plots.plot_lr_finder(lrs, losses, losses, 1e-4, 1e-2)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    texts = " ".join(t.get_text() for t in ax.texts) + " ".join(t.get_text() for t in ax.get_legend().texts)
    assert "LRMIN" in texts and "1.00e-04" in texts and "LRMAX" in texts and "1.00e-02" in texts
    assert_real_png(plots.save_figure(fig, tmp_path / "lr_finder.png"))


def test_loss_accuracy_schedule(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """Loss, accuracy (in %, best epoch annotated) and the LR schedule (peak marked) save as real PNGs."""
    epochs = np.arange(1, 6)
    fig = plots.plot_accuracy(epochs, [0.3, 0.5, 0.6, 0.7, 0.8], [0.28, 0.45, 0.62, 0.6, 0.7], [np.nan] * 5)
    assert fig.axes[0].get_ylim()[1] > 50, "accuracy must be drawn in percent"
    assert_real_png(plots.save_figure(fig, tmp_path / "accuracy.png"))
    assert_real_png(plots.save_figure(plots.plot_loss(epochs, [2, 1.5, 1, 0.8, 0.6], [2.1, 1.6, 1.2, 1, 0.9]),
                                      tmp_path / "loss.png"))
    lrs = np.r_[np.linspace(1e-4, 1e-2, 10), np.linspace(1e-2, 1e-4, 40)]
    fig = plots.plot_lr_schedule(lrs, steps_per_epoch=10, peak_epoch=1.0)
    line = fig.axes[0].lines[0]
    assert line.get_xdata()[-1] == pytest.approx(5.0), "x must be in epochs"
    assert_real_png(plots.save_figure(fig, tmp_path / "lr_schedule.png"))


def test_plot_into_given_ax(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """Single-panel plots draw into a caller's ax and return that ax's figure."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    assert plots.plot_loss([1, 2], [1.0, 0.5], [1.1, 0.7], ax=left) is fig
    assert plots.plot_confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], ax=right) is fig
    assert_real_png(plots.save_figure(fig, tmp_path / "both.png"))


def test_confusion_counts_and_plot(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """confusion_counts puts true classes on rows; the plot writes every count in its cell."""
    matrix = plots.confusion_counts([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    fig = plots.plot_confusion_matrix(matrix, ["a", "b", "c"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(map(str, matrix.ravel()))
    assert_real_png(plots.save_figure(fig, tmp_path / "cm.png"))


def test_misclassified_titles_and_empty(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """Each misclassified image is titled 'true: X / pred: Y (NN%)'; no mistakes still gives a readable PNG."""
    data = small["data"]
    true, pred = data.test_labels[:7], (data.test_labels[:7] + 1) % 10
    fig = galleries.plot_misclassified(data.test_images[:7], true, pred, np.full(7, 0.87), data.classes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"true: {CLASSES[true[0]]}\npred: {CLASSES[pred[0]]} (87%)"
    assert len(titles) == 7
    assert_real_png(plots.save_figure(fig, tmp_path / "mis.png"))
    empty = galleries.plot_misclassified(data.test_images[:0], [], [], [], data.classes)
    assert_real_png(plots.save_figure(empty, tmp_path / "none.png"))


def test_gradcam_plot(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """Grad-CAM pairs (original | overlay) save as a real PNG."""
    data = small["data"]
    heat = np.random.default_rng(0).random((3, 32, 32))
    fig = galleries.plot_gradcam(data.test_images[:3], heat, data.test_labels[:3], data.test_labels[:3] ^ 1,
                                 data.classes, [0.5, 0.6, 0.7])
    assert_real_png(plots.save_figure(fig, tmp_path / "gradcam.png"))


def test_import_does_not_touch_pyplot() -> None:
    """Importing the plotting modules loads no pyplot (no global state, no GUI backend on servers)."""
    code = ("import sys, cifarkit.plots, cifarkit.galleries, cifarkit.report, cifarkit.report_render, "
            "cifarkit.gradcam; assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


class QuadrantNet(nn.Module):
    """Class 0's evidence is the red channel; features are 8x8-pixel averages on a 4x4 grid, like CustomResNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_max_pool2d(features, 1).flatten(1))


@pytest.mark.parametrize("quadrant", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gradcam_peaks_where_the_evidence_is(quadrant: tuple[int, int]) -> None:
    """With class evidence (red) in one quadrant only, the class's CAM peaks inside that quadrant."""
    images = torch.zeros(1, 3, 32, 32)
    r, c = quadrant
    images[0, 0, 16 * r: 16 * r + 16, 16 * c: 16 * c + 16] = 1.0
    images[0, 1] = 0.3  # evidence for the other class everywhere: must not show in class 0's map
    heat = grad_cam(QuadrantNet(), images, [0])[0]
    inside = heat[16 * r: 16 * r + 16, 16 * c: 16 * c + 16]
    assert heat.max() == pytest.approx(1.0) and inside.max() == pytest.approx(1.0)
    outside = heat.copy()
    outside[16 * r: 16 * r + 16, 16 * c: 16 * c + 16] = np.nan
    assert inside.mean() > 3 * np.nanmean(outside)


def test_gradcam_on_custom_resnet() -> None:
    """On CustomResNet the heatmaps are float [B, 32, 32] in [0, 1], not constant, for both layers; the model's
    training mode is restored and no_grad around the call does not break it."""
    torch.manual_seed(0)
    model = CustomResNet().train()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        heat = grad_cam(model, images)
    assert model.training
    assert heat.shape == (2, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    assert all(h.max() - h.min() > 0.5 for h in heat)
    heat2 = grad_cam(model, images, layer="layer2")
    assert heat2.shape == (2, 32, 32) and 0 <= heat2.min() and heat2.max() <= 1 and heat2.std() > 0
    # An explicit class may have no positive evidence at all (ReLU): then the map is all zero, never NaN.
    explicit = grad_cam(model, images, [3, 4])
    assert explicit.shape == (2, 32, 32) and np.isfinite(explicit).all() and explicit.max() <= 1
    with pytest.raises(ValueError):
        grad_cam(model, images, layer="fc")
