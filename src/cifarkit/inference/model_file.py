"""model.pt, a model file that describes itself: a dict of named fields (MODEL_FORMAT): the weights, the run's config,
its class names, the mean and std it was normalised with and the data's fingerprint, so a copy of model.pt alone
predicts exactly as inside its run. A bare state dict from an older run still loads, with one line saying what is
assumed; a training checkpoint (checkpoints/last.pt) loads too.

    save_model(run / MODEL, model, config, data.classes)
    model, found = load_model_file(path, device)    # found.config, .classes, .mean, .std, .assumed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cifarkit import run as R
from cifarkit.checkpoint import atomic_torch_save, restore_weights, safe_torch_load
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES, class_names, normalization
from cifarkit.errors import CifarkitError
from cifarkit.models import CustomResNet, build_model

MODEL_FORMAT = "cifarkit-model-v1"


def model_file(model: nn.Module, config: TrainConfig, classes: Sequence[str]) -> dict[str, Any]:
    """What model.pt holds: named fields, each plain data, so it loads with torch.load(weights_only=True)."""
    mean, std = normalization(config.std)
    return {"format": MODEL_FORMAT, "weights": model.state_dict(), "config": config.to_dict(),
            "classes": list(classes), "mean": list(mean), "std": list(std),
            "data_fingerprint": config.data_fingerprint}


def save_model(path: Path, model: nn.Module, config: TrainConfig, classes: Sequence[str]) -> None:
    atomic_torch_save(model_file(model, config, classes), path)


@dataclass
class ModelFile:
    """What a weights file gives: the weights, the config, class names and normalisation to use with them."""

    weights: dict[str, torch.Tensor]
    config: TrainConfig
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    assumed: str = ""  # for a bare state dict: what was assumed, said in one line


def read_model_file(path: Path) -> ModelFile:
    """A model.pt (named fields, or an older bare state dict) or a training checkpoint (checkpoints/last.pt)."""
    path = Path(path)
    R.check_torch_file(path)
    state: Any = safe_torch_load(path)
    if isinstance(state, dict) and state.get("format") == MODEL_FORMAT:
        return ModelFile(_tensors(state["weights"], path), _config(state["config"], path), tuple(state["classes"]),
                         tuple(state["mean"]), tuple(state["std"]))
    if isinstance(state, dict) and "model" in state and "config" in state:  # a training checkpoint
        weights, config = _tensors(state["model"], path), _config(state["config"], path)
        return ModelFile(weights, config, _classes(weights), *normalization(config.std))
    weights = _tensors(state, path)
    run = R.run_of(path)
    if run is not None:
        config = R.read_config(run)
        assumed = f"{path} is a bare state dict (an older model file): its settings are taken from {run / R.CONFIG}"
    else:
        config = TrainConfig()
        assumed = (f"{path} is a bare state dict without its run's {R.CONFIG}: assuming the defaults (std "
                   f"{config.std!r}, class names in CIFAR-10's order); a model trained otherwise predicts wrongly")
    return ModelFile(weights, config, _classes(weights), *normalization(config.std), assumed=assumed)


def _tensors(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CifarkitError(f"{path} holds no model weights (expected a cifarkit {R.MODEL} or checkpoint)")
    return state


def _config(values: Any, path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, AttributeError) as e:
        raise CifarkitError(f"{path} holds a damaged config ({e})") from e


def _classes(weights: dict[str, torch.Tensor]) -> tuple[str, ...]:
    fc = weights.get("fc.weight")
    return class_names(int(fc.shape[0]) if fc is not None else len(CLASSES))


def load_model_file(path: Path, device: torch.device) -> tuple[CustomResNet, ModelFile]:
    """The network of a weights file, in eval mode on `device`, and what the file says about it."""
    found = read_model_file(path)
    model = build_model(len(found.classes))
    restore_weights(model, found.weights, path)
    return model.to(device).eval(), found
