"""Facts of CIFAR-10 that every pipeline shares, and the names of the choices made on them.

Per-channel statistics of the training set (RGB, 0..1 scale), measured on the 50,000 training images and equal to
the official set's. The widely copied (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the dataset std
(docs/design.md#normalisation-std); "true" is the default, so normalised pixels have unit variance.
"""

from __future__ import annotations

from cifarkit.errors import named_error

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: dict[str, tuple[float, float, float]] = {
    "true": (0.2470, 0.2435, 0.2616),
    "reference": (0.2023, 0.1994, 0.2010),
}

# The 4-pixel pad before the 32x32 random crop: "reflect" mirrors the border (cv2.BORDER_REFLECT_101, what
# albumentations 1.x's PadIfNeeded did by default), "zero" fills with 0 after normalising, i.e. the mean colour.
PAD_MODES: tuple[str, ...] = ("reflect", "zero")


def check_pad_mode(mode: str) -> str:
    """`mode` if it is one of PAD_MODES, else a CifarkitError naming the choices."""
    if mode not in PAD_MODES:
        raise named_error(f"pad_mode must be {' or '.join(PAD_MODES)}, got {mode!r}", "pad_mode")
    return mode


def cifar10_std(name: str) -> tuple[float, float, float]:
    """The std named by --std ("true" or "reference")."""
    if name not in CIFAR10_STD:
        raise named_error(f"std must be one of {sorted(CIFAR10_STD)}, got {name!r}", "std")
    return CIFAR10_STD[name]


def normalization(std: str = "true") -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) that normalise CIFAR-10 images, with the std named by --std: `normalize_batch(x, *normalization())`."""
    return CIFAR10_MEAN, cifar10_std(std)
