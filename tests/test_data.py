"""load_cifar10 on every layout, the caches, resolve_data, and the one-line errors for bad input."""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import cifarkit.data.archive as archive
import cifarkit.data.cifar10 as cifar10_module
import cifarkit.data.images as images
import cifarkit.data.sources as sources
from cifarkit.data import CLASSES, Cifar10, load_cifar10, make_synthetic, resolve_data
from cifarkit.errors import CifarkitError


@pytest.fixture(autouse=True)
def _private_cache(request: pytest.FixtureRequest) -> None:
    """Every test here but the real-data one gets its own cache, so none reads or fills ~/.cache/cifarkit; the
    real-data test uses the user's cache, as decoding 60,000 PNGs every run would take a minute."""
    if request.node.get_closest_marker("realdata") is None:
        request.getfixturevalue("cifar_cache")


def assert_same(loaded: Cifar10, expected: Cifar10, order: np.ndarray | None = None) -> None:
    """Arrays equal exactly (pixel order included), dtypes and shapes as the contract says."""
    train = slice(None) if order is None else order
    assert loaded.train_images.dtype == np.uint8 and loaded.test_images.dtype == np.uint8
    assert loaded.train_labels.dtype == np.int64 and loaded.test_labels.dtype == np.int64
    assert loaded.train_images.shape == (len(expected.train_labels), 32, 32, 3)
    np.testing.assert_array_equal(loaded.train_images, expected.train_images[train])
    np.testing.assert_array_equal(loaded.train_labels, expected.train_labels[train])
    test = slice(None) if order is None else np.argsort(expected.test_labels, kind="stable")
    np.testing.assert_array_equal(loaded.test_images, expected.test_images[test])
    np.testing.assert_array_equal(loaded.test_labels, expected.test_labels[test])
    assert loaded.classes == expected.classes
    assert not loaded.synthetic


# ----------------------------------------------------------------------------------------------- python batches

@pytest.mark.parametrize("give", ["batches", "parent"])
def test_pickle_folder_round_trip(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, give: str) -> None:
    """Official-format Python 2 batches load back exactly, CHW-planar rows turned into HWC, from the
    cifar-10-batches-py folder or its parent."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "cifar-10-batches-py")
    loaded = load_cifar10(folder if give == "batches" else tmp_path)
    assert_same(loaded, tiny_data)
    assert loaded.classes == CLASSES
    assert "python batches" in loaded.source


def test_pixel_order_is_planar_rgb(tmp_path: Path, cifar_files: SimpleNamespace) -> None:
    """A row of 1024 reds, 1024 greens, 1024 blues becomes image[y, x] == (r, g, b) at y*32+x."""
    data = make_synthetic(n_train=10, n_test=10)
    folder = cifar_files.pickle_folder(data, tmp_path / "b")
    row = cifar_files.batch_dict(data.train_images[:2], data.train_labels[:2], "x")[b"data"][0]
    loaded = load_cifar10(folder)
    y, x = 5, 17
    assert tuple(loaded.train_images[0, y, x]) == (row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_reexports_load(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                                protocol: int) -> None:
    """Batches re-exported by Python 3 (str keys, pickle protocols 2, 4, 5) load through the restricted unpickler."""
    def dumps(obj: dict) -> bytes:
        return pickle.dumps({k.decode(): v for k, v in obj.items()}, protocol=protocol)

    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b", dumps=dumps)
    assert_same(load_cifar10(folder), tiny_data)


def test_reexport_warns_in_one_line(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Batches whose md5 differs from the official files still load, with exactly one one-line warning naming them."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="cifarkit.data"):
        load_cifar10(folder)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "\n" not in message and "data_batch_1" in message and "test_batch" in message and str(folder) in message


def test_official_md5_no_warning(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                                 monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Files matching the official md5s load silently."""
    from cifarkit.data.download import file_md5

    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    monkeypatch.setattr(cifar10_module, "BATCH_MD5", {name: file_md5(folder / name) for name in cifar10_module.BATCH_MD5})
    with caplog.at_level(logging.WARNING, logger="cifarkit.data"):
        load_cifar10(folder)
    assert not caplog.records


