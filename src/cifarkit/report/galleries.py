"""The run's image grids as matplotlib Figures: training samples, misclassified test images, Grad-CAM overlays.

Drawn without pyplot, so importing or calling this module changes no global state (safe on headless servers). A grid
needs a figure of its own: every function takes an optional `fig` to draw into (cleared first) and returns the Figure;
`cifarkit.report.plots.save_figure` writes it as PNG. The curves and the confusion matrix live in `cifarkit.report.plots`.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _tile_grid(fig: Figure | None, rows: int, cols: int, title: str, *, tile: float, title_h: float = 0.0,
               left: float = 0.1, top: float = 0.55, gap: float = 0.08, right: float = 0.12, group: int = 1,
               group_gap: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A rows x cols grid of square image tiles (inches), with fixed margins: a constrained layout of dozens of
    image axes costs seconds and gains nothing when every tile has the same size. title_h: room for tile titles;
    every `group` columns, `group_gap` more space, so that tiles that belong together (original | overlay) pair up."""
    bottom = 0.12
    width = left + cols * tile + (cols - 1) * gap + (cols - 1) // group * group_gap + right
    # Wrap the title to the figure (a 13-pt character is ~0.1 inch wide) and make room for each extra line.
    lines = [wrapped for line in title.split("\n") for wrapped in textwrap.wrap(line, max(20, int(width / 0.1)))]
    title, top = "\n".join(lines), top + 0.25 * (len(lines) - 1)
    height = top + rows * (tile + title_h) + (rows - 1) * gap + bottom
    if fig is None:
        fig = Figure(figsize=(width, height))
    else:
        fig.clear()
        fig.set_layout_engine(None)
        fig.set_size_inches(width, height)
    axes = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        y = height - top - title_h - r * (tile + title_h + gap) - tile
        for c in range(cols):
            x = left + c * (tile + gap) + c // group * group_gap
            axes[r, c] = fig.add_axes((x / width, y / height, tile / width, tile / height))
    fig.suptitle(title, fontsize=13, y=1 - 0.12 / height, va="top")
    return fig, axes


