"""A trained run ready to be questioned: predictions on a user's images, Grad-CAM, the test set's worst mistakes.

The app's server (`cifarkit.app.server`) is a thin layer over the `*_view` functions here, which take plain values
and return pictures (uint8 HWC arrays) and text, so tests and notebooks call them without a browser:

    >>> ex = load_explainer("runs/baseline")               # run folder, model.pt, or checkpoints/last.pt
    >>> slots, note = predict_view(ex, ["cat.jpg"], top_k=3)
    >>> slots[0].top                                       # {class: probability}, the 3 most probable first
    >>> tiles = gradcam_view(ex, ["cat.jpg"], count=4, layer="layer2", opacity=0.5)
    >>> tiles, note = misclassified_view(ex, count=10)

Grad-CAM tiles use a perceptual colormap (inferno: lightness rises with the value, so the map reads in greyscale and
to colour-blind eyes) with a colour bar from 0 (no evidence) to 1 (the image's strongest evidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from cifarkit import run as R
from cifarkit.app.uploads import read_uploads
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError
from cifarkit.inference import OpenRun, open_run
from cifarkit.report.galleries import overlay_heatmap
from cifarkit.report.gradcam import LAYERS, grad_cam
from cifarkit.report.interpret import top_losses

MAX_TOP = 10  # classes listed per image
MAX_GRADCAM = 16  # Grad-CAM images per request
MAX_MISCLASSIFIED = 50  # mistakes shown per request
CMAP = "inferno"
GRADCAM_LAYERS = ("layer3", "layer2", "layer1", "prep")  # coarse to fine, the order the app lists them in


@dataclass
class Explainer:
    """An opened run (model in eval mode, its config, normalisation and precision), its test split, and the model's
    probabilities on it."""

    run: OpenRun
    classes: tuple[str, ...]
    test_images: np.ndarray  # uint8 [M, 32, 32, 3]
    test_labels: np.ndarray  # int64 [M]
    test_probs: np.ndarray  # float32 [M, C]
    header: str  # Markdown: what run this is

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities float32 [N, C] for uint8 [N, 32, 32, 3] RGB images."""
        return self.run.predict_proba(images)

    def gradcam(self, images: np.ndarray, layer: str) -> np.ndarray:
        """Grad-CAM heatmaps float32 [N, 32, 32] in [0, 1] for the predicted class of each image."""
        return grad_cam(self.run.model, self.run.preprocess(images), layer=layer)

    def examples(self) -> list[tuple[str, np.ndarray]]:
        """(class, image): the first test image of each class, in class order."""
        return [(name, self.test_images[hits[0]]) for c, name in enumerate(self.classes)
                if len(hits := np.flatnonzero(self.test_labels == c))]


def describe_run(weights: Path, config: TrainConfig, test_source: str, test_accuracy: float, n_test: int) -> str:
    """The app's header: the run, its recorded accuracy and epochs, and the data it was trained on."""
    metrics: dict[str, Any] = {}
    if (metrics_file := R.run_file(weights, R.METRICS)) is not None:
        try:
            metrics = R.read_metrics(metrics_file.parent)
        except CifarkitError:  # unreadable or damaged: the header says so rather than the app not starting
            pass
    accuracy = metrics.get("final_test_accuracy")
    recorded = (f"test accuracy **{100 * accuracy:.2f}%**" if accuracy is not None else
                f"no readable {R.METRICS}")
    epochs = metrics.get("epochs_completed", config.epochs)
    fingerprint = getattr(config, "data_fingerprint", None) or metrics.get("data_fingerprint")
    data = (f"data fingerprint `{fingerprint}`" if fingerprint else
            f"data: {metrics.get('dataset') or config.data or 'CIFAR-10 (default source)'}")
    scope = ""
    if config.test_subset is not None and accuracy is not None:  # evaluate tests on the whole set: say which is which
        scope = (f" The recorded accuracy is on the run's test subset ({metrics.get('test_images', config.test_subset)}"
                 " images, config `test_subset`), as are the images here; `cifarkit evaluate` tests on the whole "
                 "test set.")
    return (f"### Run `{weights}`\n{recorded} · {epochs} epoch{'s' * (epochs != 1)} · {data}\n\n"
            f"Test images here: {n_test} from {test_source}; the model gets {100 * test_accuracy:.2f}% of them right."
            + scope)


def load_explainer(weights: str | Path, *, data: str | None = None, device: str = "auto") -> Explainer:
    """The model from a run folder or weights file and the run's test split (from `data`, else the run's own
    source; never downloaded), scored once here. Raises CifarkitError for a missing run or data."""
    run = open_run(weights, data=data, device=device)
    dataset = run.test_data()
    probs = run.predict_proba(dataset.test_images)
    accuracy = float((probs.argmax(1) == dataset.test_labels).mean()) if len(dataset.test_labels) else 0
    header = describe_run(Path(weights), run.config, dataset.source or str(data or run.config.data), accuracy,
                          len(dataset.test_labels))
    return Explainer(run, tuple(dataset.classes), dataset.test_images, dataset.test_labels, probs, header)


# --------------------------------------------------------------------------------------------------- pictures

