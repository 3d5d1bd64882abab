"""Batch sources for training: the albumentations DataLoader (the reference path) and batches augmented on the device.

A `BatchSource` has `len()` (steps per epoch, per rank) and `.epoch(epoch, start_step)`, which yields (x, y) on the
training device. Data order comes from (seed, epoch) and each image's augmentation from (seed, epoch, index), so an
epoch can be replayed from any step: that is what makes resume exact, on any number of workers or ranks
(docs/design.md#resume).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cifarkit.cpuinfo import usable_cpus
from cifarkit.data.augment import apply_params, params_to, sample_params
from cifarkit.data.stats import check_pad_mode, normalization
from cifarkit.data.transforms import AugmentSpec, build_train_transform, sample_seed, seed_transform
from cifarkit.errors import CifarkitError


class BatchSource(Protocol):
    """What the training loop and the LR range test read batches from."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class BatchSpec(AugmentSpec, Protocol):
    """The batch source's settings beyond the augmentation's (TrainConfig has them all)."""

    batch_size: int  # global, split across ranks
    augment: str  # "auto", "albumentations" or "batched"
    channels_last: bool
    workers: int | None


class AugmentedImages(Dataset):
    """uint8 HWC images through an albumentations pipeline; items are indexed by (index, augmentation seed)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: AugmentSpec) -> None:
        self.images, self.labels = images, labels
        self.transform = build_train_transform(config)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        seed_transform(self.transform, seed)
        return self.transform(image=self.images[index])["image"], int(self.labels[index])


class SeededSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, padded so ranks get equal shares) that can start mid-epoch and
    hands each index its augmentation seed."""

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0  # first sample (of this rank's share) to yield

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def default_workers(device: torch.device) -> int:
    """DataLoader workers fitted to the machine.

    On CPU the model's convolutions take seconds per batch of 512 on 2 cores while augmenting it takes about 30 ms,
    so a worker process would only steal a core from the convolutions: none. On a GPU, up to 8, one core left free.
    """
    if device.type == "cpu":
        return 0
    return max(1, min(8, usable_cpus() - 1))


class LoaderBatches:
    """The reference path: per-image albumentations in a DataLoader."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: BatchSpec, *, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.device = device
        self.channels_last = config.channels_last
        self.per_rank_batch = config.batch_size // world_size
        self.sampler = SeededSampler(AugmentedImages(images, labels, config), rank=rank, world_size=world_size,
                                     seed=config.seed)
        workers = default_workers(device) if config.workers is None else config.workers
        self.loader = DataLoader(self.sampler.dataset, batch_size=self.per_rank_batch, sampler=self.sampler,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0, drop_last=False)

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.per_rank_batch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        self.sampler.start = start_step * self.per_rank_batch
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A 63-bit generator seed for one (run seed, epoch, step, rank): independent streams, replayable alone."""
    words = [v & 0xFFFFFFFF for v in (seed, seed >> 32, epoch, step, rank)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def rank_indices(n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's sample order for an epoch, exactly as torch's DistributedSampler(shuffle=True, seed=seed,
    drop_last=False) after set_epoch(epoch): a permutation seeded by seed + epoch, padded by wrapping so every
    rank gets ceil(n / world_size) samples, then dealt out round-robin (rank, rank + world_size, ...)."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world_size)
    padding = per_rank * world_size - n
    if padding:
        order = torch.cat([order, order.repeat(math.ceil(padding / n))[:padding]])
    return order[rank::world_size]


class DeviceBatches:
    """Training batches augmented on the device; the same interface as the DataLoader path in loaders.py.

    `len()` is steps per epoch per rank (the last partial batch is kept); `epoch(e, start_step)` yields
    (x float32 [B, 3, 32, 32] normalised, y int64 [B]) on `device`, identical for the same (seed, e, step, rank).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], pad_mode: str = "reflect", cutout_size: int = 8, cutout_p: float = 0.5,
                 seed: int = 0, device: torch.device | str, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise CifarkitError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(labels) or len(images) == 0:
            raise CifarkitError(f"need as many labels as images (> 0), got {len(images)} images, {len(labels)} labels")
        if batch_size < world_size:
            raise CifarkitError(f"--batch-size {batch_size} is smaller than the {world_size} ranks: raise it")
        if not 0 <= rank < world_size:
            raise CifarkitError(f"rank {rank} is outside 0..{world_size - 1}")
        check_pad_mode(pad_mode)
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)  # uint8 NHWC, 3 KiB/image
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.batch_size = batch_size // world_size  # per-rank batch, as the DataLoader path
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad_mode, self.cutout_size, self.cutout_p = pad_mode, cutout_size, cutout_p
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.samples_per_rank = math.ceil(len(images) / world_size)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start_step.. of epoch `epoch`; starting mid-epoch gives the same batches as the full epoch."""
        order = rank_indices(len(self.labels), seed=self.seed, epoch=epoch, rank=self.rank,
                             world_size=self.world_size).to(self.device)
        _, h, w, _ = self.images.shape
        gen = torch.Generator()  # CPU: B x 6 draws per step are tiny, and CPU and CUDA runs then agree
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            gen.manual_seed(step_seed(self.seed, epoch, step, self.rank))
            params = sample_params(len(idx), gen, height=h, width=w, cutout_size=self.cutout_size,
                                   cutout_p=self.cutout_p)
            params = params_to(params, self.device)
            x = apply_params(self.images, params, mean=self.mean, std=self.std, pad_mode=self.pad_mode,
                             cutout_size=self.cutout_size if self.cutout_p > 0 else 0,  # p = 0: skip the mask
                             channels_last=self.channels_last, index=idx)
            yield x, self.labels.index_select(0, idx)


def resolve_augment(asked: str, device: torch.device) -> str:
    """The pipeline that runs for --augment `asked` on `device`: auto is "batched" on CUDA, "albumentations" elsewhere
    (config.json records the result, and a resumed run keeps it: the two draw different random streams)."""
    if asked != "auto":
        return asked
    return "batched" if device.type == "cuda" else "albumentations"


def build_train_batches(images: np.ndarray, labels: np.ndarray, config: BatchSpec, *, device: torch.device,
                        rank: int = 0, world_size: int = 1) -> BatchSource:
    """The batch source named by config.augment ("auto": batched on CUDA, the DataLoader path elsewhere)."""
    if resolve_augment(config.augment, device) == "batched":
        mean, std = normalization(config.std)
        return DeviceBatches(images, labels, batch_size=config.batch_size, mean=mean, std=std,
                             pad_mode=config.pad_mode, cutout_size=config.cutout_size, cutout_p=config.cutout_p,
                             seed=config.seed, device=device, rank=rank, world_size=world_size,
                             channels_last=config.channels_last)
    return LoaderBatches(images, labels, config, device=device, rank=rank, world_size=world_size)


def repeat_epochs(batches: BatchSource) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches, epoch after epoch (for the LR range test)."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1