def _image_axes(ax: Axes) -> None:
    """An image panel: no ticks, no frame, but the y label (the class name) stays visible."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _empty_grid(fig: Figure | None, title: str, note: str, *, title_size: int) -> Figure:
    """What a grid with nothing to show draws instead: `note` in the middle of a small figure, under `title`."""
    if fig is None:
        fig = Figure(figsize=(7, 3), layout="constrained")
    else:
        fig.clear()
        fig.set_size_inches(7, 3)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=13, wrap=True, transform=ax.transAxes)
    fig.suptitle(title, fontsize=title_size)
    return fig


def _item_tiles(fig: Figure | None, n: int, per_row: int, title: str, *, per_item: int = 1,
                empty: str, empty_title_size: int, right: float = 0.12) -> tuple[Figure, np.ndarray]:
    """A grid for `n` items of `per_item` titled 1.9-inch tiles each, at most `per_row` items to a row.

    Returns the figure and the items' tiles [n, per_item], cleared of ticks; the spare tiles of the last row are
    blanked. With no items: the `empty` note (see _empty_grid) and no tiles.
    """
    if n == 0:
        return _empty_grid(fig, title, empty, title_size=empty_title_size), np.empty((0, per_item), dtype=object)
    per_row = max(1, min(per_row, n))
    fig, axes = _tile_grid(fig, -(-n // per_row), per_row * per_item, title, tile=1.9, title_h=0.42, right=right,
                           group=per_item, group_gap=0.35 if per_item > 1 else 0.0)
    tiles = axes.reshape(-1, per_item)
    for ax in tiles.ravel():
        _image_axes(ax)
    for ax in tiles[n:].ravel():
        ax.axis("off")
    return fig, tiles[:n]


def _pct(p: float) -> str:
    """A probability as a short percentage that never reads as certain when it is not: 87%, 3.2%, <0.1%, >99%."""
    if p > 0.99:
        return ">99%"
    return f"{100 * p:.0f}%" if p >= 0.095 else f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%"


def _labelled_image(ax: Axes, image: np.ndarray, classes: Sequence[str], true: int, pred: int,
                    confidence: float | None, true_prob: float | None = None) -> None:
    """A test image titled "true: cat / pred: dog (87%)", or with true_prob "true: cat (3.1%) / pred: dog (87%)";
    in red when the prediction is wrong."""
    conf = f" ({_pct(confidence)})" if confidence is not None else ""
    truth = f" ({_pct(true_prob)})" if true_prob is not None else ""
    ax.imshow(image, interpolation="nearest")
    ax.set_title(f"true: {classes[true]}{truth}\npred: {classes[pred]}{conf}", fontsize=9,
                 color="tab:red" if true != pred else "black")


def plot_samples(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    augmented: np.ndarray | None = None,
    *,
    per_class: int = 3,
    fig: Figure | None = None,
) -> Figure:
    """A grid with one row per class (named): `per_class` training images, each beside its augmented view(s).

    images: uint8 [N, 32, 32, 3]; labels: [N]; augmented: None, uint8 [N, 32, 32, 3] (one view of each image)
    or [N, V, 32, 32, 3] (V views), already de-normalised.
    """
    labels = np.asarray(labels)
    if augmented is not None:
        augmented = np.asarray(augmented)
        if augmented.ndim == 4:
            augmented = augmented[:, None]
    views = 0 if augmented is None else augmented.shape[1]
    cols = per_class * (1 + views)
    rows = len(classes)
    title = "Training images per class" + (", each beside its augmented view" if views else "")
    fig, axes = _tile_grid(fig, rows, cols, title, tile=1.0, left=1.25, top=0.75 if views else 0.5,
                           group=1 + views, group_gap=0.2 if views else 0.0)
    for row, name in enumerate(classes):
        picks = np.flatnonzero(labels == row)[:per_class]
        for k in range(per_class):
            for v in range(1 + views):
                ax = axes[row, k * (1 + views) + v]
                _image_axes(ax)
                if k < len(picks):
                    i = picks[k]
                    ax.imshow(images[i] if v == 0 else augmented[i, v - 1], interpolation="nearest")
                if row == 0 and views:
                    ax.set_title("original" if v == 0 else "augmented", fontsize=9)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
    return fig


def plot_misclassified(
    images: np.ndarray,
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float] | None,
    classes: Sequence[str],
    *,
    true_prob: Sequence[float] | None = None,
    ncols: int = 5,
    title: str = "Misclassified test images",
    fig: Figure | None = None,
) -> Figure:
    """A grid of test images (uint8 HWC), each titled "true: cat / pred: dog (87%)" (the predicted class's prob),
    or with `true_prob` "true: cat (3.1%) / pred: dog (87%)". In `interpret.top_losses` order it is fastai's top losses:

        shown = top_losses(probs, true, 20).index
        plot_misclassified(images[shown], true[shown], pred[shown], probs[shown].max(1), classes,
                           true_prob=probs[shown, true[shown]])
    """
    fig, tiles = _item_tiles(fig, len(images), ncols, title, empty="No misclassified test images.",
                             empty_title_size=13)
    for i, (ax,) in enumerate(tiles):
        _labelled_image(ax, images[i], classes, int(true[i]), int(pred[i]),
                        None if confidence is None else float(confidence[i]),
                        None if true_prob is None else float(true_prob[i]))
    return fig


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
                    cmap: str = "inferno") -> np.ndarray:
    """Blend a [0,1] heatmap, coloured by `cmap`, over a uint8 HWC image at opacity `alpha`; returns float RGB in
    [0,1]. The default, inferno, is perceptually uniform: brightness alone orders the values, also in grey print."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image.astype(float) / 255 + alpha * colours, 0, 1)


def plot_gradcam(
    images: np.ndarray,
    heatmaps: np.ndarray,
    true: Sequence[int],
    pred: Sequence[int],
    classes: Sequence[str],
    confidence: Sequence[float] | None = None,
    *,
    true_prob: Sequence[float] | None = None,
    alpha: float = 0.45,
    cmap: str = "inferno",
    pairs_per_row: int = 4,
    title: str = "Grad-CAM on misclassified test images",
    fig: Figure | None = None,
) -> Figure:
    """Pairs original | Grad-CAM overlay (the heatmap over the image at opacity `alpha`), with a colour bar.

    The original is titled with the true and predicted class (see `plot_misclassified`), the overlay with the class
    it explains; a second title line states the colormap and the opacity.
    """
    n = len(images)
    note = (f"{title}\nheatmap ({cmap}) over the image at {100 * alpha:.0f}% opacity; bright: evidence for the "
            "predicted class")
    fig, tiles = _item_tiles(fig, n, pairs_per_row, note if n else title, per_item=2, empty="No images to explain.",
                             empty_title_size=12, right=1.0)
    for i, (left, right) in enumerate(tiles):
        _labelled_image(left, images[i], classes, int(true[i]), int(pred[i]),
                        None if confidence is None else float(confidence[i]),
                        None if true_prob is None else float(true_prob[i]))
        left.set_label("image")
        right.imshow(overlay_heatmap(images[i], heatmaps[i], alpha=alpha, cmap=cmap), interpolation="bilinear")
        right.set_title(f"Grad-CAM for\n'{classes[int(pred[i])]}'", fontsize=9)
        right.set_label("overlay")
    if n:
        _colour_bar(fig, tiles, cmap)
    return fig


def _colour_bar(fig: Figure, tiles: np.ndarray, cmap: str) -> None:
    """A colour bar for the heatmap scale, right of the tiles and as tall as the grid."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    boxes = [ax.get_position() for ax in tiles.ravel()]
    x1, y0, y1 = max(b.x1 for b in boxes), min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width = fig.get_size_inches()[0]
    cax = fig.add_axes((x1 + 0.25 / width, y0, 0.18 / width, y1 - y0), label="colorbar")
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax, ticks=[0, 0.5, 1])
    bar.set_label("Grad-CAM", fontsize=9)
    bar.ax.tick_params(labelsize=9)
