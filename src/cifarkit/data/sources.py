"""Which data a run uses. A new run: --data, else $CIFARKIT_DATA, else the cache, else a download. A run that exists
(resume, evaluate, report): exactly the data it recorded, its path checked against its fingerprint, never whatever
$CIFARKIT_DATA or the cache hold today."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cifarkit.data.archive import cache_root
from cifarkit.data.cifar10 import Cifar10, load_cifar10
from cifarkit.data.download import OFFICIAL_ARCHIVE_NAME, download_cifar10
from cifarkit.data.fingerprint import fingerprint_arrays, short
from cifarkit.data.synthetic import make_synthetic
from cifarkit.errors import CifarkitError

SYNTHETIC = "synthetic"  # --data synthetic: the stand-in below, recorded under this name
SYNTHETIC_SIZES = (5000, 1000)  # train, test images of `--data synthetic`


def data_fingerprint(data: Cifar10) -> str:
    """The data's fingerprint: the one its loader found, else computed from its arrays (data made in memory)."""
    return data.fingerprint or fingerprint_arrays(data.train_images, data.train_labels, data.test_images,
                                                  data.test_labels)


def resolve_data(arg: str | os.PathLike[str] | None) -> Cifar10:
    """The data set for --data: "synthetic", a path, or (None) $CIFARKIT_DATA, the cache, a download. The result
    carries its absolute path and fingerprint, which a run records, and says in `source` how it was found."""
    if arg is not None and str(arg).strip().lower() == SYNTHETIC:
        data = make_synthetic(n_train=SYNTHETIC_SIZES[0], n_test=SYNTHETIC_SIZES[1])
        return dataclasses.replace(data, path=SYNTHETIC, fingerprint=data_fingerprint(data))
    if arg:
        return load_cifar10(arg)
    if os.environ.get("CIFARKIT_DATA"):
        try:
            return _found(resolve_data(os.environ["CIFARKIT_DATA"]), "$CIFARKIT_DATA")
        except CifarkitError as e:
            fix = "fix or unset CIFARKIT_DATA, or pass data="
            raise CifarkitError(f"$CIFARKIT_DATA: {e} ({fix})",
                                cli=f"$CIFARKIT_DATA: {e.cli_line()} ({fix.replace('data=', '--data')})") from e
    root = cache_root()
    if (root / OFFICIAL_ARCHIVE_NAME).is_file():
        return _found(load_cifar10(root / OFFICIAL_ARCHIVE_NAME), "the cache")
    extracted = sorted((root / "extracted").glob("cifar-10-python-*/cifar-10-batches-py"))
    if extracted:  # extracted earlier, archive since deleted
        return _found(load_cifar10(extracted[-1]), "the cache")
    return _found(load_cifar10(download_cifar10(root)), "a download")


def _found(data: Cifar10, how: str) -> Cifar10:
    return dataclasses.replace(data, source=f"{data.source}, found through {how}")


def recorded_data(path: str | None, fingerprint: str | None, *, owner: str) -> Cifar10:
    """Exactly the data that `owner` (e.g. "run runs/a") recorded: `path` itself, checked against `fingerprint`."""
    if path is None:
        hint = "trained on data made in memory, or by an older cifarkit"
        raise CifarkitError(f"{owner} records no data path ({hint}); pass data= with the data it was trained on",
                            cli=f"{owner} records no data path ({hint}); pass --data with the data it was trained on")
    if path != SYNTHETIC and not Path(path).exists():
        raise CifarkitError(f"the data {owner} was trained on is gone: no {path}; put it back, or pass data= with "
                            "a copy of it", cli=f"the data {owner} was trained on is gone: no {path}; put it back, "
                            "or pass --data with a copy of it")
    data = resolve_data(path)
    got = data_fingerprint(data)
    if fingerprint and got != fingerprint:
        raise CifarkitError(f"{path} changed since {owner} was trained on it: data fingerprint {short(got)} now, "
                            f"{short(fingerprint)} recorded; restore the data it was trained on")
    return dataclasses.replace(data, source=f"{data.source}, recorded by the run")


def check_same_data(data: Cifar10, fingerprint: str | None, *, owner: str) -> None:
    """Refuse data given for `owner` unless its fingerprint is the recorded one (none recorded: accepted)."""
    got = data_fingerprint(data)
    if fingerprint and got != fingerprint:
        where = data.path or "the data given"
        raise CifarkitError(f"refused: {where} (data fingerprint {short(got)}) is not the data {owner} was trained "
                            f"on ({short(fingerprint)}); give the same data, or start a new run")


def describe_data(data: Cifar10, fingerprint: str | None, *, test: bool = True) -> str:
    """One line for people: the data, its short fingerprint and image counts (`fingerprint`: of the whole set a
    subset was drawn from; `test=False`: for work that uses no test image, such as the LR range test)."""
    counts = f"{len(data.train_labels)} train / {len(data.test_labels)} test images" if test else \
        f"{len(data.train_labels)} train images"
    return f"data: {data.source}; fingerprint {short(fingerprint)}; {counts}"


def data_of_run(path: str | None, fingerprint: str | None, given: str | None, *, owner: str) -> Cifar10:
    """`--data` when given (said to be or not to be the run's own data); else exactly the data the run recorded
    (`path`, checked against `fingerprint`)."""
    if given is None:
        return recorded_data(path, fingerprint, owner=owner)
    data = resolve_data(given)
    own = fingerprint is not None and data_fingerprint(data) == fingerprint
    which = "the data the run was trained on" if own else "not the data the run was trained on"
    return dataclasses.replace(data, source=f"{data.source}, given by --data ({which})")
