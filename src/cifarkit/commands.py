"""The CLI's commands beyond `train`: the LR range test on its own, evaluation and prediction from saved weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.checkpoint import restore_weights, safe_torch_load
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES, resolve_data, subset
from cifarkit.errors import CifarkitError
from cifarkit.augment import normalize_batch
from cifarkit.loaders import build_train_batches
from cifarkit.lr_finder import LRFinderResult
from cifarkit.models import CustomResNet
from cifarkit.train import evaluate, pick_device, range_test


def lr_find_command(config: TrainConfig) -> LRFinderResult:
    """The range test on config's data; writes OUT/lr_finder.json and OUT/lr_finder.png."""
    config.validate()
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    data = subset(resolve_data(config.data), config.subset, None, seed=config.seed)
    model = CustomResNet(len(data.classes)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device)
    result = range_test(model, batches, config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "lr_finder.json")
    from cifarkit.plots import plot_lr_finder, save_figure

    save_figure(plot_lr_finder(result.lrs, result.losses, result.smoothed, lr_min=result.lr_min,
                               lr_max=result.lr_max), out / "lr_finder.png")
    return result


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """Weights and the run's config from a run folder, its model.pt, or a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    state: Any = safe_torch_load(path)
    config = None
    if isinstance(state, dict) and "model" in state and "config" in state:  # a training checkpoint
        config, state = TrainConfig.from_dict(state["config"]), state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CifarkitError(f"{path} holds no model weights (expected a state dict or a cifarkit checkpoint)")
    if config is None:
        run_config = next((p / "config.json" for p in (path.parent, path.parent.parent)
                           if (p / "config.json").is_file()), None)
        config = TrainConfig.load(run_config) if run_config else TrainConfig()
    return state, config


def load_model(path: Path, device: torch.device) -> tuple[CustomResNet, TrainConfig]:
    state, config = load_weights(path)
    fc = state.get("fc.weight")
    model = CustomResNet(int(fc.shape[0]) if fc is not None else 10)
    restore_weights(model, state, path)
    return model.to(device).eval(), config


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


def read_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 [32, 32, 3]; other sizes are resized (bilinear), as a user's photo would need."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (32, 32):
                img = img.resize((32, 32), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise CifarkitError(f"no image at {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CifarkitError(f"cannot decode {path} as an image ({type(e).__name__})") from e


def predict_command(path: Path, images: list[Path], device: str) -> list[tuple[Path, str, float]]:
    """(image, predicted class, its probability) for each image file."""
    dev = pick_device(device)
    model, config = load_model(path, dev)
    batch = torch.from_numpy(np.stack([read_image(p) for p in images])).to(dev)
    probs = model.predict_proba(normalize_batch(batch, config.mean, config.std_values))
    classes = CLASSES if model.num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(model.num_classes))
    conf, idx = probs.max(1)
    return [(p, classes[int(i)], float(c)) for p, i, c in zip(images, idx, conf)]
