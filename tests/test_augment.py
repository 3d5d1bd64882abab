"""The batched device augmentation (cifarkit.data.augment) against the albumentations pipeline's semantics."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

from cifarkit.config import TrainConfig
from cifarkit.data import CIFAR10_MEAN, CIFAR10_STD
from cifarkit.data.augment import AugmentParams, apply_params, normalize_batch, sample_params
from cifarkit.data.loaders import DeviceBatches, rank_indices
from cifarkit.errors import CifarkitError

MEAN = CIFAR10_MEAN
STD = CIFAR10_STD["true"]
# Chi-square critical values at p = 0.001 (df = categories - 1): a correct sampler fails 1 run in 1,000; the seeds
# are fixed, so the tests are deterministic anyway.
CHI2_001 = {8: 26.12, 24: 51.18}


def coordinate_image() -> np.ndarray:
    """uint8 [32, 32, 3]: red = 8 * row + 3, green = 8 * col + 3, blue 77, so every pixel tells where it came from.

    No value normalises to exactly 0 (the means times 255 are not integers), so exact zeros mark holes / zero pad.
    """
    r, c = np.mgrid[0:32, 0:32]
    return np.stack([8 * r + 3, 8 * c + 3, np.full_like(r, 77)], axis=-1).astype(np.uint8)


def denormalise(x: torch.Tensor) -> np.ndarray:
    """float [..., 3] normalised (channels last) -> the uint8 values they came from, as int64 [..., 3]."""
    v = x.double() * torch.tensor(STD, dtype=torch.float64) + torch.tensor(MEAN, dtype=torch.float64)
    return (v * 255).round().long().numpy()


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From augmented coordinate images (reflect padding): crop offsets [B, 2], flip [B], hole mask [B, 32, 32].

    Output rows/columns 4..27 always read a real (unpadded) pixel, index + offset - 4; the hole covers at most 8
    of those 24, so each image has untouched rows and adjacent column pairs to read the offsets and the flip from.
    """
    hole = (x == 0).all(dim=1).numpy()  # [B, 32, 32]
    b = np.arange(len(x))
    i = 4 + (~hole[:, 4:28, :].any(axis=2)).argmax(axis=1)  # a hole-free row per image
    j = 4 + (~(hole[:, :, 4:27] | hole[:, :, 5:28]).any(axis=1)).argmax(axis=1)  # two hole-free columns
    here = denormalise(x[b, :, i, j])  # [B, 3]: only the pixels read, not the whole batch
    right = denormalise(x[b, :, i, j + 1])
    src_row, src_col, src_col_right = (here[:, 0] - 3) // 8, (here[:, 1] - 3) // 8, (right[:, 1] - 3) // 8
    flips = src_col_right - src_col == -1
    dy = src_row - i + 4
    dx = np.where(flips, src_col + j - 27, src_col - j + 4)
    return np.stack([dy, dx], axis=1), flips, hole


def chi2_uniform(values: np.ndarray, k: int) -> float:
    """Pearson's statistic of `values` against the uniform distribution on 0..k-1."""
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k, f"values outside 0..{k - 1}: {np.unique(values)}"
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


def reference(image: np.ndarray, dy: int, dx: int, flip: bool, pad_mode: str) -> torch.Tensor:
    """Pad / crop / flip written the obvious way with F.pad and slicing, after normalising: [3, 32, 32]."""
    x = normalize_batch(torch.from_numpy(image)[None], MEAN, STD)
    x = F.pad(x, (4, 4, 4, 4), mode="reflect" if pad_mode == "reflect" else "constant", value=0.0)
    x = x[0, :, dy:dy + 32, dx:dx + 32]
    return x.flip(-1) if flip else x


def fixed_params(offsets: list[tuple[int, int]], flips: list[bool]) -> AugmentParams:
    n = len(offsets)
    return AugmentParams(torch.tensor(offsets), torch.tensor(flips), torch.zeros(n, dtype=torch.bool),
                         torch.zeros(n, 2, dtype=torch.long))


