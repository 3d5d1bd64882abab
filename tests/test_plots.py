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

from cifarkit.errors import CifarkitError
from cifarkit.report import galleries, plots
from cifarkit.data import CLASSES, make_synthetic
from cifarkit.report.gradcam import grad_cam
from cifarkit.report.interpret import confusion_matrix, top_losses
from cifarkit.models.custom_resnet import CustomResNet
from helpers import drawn_images, drawn_lines


@pytest.fixture(scope="module")
def small() -> dict:
    """Tiny synthetic data: 10 classes for titles, 3 classes where a grid's size is the cost."""
    return {"data": make_synthetic(n_train=40, n_test=20), "three": make_synthetic(n_train=9, n_test=3, num_classes=3)}


def test_samples_grid(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """The samples grid (rows = classes, originals beside augmented views) shows, row by row, the first 2 training
    images of each class, each followed by its own augmented view; it saves as a real PNG."""
    data = small["three"]
    views = np.ascontiguousarray(data.train_images[:, ::-1])  # any uint8 HWC stand-in for the augmented view
    fig = galleries.plot_samples(data.train_images, data.train_labels, data.classes, views, per_class=2)
    assert isinstance(fig, Figure)
    picks = [i for c in range(3) for i in np.flatnonzero(data.train_labels == c)[:2]]
    expected = [a for i in picks for a in (data.train_images[i], views[i])]
    shown = drawn_images(fig)
    assert len(shown) == len(expected) == 12 and all(np.array_equal(a, b) for a, b in zip(shown, expected))
    assert_real_png(plots.save_figure(fig, tmp_path / "samples.png"))


def test_samples_without_views_and_with_several_views(tmp_path: Path, small: dict,
                                                      assert_real_png: Callable[..., None]) -> None:
    """Samples work with no augmented views (3 images per class, nothing else) and with V views per image
    ([N, V, 32, 32, 3]: each image, then its V views)."""
    data = small["three"]
    fig = galleries.plot_samples(data.train_images, data.train_labels, data.classes)
    assert len(drawn_images(fig)) == 9 and all(any(np.array_equal(a, b) for b in data.train_images)
                                               for a in drawn_images(fig))
    assert_real_png(plots.save_figure(fig, tmp_path / "a.png"))
    views = np.stack([data.train_images, data.train_images[:, :, ::-1]], axis=1)
    fig = galleries.plot_samples(data.train_images, data.train_labels, data.classes, views, per_class=1)
    first = int(np.flatnonzero(data.train_labels == 0)[0])
    assert len(drawn_images(fig)) == 3 * 3
    assert all(np.array_equal(a, b) for a, b in zip(drawn_images(fig)[:3], (data.train_images[first], *views[first])))
    assert_real_png(plots.save_figure(fig, tmp_path / "b.png"))


def test_lr_finder_plot_tolerates_divergence(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """The LR-finder plot draws raw and smoothed loss on a log axis with both LRs labelled, even with inf/NaN."""
    lrs = np.geomspace(1e-6, 1, 60)
    losses = 2.3 - np.linspace(0, 1, 60) + np.r_[np.zeros(55), [1, 3, 10, np.inf, np.nan]]
    fig = plots.plot_lr_finder(lrs, losses, losses, 1e-4, 1e-2)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    raw, smoothed = drawn_lines(ax)[:2]  # the data as given: NaN and inf are the plot's to skip, not the caller's
    assert np.array_equal(raw[0], lrs) and np.array_equal(raw[1], losses, equal_nan=True)
    assert np.array_equal(smoothed[1], losses, equal_nan=True)
    texts = " ".join(t.get_text() for t in ax.texts) + " ".join(t.get_text() for t in ax.get_legend().texts)
    assert "LRMIN" in texts and "1.00e-04" in texts and "LRMAX" in texts and "1.00e-02" in texts
    assert_real_png(plots.save_figure(fig, tmp_path / "lr_finder.png"))


def test_loss_accuracy_schedule(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """Loss, accuracy (in %, best epoch annotated) and the LR schedule (peak marked) save as real PNGs."""
    epochs = np.arange(1, 6)
    fig = plots.plot_accuracy(epochs, [0.3, 0.5, 0.6, 0.7, 0.8], [0.28, 0.45, 0.62, 0.6, 0.7], [np.nan] * 5)
    assert fig.axes[0].get_ylim()[1] > 50, "accuracy must be drawn in percent"
    lines = drawn_lines(fig.axes[0])
    assert lines[0][1] == pytest.approx([30, 50, 60, 70, 80]) and lines[1][1] == pytest.approx([28, 45, 62, 60, 70])
    assert lines[-1][0].tolist() == [5.0] and lines[-1][1] == pytest.approx([70])  # the best test epoch: 5, 70%
    assert_real_png(plots.save_figure(fig, tmp_path / "accuracy.png"))
    fig = plots.plot_loss(epochs, [2, 1.5, 1, 0.8, 0.6], [2.1, 1.6, 1.2, 1, 0.9])
    assert [y.tolist() for _, y in drawn_lines(fig.axes[0])] == [[2, 1.5, 1, 0.8, 0.6], [2.1, 1.6, 1.2, 1, 0.9]]
    assert_real_png(plots.save_figure(fig, tmp_path / "loss.png"))
    lrs = np.r_[np.linspace(1e-4, 1e-2, 10), np.linspace(1e-2, 1e-4, 40)]
    fig = plots.plot_lr_schedule(lrs, steps_per_epoch=10, peak_epoch=1.0)
    line = fig.axes[0].lines[0]
    assert line.get_xdata()[-1] == pytest.approx(5.0), "x must be in epochs"
    assert np.asarray(line.get_ydata())[:-1] == pytest.approx(lrs)  # each step's LR, held to the next step
    assert_real_png(plots.save_figure(fig, tmp_path / "lr_schedule.png"))


def test_lr_plots_end_at_the_data() -> None:
    """The LR-finder axis ends at the last LR swept (no empty decade after it); the schedule's at its last step."""
    lrs = np.geomspace(1e-7, 0.3, 80)
    fig = plots.plot_lr_finder(lrs, np.linspace(2.3, 1, 80), np.linspace(2.3, 1, 80), 1e-5, 0.2)
    assert fig.axes[0].get_xlim() == pytest.approx((1e-7, 0.3))
    fig = plots.plot_lr_schedule(np.r_[np.linspace(1e-4, 1e-2, 7), np.linspace(1e-2, 1e-4, 20)], steps_per_epoch=9)
    assert fig.axes[0].get_xlim()[1] == pytest.approx(27 / 9)


def test_loss_per_step_and_per_epoch(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """With per-step losses (24 epochs x 98 steps) the loss plot draws every step, its moving mean, the epoch means
    mid-epoch and the test loss at each epoch's end, on an epoch axis from 0 to the last step; without them it
    falls back to the two per-epoch curves."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 24 * 98 + 1)
    loss = (0.2 + 2 * np.exp(-steps / 400)) * (1 + 0.1 * rng.standard_normal(steps.size))
    epochs = np.arange(1, 25)
    train, test = loss.reshape(24, 98).mean(axis=1), 0.3 + 2 * np.exp(-epochs / 4)
    fig = plots.plot_loss(epochs, train, test, step_epoch=steps / 98, step_loss=loss)
    ax = fig.axes[0]
    per_step, mean, epoch_means, tests = ax.lines
    assert len(per_step.get_xdata()) == len(mean.get_xdata()) == steps.size
    assert np.asarray(epoch_means.get_xdata()) == pytest.approx(epochs - 0.5)
    assert np.asarray(tests.get_xdata()) == pytest.approx(epochs)
    assert ax.get_xlim() == pytest.approx((0, 24)) and ax.get_xlabel() == "epoch"
    assert_real_png(plots.save_figure(fig, tmp_path / "loss_steps.png"))
    fallback = plots.plot_loss(epochs, train, test).axes[0]
    assert len(fallback.lines) == 2 and fallback.get_title() == "Loss per epoch"


def test_moving_mean_is_centred_and_skips_non_finite() -> None:
    """moving_mean of a line is the line (no lag) away from the ends; NaN and inf are left out of the means."""
    line = np.arange(20, dtype=float)
    assert plots.moving_mean(line, 5)[2:-2] == pytest.approx(line[2:-2])
    assert plots.moving_mean([1.0, np.nan, 3.0, np.inf, 5.0], 3).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_plot_into_given_ax(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """Single-panel plots draw into a caller's ax and return that ax's figure."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    assert plots.plot_loss([1, 2], [1.0, 0.5], [1.1, 0.7], ax=left) is fig
    assert plots.plot_confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], ax=right) is fig
    assert [y.tolist() for _, y in drawn_lines(left)] == [[1.0, 0.5], [1.1, 0.7]] and not right.lines
    assert np.array_equal(drawn_images(fig)[0], np.eye(3)) and not left.images  # each row's share, in its own ax
    assert_real_png(plots.save_figure(fig, tmp_path / "both.png"))


def test_confusion_counts_and_plot(tmp_path: Path, assert_real_png: Callable[..., None]) -> None:
    """confusion_matrix puts true classes on rows; the plot writes every count in its cell."""
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    fig = plots.plot_confusion_matrix(matrix, ["a", "b", "c"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(map(str, matrix.ravel()))
    np.testing.assert_allclose(drawn_images(fig)[0], [[0.5, 0.5, 0], [0, 1, 0], [1 / 3, 0, 2 / 3]])  # row shares
    assert_real_png(plots.save_figure(fig, tmp_path / "cm.png"))


def test_misclassified_titles_and_empty(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """Each misclassified image is titled 'true: X / pred: Y (NN%)'; no mistakes draws no image, one note saying
    there are no misclassified images, and still a readable PNG."""
    data = small["data"]
    true, pred = data.test_labels[:7], (data.test_labels[:7] + 1) % 10
    fig = galleries.plot_misclassified(data.test_images[:7], true, pred, np.full(7, 0.87), data.classes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"true: {CLASSES[true[0]]}\npred: {CLASSES[pred[0]]} (87%)"
    assert len(titles) == 7
    assert all(np.array_equal(a, b) for a, b in zip(drawn_images(fig), data.test_images[:7], strict=True))
    assert_real_png(plots.save_figure(fig, tmp_path / "mis.png"))
    empty = galleries.plot_misclassified(data.test_images[:0], [], [], [], data.classes)
    assert drawn_images(empty) == []
    notes = [t.get_text() for ax in empty.axes for t in ax.texts]
    assert len(notes) == 1 and "no misclassified" in notes[0].lower(), notes
    assert_real_png(plots.save_figure(empty, tmp_path / "none.png"))


def test_gradcam_plot(tmp_path: Path, small: dict, assert_real_png: Callable[..., None]) -> None:
    """Grad-CAM pairs (original | overlay): each original as given, each overlay another picture of the same size,
    saved as a real PNG."""
    data = small["data"]
    heat = np.random.default_rng(0).random((3, 32, 32))
    fig = galleries.plot_gradcam(data.test_images[:3], heat, data.test_labels[:3], data.test_labels[:3] ^ 1,
                                 data.classes, [0.5, 0.6, 0.7])
    shown = drawn_images(fig)
    assert len(shown) == 6
    for original, (left, right) in zip(data.test_images[:3], zip(shown[::2], shown[1::2]), strict=True):
        assert np.array_equal(left, original) and right.shape[:2] == (32, 32) and not np.array_equal(right, left)
    assert_real_png(plots.save_figure(fig, tmp_path / "gradcam.png"))


def test_gradcam_gallery_shows_every_mistake_with_a_colour_bar(small: dict) -> None:
    """With 20 mistakes the gallery has 20 originals and 20 overlays, each original titled with the true and the
    predicted class and their probabilities, a colour bar, and a title that states the number, the colormap and
    the opacity."""
    data = small["data"]
    n = 20
    heat = np.random.default_rng(0).random((n, 32, 32))
    true, pred = data.test_labels[:n], (data.test_labels[:n] + 1) % 10
    fig = galleries.plot_gradcam(data.test_images[:n], heat, true, pred, data.classes, np.full(n, 0.62),
                                 true_prob=np.full(n, 0.031), alpha=0.4, title=f"Grad-CAM on the {n} mistakes")
    originals = [ax for ax in fig.axes if ax.get_label() == "image" and ax.images]
    overlays = [ax for ax in fig.axes if ax.get_label() == "overlay" and ax.images]
    assert len(originals) == len(overlays) == n
    assert originals[0].get_title() == f"true: {CLASSES[true[0]]} (3.1%)\npred: {CLASSES[pred[0]]} (62%)"
    assert [ax.get_label() for ax in fig.axes].count("colorbar") == 1
    title = fig.get_suptitle()
    assert f"the {n} mistakes" in title and "inferno" in title and "40% opacity" in title


def test_overlay_heatmap_blends_a_perceptual_colormap() -> None:
    """overlay_heatmap mixes image and colormap at opacity alpha: alpha 0 gives the image back, alpha 1 the colours
    of `cmap` (inferno unless told: black at 0, pale yellow at 1, not jet's blue and red)."""
    from matplotlib import colormaps

    image = np.full((4, 4, 3), 200, np.uint8)
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    assert np.allclose(galleries.overlay_heatmap(image, heat, alpha=0.0), 200 / 255)
    assert np.allclose(galleries.overlay_heatmap(image, heat, alpha=1.0), colormaps["inferno"](heat)[..., :3])
    magma = galleries.overlay_heatmap(image, heat, alpha=1.0, cmap="magma")
    assert np.allclose(magma, colormaps["magma"](heat)[..., :3])
    half = galleries.overlay_heatmap(image, heat, alpha=0.5)
    assert np.allclose(half, 0.5 * 200 / 255 + 0.5 * colormaps["inferno"](heat)[..., :3])


def test_top_losses_order_the_mistakes_by_the_true_class_probability() -> None:
    """top_losses gives the k mistakes whose true class is least probable (highest loss) first; ties keep the input
    order, correct images never appear, and k beyond the count gives them all."""
    probs = np.array([[0.3, 0.7], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    true = np.array([0, 0, 1, 1, 1])  # true-class probabilities 0.3, 0.2, 0.1, 0.4, 0.7 (the last one is right)
    assert top_losses(probs, true, 3).index.tolist() == [2, 1, 0]
    assert top_losses(probs, true, 10).index.tolist() == [2, 1, 0, 3]
    assert top_losses(probs, true, 0).index.tolist() == []


def test_top_losses_tiles_give_both_probabilities(small: dict) -> None:
    """With true_prob each tile reads "true: X (p%) / pred: Y (q%)", small and large probabilities kept readable."""
    data = small["data"]
    true, pred = data.test_labels[:4], (data.test_labels[:4] + 1) % 10
    fig = galleries.plot_misclassified(data.test_images[:4], true, pred, [0.995, 0.5, 0.3, 0.2], data.classes,
                                       true_prob=[0.0004, 0.012, 0.25, 0.1])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[0] == f"true: {CLASSES[true[0]]} (<0.1%)\npred: {CLASSES[pred[0]]} (>99%)"
    assert [t.split("(")[1].split(")")[0] for t in titles] == ["<0.1%", "1.2%", "25%", "10%"]


@pytest.mark.slow
def test_import_does_not_touch_pyplot() -> None:
    """Importing the plotting modules loads no pyplot (no global state, no GUI backend on servers)."""
    code = ("import sys, cifarkit.report.plots, cifarkit.report.galleries, cifarkit.report, cifarkit.report.render, "
            "cifarkit.report.gradcam; assert 'matplotlib.pyplot' not in sys.modules")
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

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.forward_features(x)
        return self.forward_head(features), {"layer3": features}


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
    """On CustomResNet the heatmaps are float [B, 32, 32] in [0, 1], not constant, for layer3 and layer2, and layer2's
    differ from layer3's; naming the predicted (argmax) classes gives the default maps exactly; the model's training
    mode is restored and no_grad around the call does not break it."""
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
    assert np.abs(heat2 - heat).max() > 0.1  # layer2's 8x8 map is not layer3's 4x4 one
    # The default explains the predicted class: naming the argmax classes gives the same maps.
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    model.train()
    np.testing.assert_array_equal(grad_cam(model, images, predicted.tolist()), heat)
    np.testing.assert_array_equal(grad_cam(model, images, predicted, layer="layer2"), heat2)
    # An explicit class may have no positive evidence at all (ReLU): then the map is all zero, never NaN.
    explicit = grad_cam(model, images, [3, 4])
    assert explicit.shape == (2, 32, 32) and np.isfinite(explicit).all() and explicit.max() <= 1
    with pytest.raises(CifarkitError, match="layer must be one of prep, layer1, layer2, layer3, got 'fc'"):
        grad_cam(model, images, layer="fc")
