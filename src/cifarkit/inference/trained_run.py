"""A trained run, opened once (`open_run`): the one handle that evaluate, report, predict, the app and export use,
and the public `load_model` and `predict` on it.

    run = open_run("runs/a")                       # a run folder, model.pt, checkpoints/last.pt, or model.pt alone
    run.model, run.config, run.weights, run.device, run.precision
    probs = run.predict_proba(images_uint8_nhwc)   # float32 [N, classes]
    test = run.test_data()                         # the data the run recorded, checked by its fingerprint

    import cifarkit
    model, config = cifarkit.load_model("runs/a")          # a run folder, its model.pt or checkpoints/last.pt
    cifarkit.predict("runs/a", ["cat.png"], top_k=3)       # per image: [(class, probability), ...], best first
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from cifarkit import run as R
from cifarkit.config import TrainConfig
from cifarkit.console import say
from cifarkit.data import CLASSES, Cifar10, class_names, normalization, subset
from cifarkit.data.sources import data_of_run
from cifarkit.device import pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.inference.model_file import load_model_file
from cifarkit.inference.preprocess import as_images, predict_proba, preprocess
from cifarkit.models import CustomResNet, is_channels_last


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


class LoadedModel(NamedTuple):
    """What `load_model` returns; unpacks as `model, config = load_model(run)`."""

    model: CustomResNet  # in eval mode, on the device asked for
    config: TrainConfig  # the run's config (from model.pt itself, or its run's config.json for an older file)


def load_model(run_or_path: str | os.PathLike[str], device: str | torch.device = "auto") -> LoadedModel:
    """The trained network, in eval mode on `device`, and its run's config.

        model, config = load_model("runs/a")                 # model.pt, else checkpoints/last.pt
        model, config = load_model("runs/a/model.pt", device="cpu")
    """
    opened = open_run(run_or_path, device=device)
    if opened.assumed:
        say(opened.assumed)
    return LoadedModel(opened.model, opened.config)


def predict(model_or_run: nn.Module | LoadedModel | OpenRun | str | os.PathLike[str], images: Any, *,
            top_k: int = 1, classes: Sequence[str] | None = None, std: str | None = None, device: str = "auto",
            precision: str = "auto") -> list[list[tuple[str, float]]]:
    """Per image, its `top_k` classes with their probabilities, most likely first.

        predict("runs/a", "cat.png")                        # [[("cat", 0.91)]]
        predict(model, batch_nhwc_uint8, top_k=3)          # a model from load_model, an N x H x W x 3 array

    `model_or_run`: a run folder or weights file (opened on `device` in `precision`), what open_run or load_model
    return, or a bare model. `images`: paths, PIL images or uint8 arrays (HxWx3, or one NxHxWx3), resized to 32x32
    when they are not. `std`: the normalisation of training (TrainConfig.std); None: the run's own, or "true" for
    a bare model.
    """
    if isinstance(model_or_run, (str, os.PathLike)):
        model_or_run = open_run(model_or_run, device=device, precision=precision)
        if model_or_run.assumed:
            say(model_or_run.assumed)
    if not isinstance(model_or_run, OpenRun):
        model, config = model_or_run if isinstance(model_or_run, LoadedModel) else (model_or_run, TrainConfig())
        dev = next(model.parameters()).device
        names = class_names(int(getattr(model, "num_classes", len(CLASSES))))
        model_or_run = OpenRun(model, config, Path(), None, names, *normalization(config.std), dev,
                               resolve_precision(precision, dev))
    opened = model_or_run
    n = len(opened.classes)
    if not 1 <= top_k <= n:
        raise CifarkitError(f"top_k must be in 1..{n}, got {top_k}", cli=f"--top-k must be in 1..{n}, got {top_k}")
    if classes is not None and len(classes) != n:
        raise CifarkitError(f"classes has {len(classes)} names, the model {n} classes: give one name per class")
    names = tuple(classes) if classes is not None else opened.classes
    mean, std_values = (opened.mean, opened.std) if std is None else normalization(std)
    probs = predict_proba(opened.model, as_images(images), mean, std_values, precision=opened.precision,
                          batch_size=opened.config.eval_batch_size)
    best, index = torch.from_numpy(probs).topk(top_k, dim=1)
    return [[(names[j], float(p)) for p, j in zip(row_p.tolist(), row_i.tolist())] for row_p, row_i in zip(best, index)]
