"""A trained model from Python: load it from a run, classify images.

    import cifarkit
    model, config = cifarkit.load_model("runs/a")          # a run folder, its model.pt or checkpoints/last.pt
    cifarkit.predict("runs/a", ["cat.png"], top_k=3)       # per image: [(class, probability), ...], best first

`cifarkit.fit(config, data=...)` trains one (cifarkit.train); `cifarkit.lr_find(config)` runs its LR range test alone.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from cifarkit.config import TrainConfig
from cifarkit.console import say
from cifarkit.data import CLASSES, Cifar10, normalization, resolve_data, subset
from cifarkit.data.images import read_image, to_rgb32
from cifarkit.data.loaders import build_train_batches
from cifarkit.device import pick_device, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.inference import OpenRun, open_run, predict_proba
from cifarkit.lr_finder import LRFinderResult, range_test
from cifarkit.models import CustomResNet, build_model

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


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


def as_images(images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
    """uint8 [N, 32, 32, 3] from one image or a list: paths, PIL images, uint8 HxWx3 arrays, or an NxHxWx3 array;
    other sizes are resized (bilinear)."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    out = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            out.append(read_image(item))
        elif isinstance(item, Image.Image):
            out.append(to_rgb32(item))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise CifarkitError(f"images[{i}] is {item.dtype}: give uint8 pixels in 0..255, e.g. "
                                    "(x * 255).round().astype(np.uint8)")
            if not (item.ndim == 2 or item.ndim == 3 and item.shape[2] in (1, 3, 4)):
                raise CifarkitError(f"images[{i}] has shape {item.shape}: give HxWx3 images or one NxHxWx3 array")
            out.append(to_rgb32(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item))
        else:
            raise CifarkitError(f"images[{i}] is of type {type(item).__name__}: give paths, PIL images or uint8 "
                                "arrays")
    if not out:
        raise CifarkitError("images is empty: give at least one image")
    return np.stack(out)


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
        n = int(getattr(model, "num_classes", len(CLASSES)))
        names = CLASSES if n == len(CLASSES) else tuple(f"class{i}" for i in range(n))
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


def lr_find(config: TrainConfig, data: Cifar10 | str | None = None, *, precision: str | None = None) -> LRFinderResult:
    """The LR range test of `config` (its sweep, batch, augmentation, subset, loss and precision) on a fresh model, on
    `data` (a Cifar10, a path or "synthetic"; None: config.data as `fit` resolves it). `precision`: one already
    resolved by device.resolve_precision (None: resolve config.precision here).

        result = cifarkit.lr_find(TrainConfig(lr_find_iters=200), data="cifar-10-python.tar.gz")
        result.lr_min, result.lr_max
        cifarkit.plot_lr_finder(result.lrs, result.losses, result.smoothed, result.lr_min, result.lr_max)
    """
    config.validate()
    device = pick_device(config.device)
    config = dataclasses.replace(config, precision=precision or resolve_precision(config.precision, device))
    torch.manual_seed(config.seed)
    if not isinstance(data, Cifar10):
        data = resolve_data(config.data if data is None else str(data))
    data = subset(data, config.subset, None, seed=config.seed)
    model = build_model(len(data.classes), device=device, channels_last=config.channels_last)
    batches = build_train_batches(data.train_images, data.train_labels, config, device=device)
    return range_test(model, batches, config, precision=config.precision)
