"""CIFAR-10 in memory: one loader for every common layout, a synthetic stand-in, and class-balanced subsets.

`load_cifar10` reads the official python batches (folder or archive) and image-folder trees (folder or archive);
archives are unpacked once into the cache and decoded trees are cached as one .npz, so later loads take a second.
Every load carries its absolute path and the arrays' fingerprint, kept beside the cache entry once computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarkit.data.archive import (SOURCE_SUFFIX, cache_root, extract_cached, is_archive, record_source,
                                   restricted_loads, save_npz_atomic)
from cifarkit.data.fingerprint import ARRAYS, cached_fingerprint, files_key
from cifarkit.data.images import decode_images
from cifarkit.errors import CifarkitError


log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def class_names(n: int) -> tuple[str, ...]:
    """The names of `n` classes where none are recorded: CIFAR-10's for 10, else class0, class1, ..."""
    return CLASSES if n == len(CLASSES) else tuple(f"class{i}" for i in range(n))


@dataclass(frozen=True)
class Cifar10:
    """The train and test splits as uint8 HWC arrays with int64 labels."""

    train_images: np.ndarray  # uint8 [N, 32, 32, 3], RGB
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, 32, 32, 3]
    test_labels: np.ndarray  # int64 [M]
    classes: tuple[str, ...] = CLASSES
    source: str = ""  # for people: what it is and where it came from
    synthetic: bool = False
    path: str | None = None  # the absolute path it was read from, "synthetic", or None (made in memory)
    fingerprint: str | None = None  # sha256 of the four arrays (see data.fingerprint); None: not computed


