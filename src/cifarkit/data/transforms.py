"""The assignment's augmentation in albumentations 2.x, and per-sample seeding that makes it reproducible.

Train: Normalize -> PadIfNeeded 40x40 -> RandomCrop 32 -> HorizontalFlip -> CoarseDropout (one 8x8 hole) -> tensor.
Test:  Normalize -> tensor.

Choices (both configurable, see TrainConfig):
- Padding mode "reflect" (cv2.BORDER_REFLECT_101): a crop then never shows an artificial black/mean border. It is
  the reference's padding (PadIfNeeded's default in albumentations 1.x) and what the fast CIFAR-10 ResNets
  (DAWNBench, airbench) use; "zero" pads with 0 after Normalize, i.e. the mean colour.
- CutOut fills with the dataset mean. Normalize runs first, so the mean is 0 here. The reference passed the mean's
  raw values (0.49, 0.48, 0.45) as the fill *after* normalising, which is a light grey of about +0.5 std, not the
  mean: a bug we do not copy.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cifarkit.data.stats import check_pad_mode, normalization

if TYPE_CHECKING:
    import albumentations as A

# albumentations (and cv2) are imported where a pipeline is built: a run with --augment batched needs neither.
CV2_BORDERS = {"reflect": 4, "zero": 0}  # cv2.BORDER_REFLECT_101, cv2.BORDER_CONSTANT, by stats.PAD_MODES' names


class AugmentSpec(Protocol):
    """The augmentation's settings (TrainConfig has them all): data takes this instead of importing the config."""

    std: str  # normalisation std name (stats.cifar10_std)
    pad_mode: str  # stats.PAD_MODES
    cutout_p: float
    cutout_size: int
    seed: int


def build_train_transform(config: AugmentSpec) -> A.Compose:
    """The training pipeline; its randomness comes from `seed_transform` before each call."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    size = config.cutout_size
    mean, std = normalization(config.std)
    return A.Compose([
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
        A.PadIfNeeded(min_height=40, min_width=40, border_mode=CV2_BORDERS[check_pad_mode(config.pad_mode)], fill=0),
        A.RandomCrop(height=32, width=32),
        A.HorizontalFlip(p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(size, size), hole_width_range=(size, size),
                        fill=0, p=config.cutout_p),
        ToTensorV2(),
    ])


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Draw the next call's randomness from one stream seeded by `seed`.

    albumentations' own `seed=`/`set_random_seed` gives every transform an identical copy of the stream, so the
    flip and the CutOut would fire together on the same images; one shared stream keeps them independent.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible augmentation seed for each (run seed, epoch, image), so any epoch or step can be
    replayed exactly on resume, in any worker, on any rank."""
    return (seed * 1_000_003 + epoch) * 100_003 + index
