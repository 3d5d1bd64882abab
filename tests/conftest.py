"""Shared test setup: one torch thread per process (pytest-xdist runs one process per core), the pytest base temp on
tmpfs, the CPU policy a run asks for (--cpu-flags), `slow` marks by fixture and a guard that fails an unmarked test
that trains, tiny data, a private cache, a skip for real-data tests, and writers that put a Cifar10 on disk in each
layout `load_cifar10` reads."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.data import Cifar10, make_synthetic
from helpers import SHORT_RUN_ARGS, SHORT_SYNTHETIC, SLOW_ATTRIBUTE, slow_fixture
from training_guard import training_refused

# OMP_NUM_THREADS cannot take effect once torch is imported, so limit torch's own pool instead; the interpreters the
# tests start (torchrun's ranks, a kernel, a fresh CLI) read it from the environment: one thread each too, or two
# threads per process on two cores spend their time waiting for each other.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Checkpoints are fsync'd: on tmpfs that costs nothing. /dev/shm when it is there with room for the runs (a container's
# is often 64 MB), set before pytest first asks for its base temp; $PYTEST_DEBUG_TEMPROOT or --basetemp wins.
TMPFS, TMPFS_NEEDED = "/dev/shm", 4 << 30
if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK) and shutil.disk_usage(TMPFS).free >= TMPFS_NEEDED:
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", TMPFS)

# --cpu-flags: the flags `device.read_cpu_flags` returns in this test process (and its forks): the precision policy of
# a CPU with only AVX2, or of one with AVX512-BF16, whatever CPU runs the tests. A CLI started as a new interpreter
# reads the real CPU, so such tests pin --precision.
CPU_FLAG_SETS = {
    "avx2": frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}),
    "avx512_bf16": frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16"}),
}

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-flags", choices=("machine", *CPU_FLAG_SETS), default="machine",
                     help="CPU flags the precision policy sees: this machine's, or those of an AVX2-only or an "
                          "AVX512-BF16 CPU (default: machine)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test that requests a fixture made with `helpers.slow_fixture`, directly or through another
    fixture (a test is slow by what it does, not by its name); give the tests that share a module-scoped slow fixture
    one xdist_group, so that one pytest worker runs them and makes it once (session-scoped ones are shared across
    workers under a file lock: see `trained_once`); put the long tests first (see run_first); skip tests marked
    `realdata` unless $CIFARKIT_DATA names the real set."""
    for item in items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        slow = [d for chain in defs.values() for d in chain if getattr(d.func, SLOW_ATTRIBUTE, False)]
        if slow:
            item.add_marker(pytest.mark.slow)
        shared = sorted(f"{item.path.stem}::{d.argname}" for d in slow if d.scope in ("module", "class"))
        if shared and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    items.sort(key=run_first)
    if os.environ.get("CIFARKIT_DATA"):
        return
    skip = pytest.mark.skip(reason="needs the real CIFAR-10 set: set CIFARKIT_DATA")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def run_first(item: pytest.Item) -> tuple[bool, bool]:
    """The order tests are handed to pytest-xdist's workers (a stable sort: files keep their order within each class):
    the xdist groups first (each a long serial unit for one worker), then the other slow tests, then the quick ones,
    so that the last minutes are many short tests that keep both workers busy rather than one long test alone."""
    return item.get_closest_marker("xdist_group") is None, item.get_closest_marker("slow") is None


@pytest.fixture(scope="session", autouse=True)
def cpu_policy(request: pytest.FixtureRequest) -> Iterator[frozenset[str] | None]:
    """The CPU flags --cpu-flags forces on `device.read_cpu_flags` for the whole test run (None: the machine's own)."""
    name = request.config.getoption("--cpu-flags")
    if name == "machine":
        yield None
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cifarkit.device.read_cpu_flags", lambda: CPU_FLAG_SETS[name])
        yield CPU_FLAG_SETS[name]


def _guard(item: pytest.Item) -> contextlib.AbstractContextManager[object]:
    """The training guard for a test not marked slow; nothing for a slow one."""
    if item.get_closest_marker("slow"):
        return contextlib.nullcontext()
    return training_refused(getattr(item, "module", None))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Fixtures of a test not marked slow, module- and session-scoped ones included, set up under the guard. Under
    --dist loadgroup, a grouped test that pytest-xdist did not tag fails first: xdist writes the group into the test's
    id, which pytest 9.2 no longer lets it do (pytest-dev/pytest-xdist#1386), and the test would run beside the others
    of its group (torchrun's ports, the app server, the browser; a module-scoped run made twice)."""
    if (item.config.getoption("loadgroup", False) and item.get_closest_marker("xdist_group") is not None
            and "@" not in item.nodeid):
        pytest.fail(f"pytest-xdist ignored this test's xdist_group under pytest {pytest.__version__} "
                    f"(pytest-dev/pytest-xdist#1386): install the dev extra's pytest", pytrace=False)
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test not marked slow runs under the guard."""
    with _guard(item):
        return (yield)


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
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
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

def trained_once(tmp_path_factory: pytest.TempPathFactory, name: str, train: Callable[[Path], None]) -> Path:
    """The run folder `name`, trained by `train(folder)` once per test run and shared by every pytest-xdist worker (the
    first trains it under a file lock, the others wait and read it)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the controller's base temp: one per test run, above each worker's own
    out, done = shared / name / "run", shared / name / "trained"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():  # not yet, or a worker failed half-way
            shutil.rmtree(out, ignore_errors=True)
            train(out)
            done.touch()
    return out


@slow_fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run folder trained once per test run: 1 epoch on 200 synthetic images (NOT CIFAR-10), tested on 100. Tests
    read it and never change it (copy it first)."""
    from cifarkit.config import TrainConfig
    from cifarkit.train import fit

    def train(out: Path) -> None:
        fit(TrainConfig(data="synthetic", out=str(out), epochs=1, subset=200, test_subset=100, lr_min=1e-4,
                        lr_max=1e-3, batch_size=64, plots=False), progress=False)

    return trained_once(tmp_path_factory, "tiny-run", train)


@slow_fixture(scope="session")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted reference that the training, resume and fault tests compare against, trained once per
    test run: `cifarkit train SHORT_RUN_ARGS` in-process (2 epochs x 4 steps of 8 of 32 images, tested on 16, in the
    precision the policy picks), `--data synthetic` drawing 64/32 images (NOT CIFAR-10). Checkpoints, config.json,
    history.csv, steps.csv and model.pt; no plots. Tests read it and never change it (copy it first)."""
    import cifarkit.data.sources
    from cifarkit.cli import main

    def train(out: Path) -> None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", SHORT_SYNTHETIC)
            assert main(["train", *SHORT_RUN_ARGS, "--out", str(out)]) == 0

    return trained_once(tmp_path_factory, "short-run", train)
