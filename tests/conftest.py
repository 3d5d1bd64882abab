"""Shared test setup: one torch thread (a training job may share the 2 cores), tiny data, a private cache, a skip for
real-data tests, and writers that put a Cifar10 on disk in each layout `load_cifar10` reads."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.data import Cifar10, make_synthetic

# OMP_NUM_THREADS cannot take effect once torch is imported, so limit torch's own pool instead.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test that trains the session's `tiny_run` (a training run is slow by this suite's rule);
    skip tests marked `realdata` unless $CIFARKIT_DATA names the real set."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if os.environ.get("CIFARKIT_DATA"):
        return
    skip = pytest.mark.skip(reason="needs the real CIFAR-10 set: set CIFARKIT_DATA")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_data() -> Cifar10:
    """200 train and 50 test synthetic images (NOT CIFAR-10)."""
    return make_synthetic(n_train=200, n_test=50)


@pytest.fixture
def cifar_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, initially absent cache folder ($CIFARKIT_CACHE), so tests never touch ~/.cache/cifarkit."""
    cache = tmp_path / "cifarkit-cache"
    monkeypatch.setenv("CIFARKIT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def assert_real_png() -> Callable[..., None]:
    """`assert_real_png(path, min_size=(300, 200))`: fails unless `path` is a PNG of at least min_size pixels that is
    not (almost) a single colour. A fixture, for the plot and report tests alike (rather than `import conftest`)."""

    def check(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
        assert path.is_file(), path
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= min_size[0] and image.height >= min_size[1], (path.name, image.size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
        colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
        assert len(colours) > 10, f"{path.name} is (almost) one colour"

    return check


# ------------------------------------------------------------------------------------------- on-disk layouts

class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes and str as Python 2 strings (SHORT_BINSTRING/BINSTRING), as the official batches were written by
    Python 2's cPickle at protocol 2; Python 3 would write bytes as _codecs.encode(...) calls instead."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_string(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_dumps(obj: object) -> bytes:
    """`obj` pickled the way Python 2 + numpy 1 wrote CIFAR-10 (numpy.core module names, Python 2 strings)."""
    import io

    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch_dict(images: np.ndarray, labels: np.ndarray, label: str) -> dict[bytes, object]:
    """One batch in the official format: bytes keys, data uint8 N×3072 channel-planar (R plane, G plane, B plane)."""
    return {
        b"batch_label": label.encode(),
        b"labels": [int(y) for y in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }


def write_pickle_folder(data: Cifar10, folder: Path, *, dumps: object = py2_dumps) -> Path:
    """`folder` (e.g. .../cifar-10-batches-py) with data_batch_1..5, test_batch and batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, idx in enumerate(np.array_split(np.arange(len(data.train_labels)), 5), start=1):
        batch = batch_dict(data.train_images[idx], data.train_labels[idx], f"training batch {i} of 5")
        (folder / f"data_batch_{i}").write_bytes(dumps(batch))  # type: ignore[operator]
    test = batch_dict(data.test_images, data.test_labels, "testing batch 1 of 1")
    (folder / "test_batch").write_bytes(dumps(test))  # type: ignore[operator]
    meta = {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in data.classes], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta))  # type: ignore[operator]
    return folder


def write_image_tree(data: Cifar10, root: Path, *, suffix: str = ".png") -> Path:
    """`root`/{train,test}/<class>/<index>.png; file names sort in the original order within a class."""
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        for c in data.classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / split / data.classes[label] / f"{i:05d}{suffix}")
    return root


def tree_order(labels: np.ndarray) -> np.ndarray:
    """The order an image tree loads in: class by class, original order within a class."""
    return np.argsort(labels, kind="stable")


def make_tar(archive: Path, folder: Path, arcname: str) -> Path:
    """A .tar.gz of `folder`, stored under `arcname`."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return archive


@pytest.fixture
def cifar_files() -> SimpleNamespace:
    """The writers above, for tests (fixtures rather than `import conftest`, which depends on pytest's import mode)."""
    return SimpleNamespace(py2_dumps=py2_dumps, batch_dict=batch_dict, pickle_folder=write_pickle_folder,
                           image_tree=write_image_tree, tree_order=tree_order, tar=make_tar)


# ------------------------------------------------------------------------------- a trained run (app, export)

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run folder trained once per session: 1 epoch on 200 synthetic images (NOT CIFAR-10), tested on 100."""
    from cifarkit.config import TrainConfig
    from cifarkit.train import fit

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    fit(TrainConfig(data="synthetic", out=str(out), epochs=1, subset=200, test_subset=100, lr_min=1e-4, lr_max=1e-3,
                    batch_size=64, plots=False), progress=False)
    return out
