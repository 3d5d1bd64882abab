"""A learnable stand-in for CIFAR-10, for tests and demos that must not depend on the real set."""

from __future__ import annotations

import numpy as np

from cifarkit.data.cifar10 import Cifar10, class_names


def make_synthetic(n_train: int = 1000, n_test: int = 200, *, seed: int = 0, num_classes: int = 10) -> Cifar10:
    """A learnable 10-class stand-in for CIFAR-10: each class is a coloured, oriented pattern plus noise.

    Classes differ in colour and in stripe orientation, so a flip or a crop keeps the class; a small model learns
    it in an epoch or two. It is NOT CIFAR-10 and every caller that shows results must say so.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    prototypes = []
    for c in range(num_classes):
        angle = np.pi * c / num_classes
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (0.5 + 0.1 * c))
        colour = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        prototypes.append(0.5 + 0.25 * stripes[..., None] * colour[None, None, :] * 2 - 0.1 + 0.2 * colour)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(labels)
        base = np.stack([prototypes[c] for c in labels])
        noisy = base + rng.normal(0.0, 0.12, size=base.shape).astype(np.float32)
        return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8), labels

    train_images, train_labels = split(n_train)
    test_images, test_labels = split(n_test)
    classes = class_names(num_classes)
    return Cifar10(train_images, train_labels, test_images, test_labels, classes,
                   source=f"synthetic (seed {seed}) - NOT CIFAR-10", synthetic=True)
