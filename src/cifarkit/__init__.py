"""cifarkit: the assignment's custom ResNet on CIFAR-10, trained with a one-cycle policy, explained with pictures."""

from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, load_cifar10
from cifarkit.errors import CifarkitError
from cifarkit.lr_finder import LRFinderResult, find_lr
from cifarkit.models import CustomResNet
from cifarkit.schedule import one_cycle
from cifarkit.train import History, evaluate, fit

__all__ = ["Cifar10", "CifarkitError", "CustomResNet", "History", "LRFinderResult", "TrainConfig", "evaluate",
           "find_lr", "fit", "load_cifar10", "one_cycle"]
__version__ = "0.1.0"