def augment(images: torch.Tensor, generator: torch.Generator, *, mean: tuple[float, ...], std: tuple[float, ...],
            pad_mode: str, cutout_size: int, cutout_p: float) -> torch.Tensor:
    """One training step's augmentation as the batched path runs it (DeviceBatches): parameters drawn from
    `generator` by sample_params, applied by apply_params."""
    n, h, w, _ = images.shape
    params = sample_params(n, generator, height=h, width=w, cutout_size=cutout_size, cutout_p=cutout_p)
    return apply_params(images, params, mean=mean, std=std, pad_mode=pad_mode, cutout_size=cutout_size)


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_equals_reference_crop_and_flip_for_every_offset(pad_mode: str) -> None:
    """For every crop offset (0..8 x 0..8) and both flips, the batched gather equals F.pad + slice + flip exactly
    (reflect = F.pad "reflect" = BORDER_REFLECT_101; zero = 0 after normalising)."""
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cases = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)]
    params = fixed_params([(dy, dx) for dy, dx, _ in cases], [f for *_, f in cases])
    batch = torch.from_numpy(np.repeat(image[None], len(cases), axis=0))
    out = apply_params(batch, params, mean=MEAN, std=STD, pad_mode=pad_mode)
    for k, (dy, dx, flip) in enumerate(cases):
        assert torch.equal(out[k], reference(image, dy, dx, flip, pad_mode)), (dy, dx, flip)


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_equals_albumentations_for_given_offsets(pad_mode: str) -> None:
    """With the crop and flip fixed, the output equals albumentations' own Normalize -> PadIfNeeded(40, the
    config's border) -> Crop -> HorizontalFlip (same pad constants as transforms.py) to float32 rounding."""
    from cifarkit.data.transforms import CV2_BORDERS

    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for dy, dx, flip in [(0, 0, False), (8, 8, True), (0, 8, True), (3, 5, False), (8, 0, False), (4, 4, True)]:
        pipeline = A.Compose([
            A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
            A.PadIfNeeded(min_height=40, min_width=40, border_mode=CV2_BORDERS[pad_mode], fill=0),
            A.Crop(x_min=dx, y_min=dy, x_max=dx + 32, y_max=dy + 32),
            A.HorizontalFlip(p=1.0 if flip else 0.0),
        ])
        expected = torch.from_numpy(pipeline(image=image)["image"]).permute(2, 0, 1)
        got = apply_params(torch.from_numpy(image)[None], fixed_params([(dy, dx)], [flip]), mean=MEAN, std=STD,
                           pad_mode=pad_mode)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_crop_offsets_uniform_and_flip_rate_half() -> None:
    """Over 10,000 draws, each crop offset is uniform over 0..8 (chi-square, p = 0.001) and flips fire at 0.5 +- 0.03
    (6 standard deviations)."""
    batch = torch.from_numpy(np.repeat(coordinate_image()[None], 10_000, axis=0))
    g = torch.Generator().manual_seed(0)
    out = augment(batch, g, mean=MEAN, std=STD, pad_mode="reflect", cutout_size=8, cutout_p=0.0)
    offsets, flips, hole = decode(out)
    assert not hole.any()
    assert chi2_uniform(offsets[:, 0], 9) < CHI2_001[8]
    assert chi2_uniform(offsets[:, 1], 9) < CHI2_001[8]
    assert abs(flips.mean() - 0.5) < 0.03


