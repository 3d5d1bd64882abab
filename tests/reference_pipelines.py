"""Independent references the tests compare the product with: albumentations' own normalisation pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def albumentations_test_transform(mean: Sequence[float], std: Sequence[float]) -> Any:
    """Normalise only, as albumentations does it: Normalize -> ToTensorV2 (what preprocessing must equal)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])
