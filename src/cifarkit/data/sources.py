"""Which data a run uses: the --data argument, $CIFARKIT_DATA, the cache, or a download, resolved to one Cifar10."""

from __future__ import annotations

import os

from cifarkit.data.archive import cache_root
from cifarkit.data.cifar10 import Cifar10, load_cifar10
from cifarkit.data.download import OFFICIAL_ARCHIVE_NAME, download_cifar10
from cifarkit.data.synthetic import make_synthetic

SYNTHETIC_SIZES = (5000, 1000)  # train, test images of `--data synthetic`


def resolve_data(arg: str | None) -> Cifar10:
    """The data set for the CLI's --data: "synthetic", a path, or (None) $CIFARKIT_DATA, the cache, a download."""
    if arg is not None and arg.strip().lower() == "synthetic":
        return make_synthetic(n_train=SYNTHETIC_SIZES[0], n_test=SYNTHETIC_SIZES[1])
    if arg:
        return load_cifar10(arg)
    if os.environ.get("CIFARKIT_DATA"):
        return load_cifar10(os.environ["CIFARKIT_DATA"])
    root = cache_root()
    if (root / OFFICIAL_ARCHIVE_NAME).is_file():
        return load_cifar10(root / OFFICIAL_ARCHIVE_NAME)
    extracted = sorted((root / "extracted").glob("cifar-10-python-*/cifar-10-batches-py"))
    if extracted:  # extracted earlier, archive since deleted
        return load_cifar10(extracted[-1])
    return load_cifar10(download_cifar10(root))