def test_official_archive_extracts_once(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                                        cifar_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cifar-10-python.tar.gz loads exactly; the second load reuses the cache entry; a different file of the same
    name gets its own entry."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "src" / "cifar-10-batches-py")
    tgz = cifar_files.tar(tmp_path / "cifar-10-python.tar.gz", folder, "cifar-10-batches-py")
    loaded = load_cifar10(tgz)
    assert_same(loaded, tiny_data)
    assert str(tgz) in loaded.source
    entries = list((cifar_cache / "extracted").iterdir())
    assert len(entries) == 1 and (entries[0] / "cifar-10-batches-py" / "data_batch_1").is_file()

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted again")

    with monkeypatch.context() as patch:
        patch.setattr(archive, "_extract_checked", no_extraction)
        assert_same(load_cifar10(tgz), tiny_data)
    other = make_synthetic(n_train=20, n_test=10, seed=1)
    cifar_files.tar(tgz, cifar_files.pickle_folder(other, tmp_path / "src2" / "b"), "cifar-10-batches-py")
    os.utime(tgz, ns=(1, 1))  # a different mtime even if the size were equal
    assert_same(load_cifar10(tgz), other)
    assert len(list((cifar_cache / "extracted").iterdir())) == 2


# ----------------------------------------------------------------------------------------------- image trees

@pytest.mark.parametrize("top", [None, "cifar10"])
def test_image_tree_round_trip(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                               top: str | None) -> None:
    """A PNG tree (with or without one top folder) loads exactly, class by class, in official class order."""
    root = tmp_path / "data"
    cifar_files.image_tree(tiny_data, root / top if top else root)
    loaded = load_cifar10(root)
    assert_same(loaded, tiny_data, cifar_files.tree_order(tiny_data.train_labels))
    assert "image folders" in loaded.source


def test_image_tree_second_load_hits_array_cache(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                                                 cifar_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second load of an unchanged tree decodes nothing (it reads the .npz); changing a file decodes again."""
    root = cifar_files.image_tree(tiny_data, tmp_path / "tree")
    first = load_cifar10(root)
    assert len(list((cifar_cache / "arrays").glob("*.npz"))) == 1

    def no_decoding(path: str) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images, "decode_image", no_decoding)
    second = load_cifar10(root)
    np.testing.assert_array_equal(second.train_images, first.train_images)
    np.testing.assert_array_equal(second.test_labels, first.test_labels)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "cat" / "zzz.png")
    with pytest.raises(AssertionError, match="decoded"):
        load_cifar10(root)


def test_image_tree_archive(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A .tgz of cifar10/{train,test}/<class>/*.png (the shared set's layout) loads exactly; the second load neither
    extracts nor decodes."""
    root = cifar_files.image_tree(tiny_data, tmp_path / "src" / "cifar10")
    tgz = cifar_files.tar(tmp_path / "cifar10-png.tgz", root, "cifar10")
    assert_same(load_cifar10(tgz), tiny_data, cifar_files.tree_order(tiny_data.train_labels))
    monkeypatch.setattr(archive, "_extract_checked", lambda *a: pytest.fail("extracted again"))
    monkeypatch.setattr(images, "decode_image", lambda p: pytest.fail("decoded again"))
    assert_same(load_cifar10(tgz), tiny_data, cifar_files.tree_order(tiny_data.train_labels))


def test_other_class_names_sort(tmp_path: Path, cifar_files: SimpleNamespace) -> None:
    """Folder names that are not the CIFAR-10 classes are ordered by name and labelled in that order."""
    data = make_synthetic(n_train=12, n_test=6, num_classes=3)
    data = Cifar10(data.train_images, data.train_labels, data.test_images, data.test_labels, ("zebra", "ant", "moth"))
    loaded = load_cifar10(cifar_files.image_tree(data, tmp_path / "t"))
    assert loaded.classes == ("ant", "moth", "zebra")
    for c, name in enumerate(loaded.classes):
        assert (loaded.train_labels == c).sum() == (data.train_labels == data.classes.index(name)).sum()


def test_jpeg_tree_loads(tmp_path: Path, cifar_files: SimpleNamespace) -> None:
    """JPEG images (lossy, so compared by shape only) load as RGB uint8."""
    data = make_synthetic(n_train=10, n_test=10)
    loaded = load_cifar10(cifar_files.image_tree(data, tmp_path / "t", suffix=".jpg"))
    assert loaded.train_images.shape == (10, 32, 32, 3) and loaded.train_images.dtype == np.uint8


@pytest.mark.slow
def test_parallel_decoding_matches_serial(tmp_path: Path, cifar_files: SimpleNamespace,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding in helper processes gives the same arrays as decoding in this one (the decoder is disabled here, in
    the parent, so a silent fall-back to serial decoding would fail)."""
    data = make_synthetic(n_train=30, n_test=10)
    root = cifar_files.image_tree(data, tmp_path / "t")
    monkeypatch.setattr(images, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(images, "decode_image", lambda p: pytest.fail("decoded in the parent process"))
    assert_same(load_cifar10(root), data, cifar_files.tree_order(data.train_labels))


def test_parallel_decoding_names_bad_file(tmp_path: Path, cifar_files: SimpleNamespace,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad image met by a helper process still gives the one-line CifarkitError naming that file."""
    root = cifar_files.image_tree(make_synthetic(n_train=30, n_test=10), tmp_path / "t")
    monkeypatch.setattr(images, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    Image.new("RGB", (16, 16)).save(root / "train" / "bird" / "small.png")
    expect_error(root, root / "train" / "bird" / "small.png", "16×16")


# ----------------------------------------------------------------------------------------------- resolve_data

def test_resolve_synthetic_says_not_cifar() -> None:
    """--data synthetic is 5000/1000 learnable images whose source says plainly it is not CIFAR-10."""
    data = resolve_data("synthetic")
    assert data.synthetic and "NOT CIFAR-10" in data.source
    assert len(data.train_labels) == 5000 and len(data.test_labels) == 1000


def test_resolve_order(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, cifar_cache: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A path loads; None uses $CIFARKIT_DATA, then the cached official archive, then a download into the cache."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    assert_same(resolve_data(str(folder)), tiny_data)
    monkeypatch.setenv("CIFARKIT_DATA", str(folder))
    assert_same(resolve_data(None), tiny_data)
    monkeypatch.delenv("CIFARKIT_DATA")

    downloads: list[Path] = []

    def fake_download(dest: Path) -> Path:  # stands in for the network: writes what the download would
        downloads.append(Path(dest))
        return cifar_files.tar(Path(dest) / "cifar-10-python.tar.gz", folder, "cifar-10-batches-py")

    monkeypatch.setattr(sources, "download_cifar10", fake_download)
    cifar_cache.mkdir(parents=True, exist_ok=True)
    assert_same(resolve_data(None), tiny_data)
    assert downloads == [cifar_cache]
    assert_same(resolve_data(None), tiny_data)  # the cached archive now
    (cifar_cache / "cifar-10-python.tar.gz").unlink()
    assert_same(resolve_data(None), tiny_data)  # its extracted folder
    assert len(downloads) == 1


# ----------------------------------------------------------------------------------------------- bad input

def expect_error(source: Path, names: Path | str, *fragments: str) -> None:
    """load_cifar10(source) raises one CifarkitError line naming `names` (and each fragment)."""
    with pytest.raises(CifarkitError) as info:
        load_cifar10(source)
    message = str(info.value)
    assert "\n" not in message and str(names) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist is named, with what to pass instead."""
    expect_error(tmp_path / "nope", tmp_path / "nope", "no such file")


def test_unknown_layout(tmp_path: Path) -> None:
    """A folder with no layout we know is named, with the layouts we expect."""
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    expect_error(tmp_path / "x", tmp_path / "x", "no CIFAR-10 layout", "train/<class>")


def test_not_an_archive(tmp_path: Path) -> None:
    """A file that is not a tar archive by name is refused by name."""
    (tmp_path / "data.zip").write_bytes(b"PK")
    expect_error(tmp_path / "data.zip", tmp_path / "data.zip", "archive")


def test_corrupt_archive(tmp_path: Path, cifar_cache: Path) -> None:
    """A .tar.gz that is not a readable archive, or is cut short, is named and nothing is left in the cache."""
    (tmp_path / "c.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))
    expect_error(tmp_path / "c.tar.gz", tmp_path / "c.tar.gz", "corrupt")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blob").write_bytes(os.urandom(100_000))
    with tarfile.open(tmp_path / "cut.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src", arcname="src")
    raw = (tmp_path / "cut.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    expect_error(tmp_path / "cut.tar.gz", tmp_path / "cut.tar.gz", "corrupt")
    assert not any(p.is_file() for p in cifar_cache.rglob("*"))


def test_missing_batch(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace) -> None:
    """A python folder lacking data_batch_3 names the folder and the missing file."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    (folder / "data_batch_3").unlink()
    expect_error(folder, folder, "data_batch_3")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a dict"])
def test_unparseable_batch(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, damage: str) -> None:
    """A truncated, garbage or non-dict batch file is a CifarkitError naming that file."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    bad = folder / "data_batch_2"
    raw = bad.read_bytes()
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": os.urandom(500),
                     "not a dict": cifar_files.py2_dumps([1, 2, 3])}[damage])
    expect_error(folder, bad)


@pytest.mark.parametrize("problem", ["shape", "length", "label 10", "label -1", "pixels"])
def test_bad_batch_contents(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, problem: str) -> None:
    """Data not N×3072, labels of another length, labels outside 0..9, or pixels outside 0..255 name the file."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    batch = cifar_files.batch_dict(tiny_data.test_images, tiny_data.test_labels, "test")
    if problem == "shape":
        batch[b"data"] = batch[b"data"][:, :3000]
    elif problem == "length":
        batch[b"labels"] = batch[b"labels"][:-1]
    elif problem == "pixels":
        batch[b"data"] = batch[b"data"].astype(np.int32) + 300
    else:
        batch[b"labels"][7] = int(problem.split()[1])
    (folder / "test_batch").write_bytes(cifar_files.py2_dumps(batch))
    expect_error(folder, folder / "test_batch", {"shape": "3072", "length": "labels", "pixels": "0..255",
                                                 "label 10": "label 10", "label -1": "label -1"}[problem])


def test_meta_without_names(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace) -> None:
    """A batches.meta without label_names names that file."""
    folder = cifar_files.pickle_folder(tiny_data, tmp_path / "b")
    (folder / "batches.meta").write_bytes(cifar_files.py2_dumps({b"num_vis": 3072}))
    expect_error(folder, folder / "batches.meta", "label_names")


@pytest.mark.parametrize("bad", ["text", "truncated png", "wrong size"])
def test_bad_image_file(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace, bad: str) -> None:
    """A non-image, an undecodable image, or an image that is not 32×32 in a tree is named."""
    root = cifar_files.image_tree(tiny_data, tmp_path / "t")
    path = root / "test" / "dog" / "bad.png"
    if bad == "text":
        path = path.with_name("notes.txt")
        path.write_text("not an image")
    elif bad == "truncated png":
        path.write_bytes((root / "test" / "dog").glob("0*.png").__next__().read_bytes()[:60])
    else:
        Image.new("RGB", (32, 30)).save(path)
    expect_error(root, path, "32×30" if bad == "wrong size" else "decode")


def test_class_folders_differ(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace) -> None:
    """Different class folders in train/ and test/ name the tree and the odd folders."""
    root = cifar_files.image_tree(tiny_data, tmp_path / "t")
    (root / "test" / "ship").rename(root / "test" / "boat")
    expect_error(root, root, "boat", "ship")


def test_empty_class_folder(tmp_path: Path, tiny_data: Cifar10, cifar_files: SimpleNamespace) -> None:
    """An empty class folder is named."""
    root = cifar_files.image_tree(tiny_data, tmp_path / "t")
    for f in (root / "train" / "frog").iterdir():
        f.unlink()
    expect_error(root, root / "train" / "frog", "empty")


def test_archive_error_names_archive(tmp_path: Path, cifar_files: SimpleNamespace) -> None:
    """An archive holding no known layout is named by its own path, not the cache folder."""
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    tgz = cifar_files.tar(tmp_path / "junk.tar.gz", tmp_path / "junk", "junk")
    expect_error(tgz, tgz, "no CIFAR-10 layout")


# ----------------------------------------------------------------------------------------------- the real set

@pytest.mark.realdata
def test_real_cifar10() -> None:
    """$CIFARKIT_DATA is the full set: 50,000/10,000 images, 5,000/1,000 per class, the official statistics."""
    data = load_cifar10(os.environ["CIFARKIT_DATA"])
    assert data.train_images.shape == (50000, 32, 32, 3) and data.test_images.shape == (10000, 32, 32, 3)
    assert data.classes == CLASSES
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    mean = data.train_images.reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=5e-4)
