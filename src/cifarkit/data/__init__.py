"""CIFAR-10 for cifarkit: loading every common layout, class-balanced subsets, a synthetic stand-in, and the data's
own facts (mean, std, classes), and which data is which (data.path, data.fingerprint).

    from cifarkit.data import load_cifar10, resolve_data
    data = load_cifar10("cifar-10-python.tar.gz")   # uint8 [50000, 32, 32, 3] + int64 labels, and the test split
    data.path, data.fingerprint                      # what a run records, and checks on resume, evaluate and report

Augmentation and batch sources live in `cifarkit.data.transforms`, `.augment` and `.loaders`.
"""

from cifarkit.data.cifar10 import CLASSES, Cifar10, class_balanced_subset, class_names, load_cifar10, subset
from cifarkit.data.download import OFFICIAL_MD5, OFFICIAL_URL, download_cifar10
from cifarkit.data.sources import check_same_data, data_fingerprint, recorded_data, resolve_data
from cifarkit.data.stats import CIFAR10_MEAN, CIFAR10_STD, PAD_MODES, check_pad_mode, cifar10_std, normalization
from cifarkit.data.synthetic import make_synthetic

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CLASSES", "Cifar10", "OFFICIAL_MD5", "OFFICIAL_URL", "PAD_MODES",
           "check_pad_mode", "check_same_data", "cifar10_std", "class_balanced_subset", "class_names",
           "data_fingerprint", "download_cifar10", "load_cifar10", "make_synthetic", "normalization", "recorded_data",
           "resolve_data", "subset"]
