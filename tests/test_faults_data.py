"""Hostile and broken inputs through the CLI, end to end: checkpoints that are truncated, foreign, from another
recipe, or run code when unpickled; data sets that run code, escape their folder, bomb the disk, or hold the wrong
shapes. Each must give exit code 2 and one `error:` line on stderr with no traceback, run nothing, write nothing
outside its place, and overwrite nothing.

The loaders' own checks are tested in test_data.py and test_safety_data.py; here the same inputs go through
`cifarkit train`/`evaluate` as a user would pass them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit.data.sources
import cifarkit.training_data
from cifarkit import fit
from cifarkit.data import Cifar10
from cifarkit.errors import CifarkitError
from cifarkit.run import read_config
from helpers import SHORT_SYNTHETIC, assert_one_error_line, one_error_line, run_cli, snapshot

ARGS = ["--subset", "8", "--test-subset", "8", "--batch-size", "8", "--epochs", "1", "--lr-min", "1e-4",
        "--lr-max", "1e-3", "--no-plots"]


class RunsShell:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


@pytest.fixture(autouse=True)
def _small_synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data synthetic` draws 64/32 images, as for the shared short run: a resumed run checks that its data is the
    same."""
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", SHORT_SYNTHETIC)


@pytest.fixture
def run_copy(short_run: Path, tmp_path: Path) -> Path:
    """A private copy of a finished run (the shared short run: `--data synthetic` drawing 64/32 images, as
    here; batch 8; config.json and last.pt), without its lock file."""
    run = tmp_path / "run"
    shutil.copytree(short_run, run, ignore=shutil.ignore_patterns(".lock"))
    return run


# ------------------------------------------------------------------------------------------ checkpoints

def bad_checkpoint(kind: str, good: bytes, marker: Path) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    if kind == "foreign":  # a PyTorch file, but a bare state dict rather than a cifarkit checkpoint
        torch.save({"fc.weight": torch.zeros(10, 512)}, buffer)
    elif kind == "runs code (zip)":
        torch.save({"model": RunsShell(f"touch {marker}")}, buffer)
    elif kind == "runs code (pickle)":
        pickle.dump({"model": RunsShell(f"touch {marker}")}, buffer, protocol=2)
    return buffer.getvalue()


CHECKPOINT_ERRORS = {"truncated": "truncated or not a PyTorch file", "empty": "truncated or not a PyTorch file",
                     "garbage": "last.pt", "foreign": "not a cifarkit training checkpoint",
                     "runs code (zip)": "posix.system", "runs code (pickle)": "refused to load"}


@pytest.mark.parametrize("command", ["train --resume", "evaluate"])
@pytest.mark.parametrize("kind", list(CHECKPOINT_ERRORS))
def test_bad_checkpoint_is_refused(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str,
                                   command: str) -> None:
    """A truncated, empty, random, foreign (a bare state dict of other weights) or code-running last.pt is refused
    by `train --resume` and by `evaluate` with one `error:` line naming the file; its pickled command never runs, and
    no file in the run changes."""
    marker = tmp_path / "MARKER"
    ckpt = run_copy / "checkpoints" / "last.pt"
    ckpt.write_bytes(bad_checkpoint(kind, ckpt.read_bytes(), marker))
    before = snapshot(run_copy, ignore=(".lock",))
    argv = (["train", "--resume", "--out", str(run_copy)] if command == "train --resume"
            else ["evaluate", "--checkpoint", str(ckpt), "--device", "cpu"])
    code, _, err = run_cli(argv, capsys)
    foreign_weights = command == "evaluate" and kind == "foreign"  # evaluate takes state dicts: not this one
    assert_one_error_line(code, err, str(ckpt),
                          "holds weights of another model" if foreign_weights else CHECKPOINT_ERRORS[kind])
    assert not marker.exists()
    assert snapshot(run_copy, ignore=(".lock",)) == before


@pytest.mark.parametrize("case", ["flag", "other run"])
def test_checkpoint_of_another_recipe_is_refused(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 case: str) -> None:
    """Resuming with a flag that changes the recipe (--batch-size 4), or into a run whose config.json differs from
    the checkpoint copied into it (seed 1 vs 0): one `error:` line naming the field and both values; nothing in the
    run folder is overwritten."""
    argv = ["train", "--resume", "--out", str(run_copy)]
    if case == "flag":
        argv += ["--batch-size", "4"]
        expected = "cannot resume: batch_size is 4 here but 8 in the checkpoint"
    else:
        config = (run_copy / "config.json").read_text().replace('"seed": 0', '"seed": 1')
        (run_copy / "config.json").write_text(config)
        expected = "cannot resume: seed is 1 here but 0 in the checkpoint"
    before = snapshot(run_copy, ignore=(".lock",))
    code, _, err = run_cli(argv, capsys)
    assert_one_error_line(code, err, expected)
    assert snapshot(run_copy, ignore=(".lock",)) == before


