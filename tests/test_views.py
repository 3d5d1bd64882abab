"""The app's logic without a browser: the run's header, top-k predictions, Grad-CAM tiles, the worst mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.app.views import (MAX_MISCLASSIFIED, MAX_TOP, Explainer, describe_run, gradcam_view, load_explainer,
                                misclassified_view, predict_view, top_classes)
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError
from cifarkit.report.gradcam import LAYERS, grad_cam
from cifarkit.report.interpret import top_losses
from cifarkit.models import CustomResNet


@pytest.fixture(scope="module")
def explainer(tiny_run: Path) -> Explainer:
    return load_explainer(tiny_run, device="cpu")


def test_header_names_the_run_its_accuracy_epochs_and_data(explainer: Explainer, tiny_run: Path) -> None:
    """The header shows metrics.json's accuracy, the epochs, and that the data is synthetic."""
    accuracy = json.loads((tiny_run / "metrics.json").read_text())["final_test_accuracy"]
    assert f"test accuracy **{100 * accuracy:.2f}%**" in explainer.header
    assert "1 epoch ·" in explainer.header and "NOT CIFAR-10" in explainer.header
    assert explainer.test_images.shape == (100, 32, 32, 3) and explainer.test_probs.shape == (100, 10)


def test_header_prefers_a_data_fingerprint_and_survives_a_damaged_metrics_file(tmp_path: Path) -> None:
    """A fingerprint in metrics.json is shown instead of the source; a damaged metrics.json gives a header anyway."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"final_test_accuracy": 0.5, "epochs_completed": 24,
                                                  "dataset": "CIFAR-10", "data_fingerprint": "sha256:0123abcd"}))
    header = describe_run(run, TrainConfig(), "here", 0.5, 10)
    assert "test accuracy **50.00%** · 24 epochs · data fingerprint `sha256:0123abcd`" in header
    (run / "metrics.json").write_text("{not json")
    assert "no readable metrics.json · 24 epochs · data: CIFAR-10 (default source)" in describe_run(
        run, TrainConfig(), "here", 0.5, 10)


def test_weights_file_and_checkpoint_find_the_same_run(tiny_run: Path, explainer: Explainer) -> None:
    """RUN/model.pt and RUN/checkpoints/last.pt load the same test probabilities and read the run's metrics."""
    for weights in (tiny_run / "model.pt", tiny_run / "checkpoints" / "last.pt"):
        other = load_explainer(weights, device="cpu")
        np.testing.assert_allclose(other.test_probs, explainer.test_probs, atol=1e-6)
        assert "test accuracy **" in other.header


def test_predict_view_gives_top_k_classes_most_probable_first(explainer: Explainer, tmp_path: Path) -> None:
    """k classes with their probabilities in falling order; k above 10 is clamped to 10; a text file is a note."""
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (300, 200), "orange").save(photo)
    (tmp_path / "a.txt").write_text("x")
    slots, note = predict_view(explainer, [str(photo), str(tmp_path / "a.txt")], top_k=3)
    assert [s.name for s in slots] == ["photo.jpg"] and slots[0].image.shape == (128, 128, 3)
    probs = list(slots[0].top.values())
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and set(slots[0].top) <= set(explainer.classes)
    assert note.startswith("- **Not read:** a.txt: not an image")
    assert len(predict_view(explainer, [str(photo)], top_k=99)[0][0].top) == MAX_TOP
    assert predict_view(explainer, None, top_k=3) == ([], "")


def test_top_classes_sum_to_one_over_all_classes() -> None:
    """With k = C every class is listed once and the probabilities are returned unchanged."""
    probs = np.array([0.1, 0.6, 0.3])
    assert top_classes(probs, ("a", "b", "c"), 10) == {"b": 0.6, "c": 0.3, "a": 0.1}
    assert top_classes(probs, ("a", "b", "c"), 0) == {"b": 0.6}