def explain_tile(image: np.ndarray, title: str, heatmap: np.ndarray | None = None, *, opacity: float = 0.5,
                 cmap: str = CMAP) -> Figure:
    """One uint8 HWC image under a title; with a heatmap, overlaid at `opacity` and with a 0-1 colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = Figure(figsize=(2.4 if heatmap is None else 2.9, 2.9), dpi=100)
    ax = fig.add_axes((0.06, 0.14, 0.88 if heatmap is None else 0.68, 0.64))  # room below for the app's caption
    shown = image if heatmap is None else overlay_heatmap(image, heatmap, alpha=opacity, cmap=cmap)
    ax.imshow(shown, interpolation="bilinear" if heatmap is not None else "nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if heatmap is not None:
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=fig.add_axes((0.78, 0.14, 0.05, 0.64)),
                           ticks=[0, 0.5, 1])
        bar.ax.tick_params(labelsize=7)
        bar.set_label("Grad-CAM", fontsize=7)
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure drawn as uint8 RGB [H, W, 3] (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def enlarge(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """A 32x32 image shown 4x with square pixels, as the model sees it."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


# ------------------------------------------------------------------------------------------------------ views

@dataclass
class PredictSlot:
    """One readable upload: its file name, what the model sees (enlarged), and the top classes with probabilities."""

    name: str
    image: np.ndarray
    top: dict[str, float]


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> dict[str, float]:
    """The k most probable classes (k clamped to 1..min(10, C)) as {class: probability}, most probable first."""
    k = max(1, min(int(k), MAX_TOP, len(classes)))
    return {classes[i]: float(probs[i]) for i in np.argsort(-probs, kind="stable")[:k]}


def predict_view(ex: Explainer, files: Sequence[str] | None, top_k: int) -> tuple[list[PredictSlot], str]:
    """A slot per readable upload, and a Markdown note listing each refused file (empty when none)."""
    uploads = read_uploads(files or [])
    probs = ex.predict(uploads.images)
    slots = [PredictSlot(name, enlarge(image), top_classes(p, ex.classes, top_k))
             for name, image, p in zip(uploads.names, uploads.images, probs)]
    note = "\n".join(f"- **Not read:** {p}" for p in uploads.problems)
    return slots, note


def gradcam_view(ex: Explainer, files: Sequence[str] | None, count: int, layer: str,
                 opacity: float) -> list[tuple[np.ndarray, str]]:
    """(tile, caption) for `count` images (at most 16): the readable uploads first, then test images in order."""
    if layer not in GRADCAM_LAYERS or layer not in LAYERS:
        raise CifarkitError(f"layer must be one of {', '.join(GRADCAM_LAYERS)}, got {layer!r}")
    count = max(0, min(int(count), MAX_GRADCAM))
    uploads = read_uploads(files or [])
    n_up = min(len(uploads.names), count)
    images = np.concatenate([uploads.images[:n_up], ex.test_images[:count - n_up]])
    sources = [f"upload {name}" for name in uploads.names[:n_up]] + [
        f"test #{i} ({ex.classes[ex.test_labels[i]]})" for i in range(len(images) - n_up)]
    probs = ex.predict(images)
    heat = ex.gradcam(images, layer) if len(images) else np.zeros((0, 32, 32), np.float32)
    tiles = []
    for image, source, p, h in zip(images, sources, probs, heat):
        pred = int(p.argmax())
        caption = f"{source}: Grad-CAM at {layer}, opacity {opacity:.2f}, for {ex.classes[pred]} ({100 * p[pred]:.0f}%)"
        title = f"{source}\npred: {ex.classes[pred]} {100 * p[pred]:.0f}% · {layer}"
        tiles.append((figure_pixels(explain_tile(image, title, h, opacity=opacity)), caption))
    return tiles


def misclassified_view(ex: Explainer, count: int, *, gradcam: bool = False, layer: str = "layer3",
                       opacity: float = 0.5) -> tuple[list[tuple[np.ndarray, str]], str]:
    """(tile, caption) for the `count` (at most 50) test mistakes with the highest loss, and a one-line summary."""
    worst = top_losses(ex.test_probs, ex.test_labels, max(0, min(int(count), MAX_MISCLASSIFIED)))
    images = ex.test_images[worst.index]
    heat = ex.gradcam(images, layer) if gradcam and len(images) else [None] * len(images)
    tiles = []
    for i, image, h, pred, p_true, p_pred in zip(worst.index, images, heat, worst.pred, worst.p_true, worst.p_pred):
        true = ex.classes[ex.test_labels[i]]
        caption = f"test #{i}: true {true} ({100 * p_true:.1f}%), predicted {ex.classes[pred]} ({100 * p_pred:.1f}%)"
        title = f"true: {true} {100 * p_true:.0f}%\npred: {ex.classes[pred]} {100 * p_pred:.0f}%"
        tiles.append((figure_pixels(explain_tile(image, title, h, opacity=opacity)), caption))
    wrong = int((ex.test_probs.argmax(1) != ex.test_labels).sum())
    summary = (f"{len(tiles)} of the {wrong} misclassified test images (of {len(ex.test_labels)}), highest loss "
               f"first; at most {MAX_MISCLASSIFIED} per request.")
    return tiles, summary