def test_resume_of_a_finished_run_is_refused_and_changes_nothing(run_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`train --resume` of a finished run (model.pt written, every epoch in metrics.json) trains and rewrites
    nothing: one line saying so, with the command that redraws its report, before its data loads (loading it here
    fails the test), and every file as it was; the same without its checkpoints folder (a finished run copied
    without it), and in the Python API's words from fit(resume=True). (A changed recipe on the same finished run is
    refused first: test_checkpoint_of_another_recipe_is_refused.)"""
    epochs = json.loads((run_copy / "config.json").read_text())["epochs"]
    before = snapshot(run_copy, ignore=(".lock",))

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run's data was loaded")

    monkeypatch.setattr(cifarkit.training_data, "recorded_data", no_loading)
    monkeypatch.setattr(cifarkit.training_data, "resolve_data", no_loading)
    finished = f"nothing to resume in {run_copy}: its {epochs}-epoch run is finished"
    one_error_line(["train", "--resume", "--out", str(run_copy)], capsys, finished, f"cifarkit report {run_copy}")
    assert snapshot(run_copy, ignore=(".lock",)) == before
    api_words = r"is finished .*a new run with another out \(cifarkit.report.write_report"
    with pytest.raises(CifarkitError, match=api_words) as info:
        fit(replace(read_config(run_copy), out=str(run_copy)), resume=True, progress=False)
    assert str(info.value).startswith(finished)
    shutil.rmtree(run_copy / "checkpoints")
    one_error_line(["train", "--resume", "--out", str(run_copy)], capsys, finished)


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_resume_without_config_json_uses_the_checkpoint(run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                        damage: str) -> None:
    """config.json deleted or torn (a crash of an older version mid-write) in a run stopped after its last
    checkpoint, before its final weights: the checkpoint holds the recipe, so `train --resume` still works, writes
    config.json back as it was (with this folder as "out"), and the final weights."""
    (run_copy / "model.pt").unlink()
    original = (run_copy / "config.json").read_text()
    if damage == "missing":
        (run_copy / "config.json").unlink()
    else:
        (run_copy / "config.json").write_text(original[:40])
    code, _, err = run_cli(["train", "--resume", "--out", str(run_copy)], capsys)
    assert code == 0, err
    assert json.loads((run_copy / "config.json").read_text()) == json.loads(original) | {"out": str(run_copy)}
    assert (run_copy / "model.pt").is_file()


@pytest.mark.slow
def test_code_running_checkpoint_end_to_end(tmp_path: Path) -> None:
    """The real command in a fresh interpreter: `python -m cifarkit evaluate` on a checkpoint whose unpickling would
    run a shell command exits 2 with one `error:` line on stderr, no traceback, and the command never runs."""
    marker = tmp_path / "MARKER"
    evil = tmp_path / "model.pt"
    evil.write_bytes(bad_checkpoint("runs code (zip)", b"", marker))
    result = subprocess.run([sys.executable, "-m", "cifarkit", "evaluate", "--checkpoint", str(evil), "--device",
                             "cpu"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "CIFARKIT_CACHE": str(tmp_path / "cache")})
    assert_one_error_line(result.returncode, result.stderr, f"refused to load {evil}", "posix.system")
    assert result.stdout == "" and not marker.exists()


# ------------------------------------------------------------------------------------------ data sets

def header_bomb(path: Path) -> Path:
    """A .tar.gz a few hundred bytes long whose member header claims 2 GiB: far more than CIFAR-10 unpacks to.
    (A real 2 GiB of zeros would take seconds to build and to read; the refusal comes from the headers either way.)"""
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 2 << 30
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024))
    return path


def hostile_data(case: str, root: Path, tiny: Cifar10, files: SimpleNamespace, marker: Path) -> tuple[Path, str]:
    """(the --data to pass, a fragment the error must hold)."""
    src = root / "src"
    if case in ("pickle runs code", "label out of range", "wrong shape"):
        folder = files.pickle_folder(tiny, src / "cifar-10-batches-py")
        if case == "pickle runs code":
            (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": RunsShell(f"touch {marker}"), b"labels": []}))
            return folder, "posix.system"
        batch = files.batch_dict(tiny.test_images, tiny.test_labels, "test")
        if case == "label out of range":
            batch[b"labels"][3] = 10
        else:
            batch[b"data"] = batch[b"data"][:, :3000]
        (folder / "test_batch").write_bytes(files.py2_dumps(batch))
        return folder, "test_batch"
    if case == "image not 32x32":
        tree = files.image_tree(tiny, src / "tree")
        Image.new("RGB", (64, 64)).save(tree / "train" / "cat" / "big.png")
        return tree, "64×64"
    if case == "zip bomb":
        return header_bomb(root / "bomb.tar.gz"), "bomb"
    archive = root / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"hi"))
        if case == "symlink member":
            bad = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(bad)
        else:
            bad = tarfile.TarInfo("../escaped" if case == "../ member" else str(root / "escaped"))
            bad.size = 2
            tf.addfile(bad, io.BytesIO(b"hi"))
    return archive, bad.name


DATA_CASES = ["pickle runs code", "../ member", "absolute member", "symlink member", "zip bomb", "image not 32x32",
              "label out of range", "wrong shape"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_hostile_data_is_refused_by_train(tmp_path: Path, cifar_cache: Path, tiny_data: Cifar10,
                                          cifar_files: SimpleNamespace, capsys: pytest.CaptureFixture[str],
                                          case: str) -> None:
    """`cifarkit train --data X` on a hostile or malformed data set: exit 2, one `error:` line naming the problem, no
    code run (marker absent), and no file written anywhere: no run folder (not even its lock), nothing outside the
    extraction folder, no partial cache entry. The bomb is refused at the real caps, from its headers."""
    marker = tmp_path / "MARKER"
    source, fragment = hostile_data(case, tmp_path, tiny_data, cifar_files, marker)
    before = set(tmp_path.rglob("*"))
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(source), *ARGS, "--out", str(run)], capsys)
    assert_one_error_line(code, err, fragment)
    assert not marker.exists()
    assert {p for p in set(tmp_path.rglob("*")) - before if not p.is_dir()} == set()
    assert not run.exists()
