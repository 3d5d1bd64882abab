"""Batch sources for training and evaluation.

A batch source has `len()` (steps per epoch, per rank) and `.epoch(epoch, start_step)`, which yields (x, y) on the
training device. Data order comes from (seed, epoch) and each image's augmentation from (seed, epoch, index), so an
epoch can be replayed from any step: that is what makes resume exact, on any number of workers or ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cifarkit.config import TrainConfig
from cifarkit.transforms import build_train_transform, sample_seed, seed_transform


class AugmentedImages(Dataset):
    """uint8 HWC images through an albumentations pipeline; items are indexed by (index, augmentation seed)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> None:
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
    return max(1, min(8, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2) - 1))


class LoaderBatches:
    """The reference path: per-image albumentations in a DataLoader."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: TrainConfig, *, device: torch.device,
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


def build_train_batches(images: np.ndarray, labels: np.ndarray, config: TrainConfig, *, device: torch.device,
                        rank: int = 0, world_size: int = 1) -> "LoaderBatches":
    """The batch source named by config.augment ("auto": batched on CUDA, the DataLoader path elsewhere)."""
    mode = config.augment if config.augment != "auto" else ("batched" if device.type == "cuda" else "albumentations")
    if mode == "batched":
        from cifarkit.augment import DeviceBatches  # imported here: the DataLoader path needs none of it

        return DeviceBatches(images, labels, batch_size=config.batch_size, mean=config.mean, std=config.std_values,
                             pad_mode=config.pad_mode, cutout_size=config.cutout_size, cutout_p=config.cutout_p,
                             seed=config.seed, device=device, rank=rank, world_size=world_size,
                             channels_last=config.channels_last)  # type: ignore[return-value]
    return LoaderBatches(images, labels, config, device=device, rank=rank, world_size=world_size)


def repeat_epochs(batches: "LoaderBatches") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches, epoch after epoch (for the LR range test)."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1

