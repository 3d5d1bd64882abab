"""A trained model at work: the model file that describes itself, the one preprocessing step, probabilities, and
`open_run`, the one handle on a trained run that evaluate, report, predict, the app and export all use.

    run = open_run("runs/a")                       # a run folder, model.pt, checkpoints/last.pt, or model.pt alone
    run.model, run.config, run.weights, run.device, run.precision
    probs = run.predict_proba(images_uint8_nhwc)   # float32 [N, classes]
    test = run.test_data()                         # the data the run recorded, checked by its fingerprint

`model.pt` is a dict of named fields (MODEL_FORMAT): the weights, the run's config, its class names, the mean and
std it was normalised with and the data's fingerprint, so a copy of model.pt alone predicts exactly as inside its
run. A bare state dict from an older run still loads, with one line saying what is assumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cifarkit import run as R
from cifarkit.checkpoint import atomic_torch_save, restore_weights, safe_torch_load
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES, Cifar10, normalization, subset
from cifarkit.data.augment import affine, normalize_affine, normalize_batch
from cifarkit.data.sources import data_of_run
from cifarkit.device import autocast, pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.models import CustomResNet, build_model, eval_mode, is_channels_last

MODEL_FORMAT = "cifarkit-model-v1"


# ------------------------------------------------------------------------------------------------ preprocessing

def preprocess(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
               device: torch.device | str | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (numpy or torch, RGB) -> normalised float32 [N, 3, H, W] on `device`: what every
    inference path feeds the model (evaluate, predict, Grad-CAM, the app, export's graph)."""
    batch = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if device is not None:
        batch = batch.to(device)
    return normalize_batch(batch, mean, std, channels_last=channels_last)


class Preprocess(nn.Module):
    """`preprocess` as a module, its scale and shift held as buffers: the same step inside a traced or exported
    graph (cifarkit.export), where constants made during the first call would differ from later calls."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        scale, shift = affine(mean, std)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_affine(images, self.scale, self.shift)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
                  precision: str = "fp32", batch_size: int = 1024) -> np.ndarray:
    """Softmax probabilities float32 [N, classes] of `model` (eval mode, forward under `precision`) on uint8 NHWC
    images, preprocessed as at test time, in batches of `batch_size`."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], mean, std, device=device,
                           channels_last=is_channels_last(model))
            with autocast(precision, device):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    classes = int(getattr(model, "num_classes", 0))
    return torch.cat(out).numpy() if out else np.zeros((0, classes), np.float32)


# --------------------------------------------------------------------------------------------- the model file

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
    n = int(fc.shape[0]) if fc is not None else len(CLASSES)
    return CLASSES if n == len(CLASSES) else tuple(f"class{i}" for i in range(n))


def load_model_file(path: Path, device: torch.device) -> tuple[CustomResNet, ModelFile]:
    """The network of a weights file, in eval mode on `device`, and what the file says about it."""
    found = read_model_file(path)
    model = build_model(len(found.classes))
    restore_weights(model, found.weights, path)
    return model.to(device).eval(), found


# -------------------------------------------------------------------------------------------------- open_run

@dataclass
class OpenRun:
    """A trained run, opened once: the model and everything needed to use it as its run did."""

    model: CustomResNet  # eval mode, on `device`
    config: TrainConfig
    weights: Path  # the file the weights came from
    run_dir: Path | None  # the run folder, None for a model file on its own
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    precision: str  # resolved: bf16, fp16 or fp32
    data_source: str | None = None  # --data, else the data the run recorded
    assumed: str = ""  # for an older model file (a bare state dict): what was assumed, one line to say
    _data: Cifar10 | None = field(default=None, repr=False)

    def notes(self) -> list[str]:
        """What a command says about the weights it uses, once its checks have passed."""
        return [R.weights_note(self.weights), *([self.assumed] if self.assumed else [])]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, classes] for uint8 [N, 32, 32, 3] RGB images."""
        if not len(images):
            return np.zeros((0, len(self.classes)), np.float32)
        return predict_proba(self.model, images, self.mean, self.std, precision=self.precision,
                             batch_size=self.config.eval_batch_size)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return preprocess(images, self.mean, self.std, device=self.device, channels_last=is_channels_last(self.model))

    def recorded_data(self) -> Cifar10:
        """The whole data set: `data_source` when given, else what the run recorded, checked by fingerprint."""
        if self._data is None:
            self._data = data_of_run(self.config.data, self.config.data_fingerprint, self.data_source,
                                     owner=f"the run of {self.weights}")
            if len(self._data.classes) != len(self.classes):
                raise CifarkitError(f"the data has {len(self._data.classes)} classes and the model "
                                    f"{len(self.classes)}: give the run's own data with --data")
        return self._data

    def test_data(self, test_subset: int | None | str = "run") -> Cifar10:
        """The test split: the run's own test subset ("run"), a class-balanced `test_subset`, or all (None)."""
        size = self.config.test_subset if test_subset == "run" else test_subset
        return subset(self.recorded_data(), None, size, seed=self.config.seed)  # type: ignore[arg-type]


def open_run(path: str | os.PathLike[str], *, data: str | None = None, device: str | torch.device = "auto",
             precision: str = "auto") -> OpenRun:
    """Open a run folder, its model.pt or checkpoints/last.pt, or a model file on its own: device, precision, weights
    and model, each checked in that order with one CifarkitError line. The data loads when first asked for. For an
    older model file (a bare state dict) `assumed` says what was assumed; commands say it with `notes()`.

        run = open_run("runs/a", device="cpu")
        run.predict_proba(run.test_data().test_images).argmax(1)
    """
    dev = pick_device(device) if isinstance(device, str) else device
    resolved = resolve_precision(precision, dev)
    weights = R.find_weights(path)
    model, found = load_model_file(weights, dev)
    return OpenRun(model, found.config, weights, R.run_of(weights), found.classes, found.mean, found.std, dev,
                   resolved, data, assumed=found.assumed)