def grad_cam_by_hand(model: CustomResNet, images: torch.Tensor, layer: str) -> np.ndarray:
    """Grad-CAM for the predicted class written out here with hooks on the plain forward pass: A = the stage's
    output, alpha_k = the spatial mean of d(score)/dA_k, ReLU(sum_k alpha_k A_k), upsampled bilinearly (half-pixel
    centres) to 32x32 and scaled to [0, 1] per image as (cam - min) / (max - min)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.register_hook(lambda grad: seen.__setitem__("grad", grad))
        seen["activation"] = output

    handle = getattr(model, layer).register_forward_hook(keep)
    try:
        logits = model.eval()(images.clone().requires_grad_(True))
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    activation, grad = seen["activation"].detach().double(), seen["grad"].double()
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].numpy()
    low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low)


@pytest.mark.parametrize("layer", LAYERS)
def test_grad_cam_at_every_layer_is_the_maps_definition(layer: str) -> None:
    """Each offered layer, including prep and layer1, gives [B, 32, 32] float32 heatmaps in [0, 1] equal to Grad-CAM
    worked out here with hooks on that stage (see grad_cam_by_hand), for the predicted class."""
    torch.manual_seed(0)
    model = CustomResNet().eval()
    images = torch.randn(2, 3, 32, 32)
    heat = grad_cam(model, images, layer=layer)
    expected = grad_cam_by_hand(model, images, layer)
    assert heat.shape == (2, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    assert all(np.ptp(h) > 0.5 for h in expected), "a flat map would not tell one definition from another"
    np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_gradcam_view_puts_uploads_first_and_opacity_changes_the_picture(explainer: Explainer,
                                                                         tmp_path: Path) -> None:
    """count tiles: the upload, then test images 0, 1, ...; captions name layer and opacity; a different opacity
    draws a different overlay."""
    photo = tmp_path / "p.png"
    Image.fromarray(explainer.test_images[5]).save(photo)
    tiles = gradcam_view(explainer, [str(photo)], count=3, layer="layer2", opacity=0.3)
    captions = [c for _, c in tiles]
    assert captions[0].startswith("upload p.png: Grad-CAM at layer2, opacity 0.30")
    assert captions[1].startswith("test #0 (") and captions[2].startswith("test #1 (")
    assert all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t, _ in tiles)
    other = gradcam_view(explainer, [str(photo)], count=1, layer="layer2", opacity=0.9)
    assert not np.array_equal(tiles[0][0], other[0][0])
    with pytest.raises(CifarkitError, match="layer must be one of"):
        gradcam_view(explainer, None, count=1, layer="fc", opacity=0.5)


def test_misclassified_view_lists_the_highest_losses_with_both_probabilities(explainer: Explainer) -> None:
    """The tiles follow top_losses' order; each caption gives the true and predicted class with probabilities;
    asking for more than 50 gives at most 50."""
    worst = top_losses(explainer.test_probs, explainer.test_labels, 5)
    tiles, summary = misclassified_view(explainer, 5, gradcam=True, layer="prep", opacity=0.4)
    assert len(tiles) == len(worst) == 5
    for (_, caption), i, pred in zip(tiles, worst.index, worst.pred):
        true = explainer.classes[explainer.test_labels[i]]
        assert caption.startswith(f"test #{i}: true {true} (") and f"predicted {explainer.classes[pred]} (" in caption
    wrong = int((explainer.test_probs.argmax(1) != explainer.test_labels).sum())
    assert summary.startswith(f"5 of the {wrong} misclassified test images (of 100)")
    many, _ = misclassified_view(explainer, 10_000)
    assert len(many) == min(MAX_MISCLASSIFIED, wrong)


def test_examples_are_one_test_image_per_class(explainer: Explainer) -> None:
    """Ten (class, image) pairs, in class order, each image a test image of that class."""
    examples = explainer.examples()
    assert [name for name, _ in examples] == list(explainer.classes)
    for c, (_, image) in enumerate(examples):
        first = np.flatnonzero(explainer.test_labels == c)[0]
        np.testing.assert_array_equal(image, explainer.test_images[first])


def test_default_data_is_never_downloaded(tiny_run: Path, tmp_path: Path, cifar_cache: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that records no data path, with no --data, is refused in one line naming what to pass; nothing is
    downloaded, whatever $CIFARKIT_DATA or the cache hold."""
    import shutil

    import cifarkit.data.sources as sources

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"data": None, "data_fingerprint": None}))
    fields = torch.load(run / "model.pt", weights_only=True)  # model.pt records its config too
    torch.save(fields | {"config": config | {"data": None, "data_fingerprint": None}}, run / "model.pt")
    monkeypatch.setenv("CIFARKIT_DATA", "synthetic")
    monkeypatch.setattr(sources, "download_cifar10", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(CifarkitError, match="records no data path.*pass data="):
        load_explainer(run, device="cpu")
