"""cifarkit: the assignment's custom ResNet on CIFAR-10, trained with a one-cycle policy, explained with pictures.

The public names load lazily (PEP 562), so `import cifarkit.data` or `cifarkit --help` does not pay for torch and
albumentations (5-6 s on a 2-core machine) until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cifar10": "cifarkit.data", "load_cifar10": "cifarkit.data", "resolve_data": "cifarkit.data",
    "TrainConfig": "cifarkit.config", "CifarkitError": "cifarkit.errors", "LRFinderResult": "cifarkit.lr_finder",
    "lr_find": "cifarkit.lr_finder", "CustomResNet": "cifarkit.models", "one_cycle": "cifarkit.schedule",
    "History": "cifarkit.train", "fit": "cifarkit.train", "evaluate": "cifarkit.inference",
    "LoadedModel": "cifarkit.inference", "load_model": "cifarkit.inference", "predict": "cifarkit.inference",
    "OpenRun": "cifarkit.inference", "open_run": "cifarkit.inference",
    "samples_figure": "cifarkit.report", "plot_lr_finder": "cifarkit.report.plots",
    "model_summary": "cifarkit.models.summary",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from cifarkit.config import TrainConfig
    from cifarkit.data import Cifar10, load_cifar10, resolve_data
    from cifarkit.errors import CifarkitError
    from cifarkit.inference import LoadedModel, OpenRun, evaluate, load_model, open_run, predict
    from cifarkit.lr_finder import LRFinderResult, lr_find
    from cifarkit.models import CustomResNet
    from cifarkit.report import samples_figure
    from cifarkit.report.plots import plot_lr_finder
    from cifarkit.schedule import one_cycle
    from cifarkit.models.summary import model_summary
    from cifarkit.train import History, fit


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cifarkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