def test_cutout_one_8x8_hole_of_mean_inside_image_at_rate_half() -> None:
    """Cutout cuts exactly one 8x8 hole filled with 0 (the mean after normalising) in 0.5 +- 0.03 of images; its
    top-left is uniform over 0..24 in each axis (CoarseDropout's rule), so it always lies fully inside."""
    batch = torch.from_numpy(np.repeat(coordinate_image()[None], 10_000, axis=0))
    out = augment(batch, torch.Generator().manual_seed(1), mean=MEAN, std=STD, pad_mode="reflect",
                        cutout_size=8, cutout_p=0.5)
    hole = (out == 0).all(dim=1)
    assert torch.equal((out == 0).any(dim=1), hole)  # a hole zeroes all three channels, nothing else is zero
    has_hole = hole.any(dim=(1, 2)).numpy()
    assert abs(has_hole.mean() - 0.5) < 0.03
    cut = hole[torch.from_numpy(has_hole)].numpy()
    assert (cut.sum(axis=(1, 2)) == 64).all()
    rows, cols = cut.any(axis=2), cut.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    assert (rows.sum(axis=1) == 8).all() and (cols.sum(axis=1) == 8).all()  # 8 x 8 and contiguous (64 pixels)
    assert chi2_uniform(top, 25) < CHI2_001[24]
    assert chi2_uniform(left, 25) < CHI2_001[24]


def test_albumentations_pipeline_draws_from_the_same_ranges() -> None:
    """The lead's albumentations pipeline (transforms.build_train_transform), decoded the same way, draws crop
    offsets from exactly 0..8, one 8x8 hole with top-left in 0..24, flips and cutouts near half the time: the
    ranges this module reproduces (a check that the decoding, and our reading of albumentations, are right)."""
    from cifarkit.data.transforms import build_train_transform, seed_transform

    transform = build_train_transform(TrainConfig())
    image = coordinate_image()
    outs = []
    for k in range(3000):
        seed_transform(transform, k)
        outs.append(transform(image=image)["image"])
    x = torch.stack(outs).float()
    offsets, flips, hole = decode(x)
    assert set(offsets[:, 0]) == set(range(9)) and set(offsets[:, 1]) == set(range(9))
    assert abs(flips.mean() - 0.5) < 0.05
    has_hole = hole.any(axis=(1, 2))
    assert abs(has_hole.mean() - 0.5) < 0.05
    cut = hole[has_hole]
    assert (cut.sum(axis=(1, 2)) == 64).all()
    top, left = cut.any(axis=2).argmax(axis=1), cut.any(axis=1).argmax(axis=1)
    assert set(top) == set(range(25)) and set(left) == set(range(25))


def test_zero_padding_is_the_mean() -> None:
    """With pad_mode "zero", the padded border that a crop shows is exactly 0 after normalising (the mean colour),
    e.g. offset (0, 0) shows 4 zero rows on top and 4 zero columns on the left."""
    batch = torch.from_numpy(coordinate_image()[None])
    out = apply_params(batch, fixed_params([(0, 0)], [False]), mean=MEAN, std=STD, pad_mode="zero")[0]
    assert (out[:, :4, :] == 0).all() and (out[:, :, :4] == 0).all()
    assert (out[:, 4:, 4:] != 0).all()


