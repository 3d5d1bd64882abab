"""A run keeps to its data. Whichever way the data was found (--data, $CIFARKIT_DATA, the cache, a download), the run
records its absolute path and fingerprint in config.json and in every checkpoint; resume, evaluate and report then use
exactly that data, or stop with one line naming both fingerprints, and never fall back to a cache or a download."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import cifarkit.data.fingerprint
import cifarkit.data.sources
import cifarkit.train
from cifarkit.checkpoint import load_checkpoint
from helpers import assert_one_error_line, checkpoint_position, run_cli as cli, snapshot
from cifarkit.data import load_cifar10, make_synthetic, recorded_data
from cifarkit.data.fingerprint import fingerprint_arrays, short
from cifarkit.errors import CifarkitError

ARGS = ["--subset", "8", "--test-subset", "8", "--batch-size", "8", "--epochs", "1", "--lr-min", "1e-4",
        "--lr-max", "1e-3", "--no-plots", "--device", "cpu"]


def recorded(run: Path) -> tuple[str, str]:
    """(data, data_fingerprint) of config.json, after checking that the checkpoint holds the same."""
    config = json.loads((run / "config.json").read_text())
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert (saved["data"], saved["data_fingerprint"]) == (config["data"], config["data_fingerprint"])
    return config["data"], config["data_fingerprint"]


def arrays_fingerprint(path: Path) -> str:
    """The fingerprint computed here from the loaded arrays, not read from the cache."""
    d = load_cifar10(path)
    return fingerprint_arrays(d.train_images, d.train_labels, d.test_images, d.test_labels)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(dest: Path) -> Path:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(cifarkit.data.sources, "download_cifar10", refuse)


@pytest.fixture
def trees(tmp_path: Path, cifar_files: SimpleNamespace, cifar_cache: Path) -> SimpleNamespace:
    """Two different tiny image trees (20 train / 10 test each), and a copy of the first elsewhere."""
    a = cifar_files.image_tree(make_synthetic(20, 10, seed=1), tmp_path / "a")
    b = cifar_files.image_tree(make_synthetic(20, 10, seed=2), tmp_path / "b")
    copy = shutil.copytree(a, tmp_path / "copy-of-a")
    return SimpleNamespace(a=a, b=b, copy=copy)


def test_fingerprint_is_kept_beside_the_cache(tmp_path: Path, cifar_files: SimpleNamespace, cifar_cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load of a tree or pickle folder hashes its arrays; a warm load reads the stored fingerprint without
    hashing; a changed file gives a new fingerprint. Both carry their absolute path."""
    data = make_synthetic(20, 10)
    tree = cifar_files.image_tree(data, tmp_path / "tree")
    pickles = cifar_files.pickle_folder(data, tmp_path / "py")
    first = {p: load_cifar10(p) for p in (tree, pickles)}
    assert first[pickles].fingerprint == fingerprint_arrays(data.train_images, data.train_labels,
                                                            data.test_images, data.test_labels)
    assert first[tree].path == str(tree.resolve()) and first[pickles].path == str(pickles.resolve())
    assert len(list((cifar_cache / "arrays").glob("*.sha256"))) == 2

    def no_hashing(*arrays: np.ndarray) -> str:
        raise AssertionError("a warm load hashed the arrays again")

    with monkeypatch.context() as mp:
        mp.setattr(cifarkit.data.fingerprint, "fingerprint_arrays", no_hashing)
        assert all(load_cifar10(p).fingerprint == first[p].fingerprint for p in first)
    png = next((tree / "train" / "cat").iterdir())
    Image.fromarray(255 - np.asarray(Image.open(png))).save(png)
    assert load_cifar10(tree).fingerprint not in (None, first[tree].fingerprint)


def test_recorded_data_is_never_replaced(tmp_path: Path, cifar_files: SimpleNamespace, cifar_cache: Path,
                                         monkeypatch: pytest.MonkeyPatch, no_download: None) -> None:
    """recorded_data loads the recorded path only: with no path recorded, or the path gone, it is one line, even
    while $CIFARKIT_DATA and the cache hold a data set."""
    folder = cifar_files.pickle_folder(make_synthetic(20, 10), tmp_path / "py")
    monkeypatch.setenv("CIFARKIT_DATA", str(folder))
    cifar_cache.mkdir(parents=True, exist_ok=True)
    cifar_files.tar(cifar_cache / "cifar-10-python.tar.gz", folder, "cifar-10-batches-py")
    with pytest.raises(CifarkitError, match="records no data path.*pass data="):
        recorded_data(None, "0" * 64, owner="run r")
    with pytest.raises(CifarkitError, match="the data run r was trained on is gone: no /nowhere"):
        recorded_data("/nowhere", "0" * 64, owner="run r")
    with pytest.raises(CifarkitError, match=f"{short(load_cifar10(folder).fingerprint)} now, 000000000000 recorded"):
        recorded_data(str(folder), "0" * 64, owner="run r")


