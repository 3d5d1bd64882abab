"""The albumentations pipeline beyond its ranges (tested in test_augment.py): independent random decisions,
the padding modes and replayable per-sample seeds; and the evaluation-side preprocessing against its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.config import TrainConfig
from cifarkit.data import normalization
from cifarkit.data.transforms import build_train_transform, sample_seed, seed_transform
from cifarkit.inference.preprocess import Preprocess, preprocess


def flat_image(value: int = 200) -> np.ndarray:
    """A constant image whose right half is brighter, so a flip is visible."""
    img = np.full((32, 32, 3), value, dtype=np.uint8)
    img[:, 16:] = 255
    return img


def decisions(config: TrainConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(flipped, cut out) per sample, read from the applied params of a seeded pipeline."""
    t = build_train_transform(config)
    t.save_applied_params = True
    flips, holes = [], []
    for i in range(n):
        seed_transform(t, sample_seed(0, 0, i))
        names = [name for name, _ in t(image=flat_image())["applied_transforms"]]
        flips.append("HorizontalFlip" in names)
        holes.append("CoarseDropout" in names)
    return np.array(flips), np.array(holes)


def test_flip_and_cutout_fire_independently() -> None:
    """Each fires about half the time and together about a quarter: albumentations' own per-transform seeding
    would make them fire together, which `seed_transform` avoids."""
    flips, holes = decisions(TrainConfig(), 800)
    assert 0.43 < flips.mean() < 0.57 and 0.43 < holes.mean() < 0.57
    assert 0.18 < (flips & holes).mean() < 0.32


def test_reflect_padding_never_shows_a_constant_border_and_zero_padding_shows_the_mean() -> None:
    """With reflect padding a crop of an image with no zero pixels has none after normalising to the mean of 0 at
    the border ...; with zero padding, crops at offset 0 carry a 4-pixel band of exactly 0 (the mean)."""
    rng = np.random.default_rng(0)
    img = rng.integers(150, 256, size=(32, 32, 3), dtype=np.uint8)  # far from the mean: never 0 after Normalize
    for pad_mode, expect_zero_band in (("reflect", False), ("zero", True)):
        t = build_train_transform(TrainConfig(pad_mode=pad_mode, cutout_p=0.0))
        saw_band = False
        for i in range(60):
            seed_transform(t, i)
            out = t(image=img)["image"]
            rows_zero = (out.abs().amax(dim=(0, 2)) == 0)
            cols_zero = (out.abs().amax(dim=(0, 1)) == 0)
            saw_band |= bool(rows_zero[:4].all() or rows_zero[-4:].all() or cols_zero[:4].all() or cols_zero[-4:].all())
        assert saw_band == expect_zero_band, pad_mode


@pytest.mark.parametrize("std_name", ["true", "reference"])
def test_evaluation_preprocessing_is_normalise_only(std_name: str) -> None:
    """What every inference path feeds the model (`preprocess`, and `Preprocess` inside an exported graph) is
    (x / 255 - mean) / std per channel in CHW, worked out here in float64 from uint8 NHWC pixels, with the mean and
    std written out by hand; nothing random: a second call gives the same tensor."""
    mean = np.array([0.4914, 0.4822, 0.4465])
    std = np.array({"true": [0.2470, 0.2435, 0.2616], "reference": [0.2023, 0.1994, 0.2010]}[std_name])
    images = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images[0] = flat_image()
    expected = torch.from_numpy(((images / 255 - mean) / std).transpose(0, 3, 1, 2)).float()
    product_mean, product_std = normalization(std_name)
    got = preprocess(images, product_mean, product_std)
    assert got.dtype == torch.float32 and got.shape == (3, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(preprocess(images, product_mean, product_std), got)
    torch.testing.assert_close(Preprocess(product_mean, product_std)(torch.from_numpy(images)), expected, atol=1e-5,
                               rtol=0)


def test_per_sample_seed_replays_exactly() -> None:
    """The same (seed, epoch, index) gives the same augmented image; another epoch gives another."""
    t = build_train_transform(TrainConfig())
    img = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    outs = []
    for epoch in (0, 0, 1):
        seed_transform(t, sample_seed(0, epoch, 7))
        outs.append(t(image=img)["image"])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