def class_balanced_subset(
    images: np.ndarray, labels: np.ndarray, n: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The first n images of a seeded per-class shuffle, taking classes in turn so counts differ by at most one."""
    if n >= len(labels):
        return images, labels
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [idx for rank in range(max(map(len, per_class))) for idx_list in per_class
             if rank < len(idx_list) for idx in (idx_list[rank],)]
    keep = np.sort(np.asarray(order[:n], dtype=np.int64))
    return images[keep], labels[keep]


def subset(data: Cifar10, n_train: int | None, n_test: int | None, *, seed: int = 0) -> Cifar10:
    """`data` with class-balanced train and test subsets (None keeps a split whole). A subset keeps the path it was
    drawn from; it keeps the fingerprint only when nothing was left out, since the fingerprint is of the arrays."""
    train = (data.train_images, data.train_labels)
    test = (data.test_images, data.test_labels)
    for name, n, labels in (("subset", n_train, train[1]), ("test_subset", n_test, test[1])):
        classes = len(np.unique(labels))
        if n is not None and n < min(classes, len(labels)):
            said = f"{n} leaves {classes - n} of the {classes} classes without a single image; give {classes} or more"
            log.warning(f"{name}={said}", extra={"cli": f"--{name.replace('_', '-')} {said}"})
    if n_train is not None:
        train = class_balanced_subset(*train, n_train, seed=seed)
    if n_test is not None:
        test = class_balanced_subset(*test, n_test, seed=seed + 1)
    whole = train[1] is data.train_labels and test[1] is data.test_labels
    return dataclasses.replace(data, train_images=train[0], train_labels=train[1], test_images=test[0],
                               test_labels=test[1], fingerprint=data.fingerprint if whole else None)


# ------------------------------------------------------------------------------------------------------- loading

TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# md5 of the files in the official cifar-10-python.tar.gz: a differing file still loads (people re-export CIFAR-10),
# with a one-line warning
BATCH_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
}
_TREE_CACHE_VERSION = 1  # part of the array-cache key: bump when decoding changes so old entries are not reused


def _field(batch: dict, key: str) -> object:
    """batch[key] for str keys (Python 3 re-exports) or bytes keys (the official Python 2 pickles)."""
    return batch.get(key.encode(), batch.get(key))


def _read_meta(path: Path) -> tuple[str, ...]:
    meta = restricted_loads(path.read_bytes(), path)
    names = _field(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise CifarkitError(f"{path}: no label_names list in it; restore batches.meta from the official archive")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Images (uint8 N×32×32×3), labels (int64 N) and whether the file is byte-identical to the official one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CifarkitError(f"{path}: cannot read it ({exc})") from exc
    official = hashlib.md5(raw, usedforsecurity=False).hexdigest() == BATCH_MD5.get(path.name)
    batch = restricted_loads(raw, path)
    data = _field(batch, "data") if isinstance(batch, dict) else None
    labels = _field(batch, "labels") if isinstance(batch, dict) else None
    if data is None or labels is None:
        raise CifarkitError(f"{path}: not a CIFAR-10 batch (expected a dict with data and labels); download "
                            "CIFAR-10 again")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype.kind not in "ui":
        raise CifarkitError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 N×3072 (3×32×32, planar); "
                            "re-export it or download CIFAR-10 again")
    if labels.ndim != 1 or len(labels) != len(data) or (labels.size and labels.dtype.kind not in "ui"):
        raise CifarkitError(f"{path}: {labels.size} labels for {len(data)} images; re-export it or download "
                            "CIFAR-10 again")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise CifarkitError(f"{path}: label {int(bad[0])} is outside 0..{num_classes - 1}; re-export it or download "
                            "CIFAR-10 again")
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise CifarkitError(f"{path}: pixel values outside 0..255; re-export it as uint8")
    # each row is 1024 red, then 1024 green, then 1024 blue values (channel-planar); the contract is HWC
    images = np.ascontiguousarray(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64), official


def _load_pickle_folder(folder: Path) -> Cifar10:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
    if missing:
        raise CifarkitError(f"{folder}: {', '.join(missing)} missing; the folder must hold data_batch_1..5 and "
                            "test_batch, download CIFAR-10 again")
    meta = folder / "batches.meta"
    classes = _read_meta(meta) if meta.is_file() else CLASSES
    train = [_read_batch(folder / name, len(classes)) for name in TRAIN_BATCHES]
    test = _read_batch(folder / TEST_BATCH, len(classes))
    differ = [name for name, part in zip((*TRAIN_BATCHES, TEST_BATCH), (*train, test)) if not part[2]]
    if differ:
        log.warning("%s: %s differ from the official CIFAR-10 files (md5); loading them anyway", folder,
                    ", ".join(differ))
    data = Cifar10(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test[0], test[1],
                   classes)
    stamp = files_key(folder / name for name in (*TRAIN_BATCHES, TEST_BATCH))  # any rewritten batch: a new entry
    data = _with_fingerprint(data, sidecar := cache_root() / "arrays" / f"{_path_key(folder)}-{stamp}.sha256")
    record_source(sidecar, folder)
    return data


def _path_key(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


def _with_fingerprint(data: Cifar10, sidecar: Path) -> Cifar10:
    """`data` with its fingerprint, kept in `sidecar` beside the cache entry."""
    return dataclasses.replace(data, fingerprint=cached_fingerprint(sidecar, {k: getattr(data, k) for k in ARRAYS}))


def _list_split(split_dir: Path) -> dict[str, list[os.DirEntry[str]]]:
    """Class folder name -> its image files sorted by name (hidden files such as .DS_Store are skipped)."""
    classes: dict[str, list[os.DirEntry[str]]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = sorted((f for f in os.scandir(entry.path) if not f.name.startswith(".") and f.is_file()),
                       key=lambda f: f.name)
        if not files:
            raise CifarkitError(f"{entry.path}: empty class folder; add its images or remove it")
        classes[entry.name] = files
    if not classes:
        raise CifarkitError(f"{split_dir}: no class folders; expected {split_dir}/<class>/*.png")
    return classes


def _load_image_tree(root: Path, archive_key: str | None = None) -> Cifar10:
    """Decode the tree, or read its arrays from the cache. `archive_key` names the cache entry of an extracted archive:
    nothing changes that tree, so its arrays are found without listing 60,000 files."""
    arrays_dir = cache_root() / "arrays"
    if archive_key is not None and (cached := _read_array_cache(arrays_dir / f"{archive_key}.npz", None)) is not None:
        return _with_fingerprint(cached, arrays_dir / f"{archive_key}.sha256")
    listing = {split: _list_split(root / split) for split in ("train", "test")}
    if set(listing["train"]) != set(listing["test"]):
        only_train = sorted(set(listing["train"]) - set(listing["test"]))
        only_test = sorted(set(listing["test"]) - set(listing["train"]))
        raise CifarkitError(f"{root}: class folders differ between train/ and test/ (only in train: {only_train}, only "
                            f"in test: {only_test}); give both the same class folders")
    names = set(listing["train"])
    classes = CLASSES if names == set(CLASSES) else tuple(sorted(names))
    if archive_key is not None:
        folder_key, cache_file = None, arrays_dir / f"{archive_key}.npz"
    else:  # a user's folder: the key covers every file's path, size and mtime, so any change makes a new entry
        key = hashlib.sha256(f"v{_TREE_CACHE_VERSION}\n{classes}\n".encode())
        for split, by_class in listing.items():
            for name in classes:
                for f in by_class[name]:
                    stat = f.stat()
                    key.update(f"{split}/{name}/{f.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        folder_key = _path_key(root)
        cache_file = arrays_dir / f"{folder_key}-{key.hexdigest()[:16]}.npz"
        if (cached := _read_array_cache(cache_file, classes)) is not None:
            return _with_fingerprint(cached, cache_file.with_suffix(".sha256"))
    arrays: dict[str, np.ndarray] = {}
    for split, by_class in listing.items():
        paths = [f.path for name in classes for f in by_class[name]]
        arrays[f"{split}_images"] = decode_images(paths)
        arrays[f"{split}_labels"] = np.repeat(np.arange(len(classes), dtype=np.int64),
                                              [len(by_class[name]) for name in classes])
    try:
        save_npz_atomic(cache_file, classes=np.array(classes), **arrays)
        if folder_key:  # a folder of the user's (an archive's tree is named by the note of its extracted entry)
            record_source(cache_file, root)
        for old in cache_file.parent.glob(f"{folder_key}-*.npz") if folder_key else ():  # this folder's older states
            if old != cache_file:
                for suffix in (".npz", ".sha256", SOURCE_SUFFIX):
                    old.with_suffix(suffix).unlink(missing_ok=True)
        cache_file.with_suffix(".sha256").unlink(missing_ok=True)  # left by an entry that was damaged and rebuilt
    except OSError as exc:  # a read-only cache only costs speed
        log.warning("cannot write the array cache %s (%s); the next load decodes again", cache_file, exc)
    return _with_fingerprint(Cifar10(classes=classes, **arrays), cache_file.with_suffix(".sha256"))


def _read_array_cache(path: Path, classes: tuple[str, ...] | None) -> Cifar10 | None:
    """The cached arrays at `path` (None if absent, damaged, or for other classes than `classes` when given)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:  # allow_pickle stays False: the cache holds plain arrays only
            arrays = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
            stored = tuple(str(c) for c in z["classes"].tolist())
    except Exception as exc:  # a damaged cache entry is rebuilt, never an error
        log.warning("ignoring unreadable array cache %s (%s)", path, exc)
        return None
    if classes is not None and stored != classes:
        return None
    return Cifar10(classes=stored, **arrays)


def _layout_of(folder: Path) -> str | None:
    if (folder / "data_batch_1").is_file() or (folder / TEST_BATCH).is_file():
        return "pickle"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return "tree"
    return None


def _find_layout(folder: Path, origin: Path) -> tuple[str, Path]:
    """The layout of `folder` or of its one sub-folder holding one (cifar-10-batches-py/, or a top folder)."""
    kind = _layout_of(folder)
    if kind is not None:
        return kind, folder
    found = [(k, sub) for sub in sorted(folder.iterdir())
             if sub.is_dir() and not sub.name.startswith(".") and (k := _layout_of(sub)) is not None]
    if len(found) > 1:
        raise CifarkitError(f"{origin}: holds several CIFAR-10 layouts ({', '.join(s.name for _, s in found)}); "
                            "pass one of them")
    if not found:
        raise CifarkitError(f"{origin}: no CIFAR-10 layout found; expected cifar-10-batches-py/ (data_batch_1..5, "
                            "test_batch) or train/<class>/ and test/<class>/ image folders")
    return found[0]


def load_cifar10(source: str | os.PathLike[str]) -> Cifar10:
    """Load CIFAR-10 from the official python batches or an image-folder tree, as a folder or a .tar.gz/.tgz/.tar."""
    path = Path(source).expanduser()
    if not path.exists():
        raise CifarkitError(f"{path}: no such file or folder; pass a CIFAR-10 folder or archive, or --data synthetic")
    if path.is_file() and not is_archive(path):
        raise CifarkitError(f"{path}: neither a folder nor a .tar.gz/.tgz/.tar archive; pass a CIFAR-10 folder or "
                            "archive")
    try:
        extracted = extract_cached(path) if path.is_file() else None
        kind, root = _find_layout(extracted or path, path)
        data = _load_pickle_folder(root) if kind == "pickle" else _load_image_tree(root, extracted and extracted.name)
    except OSError as exc:  # unreadable folders or files met on the way (permissions, I/O errors)
        raise CifarkitError(f"{path}: cannot read it ({exc}); check the permissions of the data") from exc
    layout = "python batches" if kind == "pickle" else "image folders"
    where = str(path.resolve())  # the data the user gave, not the cache's copy of it
    return dataclasses.replace(data, source=f"CIFAR-10 ({layout}) from {where}", path=where)