def test_normalize_batch_equals_albumentations_test_transform() -> None:
    """normalize_batch (evaluation input) equals the albumentations test pipeline: Normalize -> ToTensorV2."""
    from reference_pipelines import albumentations_test_transform as build_test_transform

    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = torch.stack([build_test_transform(MEAN, STD)(image=im)["image"] for im in images])
    got = normalize_batch(torch.from_numpy(images), MEAN, STD)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert normalize_batch(torch.from_numpy(images), MEAN, STD, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


def test_augmentation_reproducible_and_rejects_wrong_input() -> None:
    """The same generator seed gives the same batch, another seed a different one; non-uint8 or non-NHWC input to
    apply_params raises CifarkitError."""
    batch = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    kw = dict(mean=MEAN, std=STD, pad_mode="reflect", cutout_size=8, cutout_p=0.5)
    a = augment(batch, torch.Generator().manual_seed(7), **kw)
    b = augment(batch, torch.Generator().manual_seed(7), **kw)
    c = augment(batch, torch.Generator().manual_seed(8), **kw)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    params = sample_params(16, torch.Generator().manual_seed(7), cutout_size=8, cutout_p=0.5)
    for wrong in (batch.float(), batch.permute(0, 3, 1, 2).contiguous()):
        with pytest.raises(CifarkitError, match="expected uint8 images"):
            apply_params(wrong, params, mean=MEAN, std=STD)


def make_batches(n: int, **kw: object) -> DeviceBatches:
    """DeviceBatches over n images whose pixels all equal their index (n <= 256) and labels = index."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 32, 32, 3)).copy()
    return DeviceBatches(images, np.arange(n), mean=MEAN, std=STD, device=torch.device("cpu"), **kw)  # type: ignore[arg-type]


def test_device_batches_shapes_labels_and_partial_last_batch() -> None:
    """len() counts the last partial batch; batches are float32 [B, 3, 32, 32] / int64 [B]; every image's pixels
    (outside its hole) come from the image its label names; each epoch visits every image once."""
    batches = make_batches(100, batch_size=32, seed=5)
    assert len(batches) == 4
    seen = []
    for x, y in batches.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 32, 32)
        values = denormalise(x.permute(0, 2, 3, 1))
        holes = (x == 0).all(dim=1).numpy()
        for b in range(len(y)):
            assert (values[b][~holes[b]] == int(y[b])).all()
        seen.append(y)
    assert [len(y) for y in seen] == [32, 32, 32, 4]
    assert sorted(torch.cat(seen).tolist()) == list(range(100))


def test_device_batches_reproducible_resume_mid_epoch_and_epochs_differ() -> None:
    """The same (seed, epoch) gives identical batches; epoch(e, start_step=k) equals batches k.. of the full
    epoch (exact mid-epoch resume); another epoch reorders and re-augments."""
    full = list(make_batches(100, batch_size=16, seed=3).epoch(2))
    again = list(make_batches(100, batch_size=16, seed=3).epoch(2))
    resumed = list(make_batches(100, batch_size=16, seed=3).epoch(2, start_step=4))
    other = list(make_batches(100, batch_size=16, seed=3).epoch(3))
    assert len(full) == 7 and len(resumed) == 3
    for (x1, y1), (x2, y2) in zip(full, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(full[4:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(full[0][1], other[0][1])


def test_ranks_split_like_distributed_sampler() -> None:
    """Each rank's order is DistributedSampler's (shuffle, seed, epoch, wrap-padded); per-rank batch is
    batch_size // world_size; all ranks have the same number of steps and together cover every image."""
    n, world = 50, 4
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=9)
        sampler.set_epoch(1)
        assert rank_indices(n, seed=9, epoch=1, rank=rank, world_size=world).tolist() == list(sampler)
    ranks = [make_batches(n, batch_size=8, seed=9, rank=r, world_size=world) for r in range(world)]
    assert {len(r) for r in ranks} == {7}  # 13 samples per rank (52 = 50 wrapped by 2), batches of 2
    labels = [torch.cat([y for _, y in r.epoch(1)]) for r in ranks]
    assert all(len(y) == 13 for y in labels)
    assert set(torch.cat(labels).tolist()) == set(range(n))


def test_channels_last_output_and_bad_arguments() -> None:
    """channels_last=True returns channels_last memory with the same values; bad batch/rank/pad mode raise
    CifarkitError."""
    x_cl, _ = next(make_batches(20, batch_size=8, channels_last=True).epoch(0))
    x, _ = next(make_batches(20, batch_size=8).epoch(0))
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and x.is_contiguous()
    assert torch.equal(x, x_cl)
    with pytest.raises(CifarkitError):
        make_batches(20, batch_size=2, world_size=4)
    with pytest.raises(CifarkitError):
        make_batches(20, batch_size=8, pad_mode="edge")
    with pytest.raises(CifarkitError):
        make_batches(20, batch_size=8, rank=2, world_size=2)


def test_sample_params_ranges() -> None:
    """Drawn parameters stay in range: offsets 0..8, hole top-left 0..32-size; cutout never fires at size 0."""
    p = sample_params(5000, torch.Generator().manual_seed(0), cutout_size=8, cutout_p=1.0)
    assert p.offsets.min() == 0 and p.offsets.max() == 8
    assert p.hole.min() == 0 and p.hole.max() == 24 and bool(p.cutout.all())
    assert not sample_params(100, torch.Generator(), cutout_size=0, cutout_p=1.0).cutout.any()