@pytest.mark.slow
@pytest.mark.parametrize("route", ["flag", "env", "cache", "download"])
def test_every_route_records_path_and_fingerprint(route: str, tmp_path: Path, cifar_files: SimpleNamespace,
                                                  cifar_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--data (a relative path), $CIFARKIT_DATA, the cached official archive and a download: config.json and the
    checkpoint record the absolute path and the fingerprint of the arrays; the header names both before training."""
    monkeypatch.chdir(tmp_path)
    data = make_synthetic(20, 10)
    argv = ["train", *ARGS, "--out", "run"]
    if route in ("flag", "env"):
        source = cifar_files.image_tree(data, tmp_path / "tree")
        if route == "flag":
            argv += ["--data", "tree"]
        else:
            monkeypatch.setenv("CIFARKIT_DATA", str(source))
    else:
        folder = cifar_files.pickle_folder(data, tmp_path / "py")
        source = cifar_cache / "cifar-10-python.tar.gz"
        cifar_cache.mkdir(parents=True, exist_ok=True)
        if route == "cache":
            cifar_files.tar(source, folder, "cifar-10-batches-py")
        else:
            monkeypatch.setattr(cifarkit.data.sources, "download_cifar10",
                                lambda dest: cifar_files.tar(Path(dest) / source.name, folder, "cifar-10-batches-py"))
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    path, fingerprint = recorded(tmp_path / "run")
    assert path == str(source.resolve()) and Path(path).is_absolute()
    assert fingerprint == arrays_fingerprint(source)
    header = next(line for line in err.splitlines() if line.startswith("data: "))  # messages go to stderr
    assert header.startswith("data: ") and str(source) in header and short(fingerprint) in header


@pytest.mark.slow
def test_changed_or_missing_data_stops_resume_evaluate_and_report(trees: SimpleNamespace, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, no_download: None,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A run trained through $CIFARKIT_DATA, and a copy of it stopped after its last checkpoint, before its final
    weights (so that it has something to resume). One file of their data changes: `train --resume` of the copy,
    `evaluate` and `report` of the run stop with one line naming both short fingerprints. The data is then gone: one
    line saying so, no download, no other data (though $CIFARKIT_DATA now names another set), and nothing in either
    folder changes."""
    run, stopped = tmp_path / "run", tmp_path / "stopped"
    monkeypatch.setenv("CIFARKIT_DATA", str(trees.a))
    assert cli(["train", *ARGS, "--out", str(run)], capsys)[0] == 0
    shutil.copytree(run, stopped)
    (stopped / "model.pt").unlink()
    _, fingerprint = recorded(run)
    png = next((trees.a / "test" / "dog").iterdir())
    Image.fromarray(255 - np.asarray(Image.open(png))).save(png)
    now = arrays_fingerprint(trees.a)
    monkeypatch.setenv("CIFARKIT_DATA", str(trees.b))
    before = [snapshot(folder, ignore=(".lock",)) for folder in (run, stopped)]
    commands = (["train", "--resume", "--out", str(stopped)], ["evaluate", "--checkpoint", str(run)],
                ["report", str(run)])
    for argv in commands:
        code, out, err = cli(argv, capsys)
        assert_one_error_line(code, err, f"{trees.a} changed since", short(now), short(fingerprint))
    shutil.rmtree(trees.a)
    for argv in commands:
        code, out, err = cli(argv, capsys)
        assert_one_error_line(code, err, f"was trained on is gone: no {trees.a}")
    assert [snapshot(folder, ignore=(".lock",)) for folder in (run, stopped)] == before
    assert not (tmp_path / "cifarkit-cache" / "cifar-10-python.tar.gz").exists()


@pytest.mark.slow
def test_resume_keeps_its_data_and_given_data_must_match(trees: SimpleNamespace, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Trained with --data A, stopped by SIGTERM in epoch 1. `--resume --data B` is refused naming both fingerprints.
    Resumed with $CIFARKIT_DATA=B (and stopped again one step later): it trains on A (the header says so), and its
    checkpoints record A. Then `--resume --data COPY-OF-A` is accepted, finishes the run and records where the data
    is now. `evaluate --data B` tests on B and says that it is not the run's data."""
    run = tmp_path / "run"
    real_step = cifarkit.train.train_step

    def step_then_sigterm(*args: object, **kwargs: object) -> object:
        out = real_step(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the loop saves a checkpoint at this step boundary, then stops
        return out

    with monkeypatch.context() as mp:
        mp.setattr(cifarkit.train, "train_step", step_then_sigterm)
        code, out, err = cli(["train", *ARGS, "--epochs", "2", "--data", str(trees.a), "--out", str(run)], capsys)
    assert code == 128 + signal.SIGTERM, err
    path, fingerprint = recorded(run)
    other = arrays_fingerprint(trees.b)
    code, out, err = cli(["train", "--resume", "--out", str(run), "--data", str(trees.b)], capsys)
    assert_one_error_line(code, err, f"refused: {trees.b} (data fingerprint {short(other)})", short(fingerprint))

    monkeypatch.setenv("CIFARKIT_DATA", str(trees.b))
    position = checkpoint_position(run)
    with monkeypatch.context() as mp:
        mp.setattr(cifarkit.train, "train_step", step_then_sigterm)
        code, out, err = cli(["train", "--resume", "--out", str(run)], capsys)
    assert code == 128 + signal.SIGTERM, err
    header = next(line for line in err.splitlines() if line.startswith("data: "))  # messages go to stderr
    assert f"from {trees.a}, recorded by the run; fingerprint {short(fingerprint)}" in header
    assert recorded(run) == (path, fingerprint) and checkpoint_position(run) > position
    code, out, err = cli(["train", "--resume", "--out", str(run), "--data", str(trees.copy)], capsys)
    assert code == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2 and (run / "model.pt").is_file()
    assert json.loads((run / "config.json").read_text())["data"] == str(trees.copy)

    code, out, err = cli(["evaluate", "--checkpoint", str(run), "--data", str(trees.b)], capsys)
    assert code == 0, err
    assert "given by --data (not the data the run was trained on)" in err and short(other) in err
    assert "images=10" in out
