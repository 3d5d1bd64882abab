"""What a new user meets first: the README's install lines and quick try, flags spelled in full, one-line warnings
and errors that name their cause, and words that read right."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
from cifarkit.app.uploads import check_image_file
from cifarkit.app.views import describe_run
from cifarkit.cli import build_parser
from cifarkit.cli_flags import given_config
from cifarkit.config import TrainConfig
from cifarkit.console import ConsoleHandler
from cifarkit.data import Cifar10, resolve_data, subset
from cifarkit.errors import REPOSITORY, CifarkitError
from cifarkit.report import write_report
from cifarkit.report.render import fmt_count, fmt_epoch
from cifarkit.run import write_config
from cifarkit.runlog import RunLog
from helpers import one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# pyproject.toml's extras: the keys of [project.optional-dependencies] (read by hand: tomllib needs Python 3.11)
EXTRAS_TABLE = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
EXTRAS = set(re.findall(r"^(\w+) = \[", EXTRAS_TABLE, re.M))


# ------------------------------------------------------------------------------------------------ installs

def install_lines() -> list[str]:
    """Every `pip install ...` the README shows for cifarkit itself (in code blocks and inline code)."""
    found = re.findall(r"pip install (-e (?:\.(?=\s)|\"[^\"]*\")|\"cifarkit[^\"]*\")", README)
    return [line for line in found if "torch" not in line]


def extras_of(line: str) -> set[str]:
    found = re.search(r"\[([\w,]+)\]", line)
    return set(found.group(1).split(",")) if found else set()


def test_readme_install_lines_name_real_extras_and_cover_every_extra() -> None:
    """Each install line is a clone's `-e .` / `-e ".[extra]"` or `"cifarkit[extra] @ git+<the repository>"` (the
    form that works without a package index: a bare `cifarkit[app]` is found nowhere), each names extras that
    pyproject.toml defines, every extra has a clone line, and the notebook installs from the same repository."""
    lines = install_lines()
    assert len(lines) >= len(EXTRAS) + 2, lines
    for line in lines:
        assert re.fullmatch(r'-e (\.|"\.\[[\w,]+\]")|"cifarkit(\[[\w,]+\])? @ git\+' + re.escape(REPOSITORY) + '"',
                            line), line
        assert extras_of(line) <= EXTRAS, (line, EXTRAS)
    assert EXTRAS <= {e for line in lines if line.startswith("-e") for e in extras_of(line)}
    assert any(line.startswith('"') and extras_of(line) for line in lines)
    assert f'REPO = "{REPOSITORY}"' in (ROOT / "examples" / "colab.ipynb").read_text().replace('\\"', '"')


def pip_dry_run(requirement: list[str], cwd: Path) -> dict:
    """pip's report of what `pip install REQUIREMENT` (run in `cwd`) would install: no dependencies, no network,
    nothing built but the package's metadata."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--report", "-", *requirement], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "does not provide the extra" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_readme_install_lines_work_against_a_clone(tmp_path: Path) -> None:
    """Every README install line resolves to cifarkit with exactly the extras it names: the clone's lines as written,
    run in a git clone of this source; the repository's lines with git+file:// of that clone for its URL."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "cifarkit"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "src"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, clone / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "source"]):
        subprocess.run([*git, *args], cwd=clone, check=True, capture_output=True)
    for line in install_lines():
        if line.startswith("-e "):
            report = pip_dry_run(["-e", line[3:].strip('"')], clone)
        else:
            report = pip_dry_run([line.strip('"').replace(f"git+{REPOSITORY}", f"git+file://{clone}")], tmp_path)
        [item] = report["install"]
        assert item["metadata"]["name"] == "cifarkit", line
        assert set(item.get("requested_extras") or ()) == extras_of(line), (line, item.get("requested_extras"))


# --------------------------------------------------------------------------------------------- the quick try

AVX2_TRAIN, AVX2_EVAL = 41.5, 170.1  # images/s, 2-core AVX2 EPYC, fp32, batch 128: the README's bench table
FIRST_READ_S, PLOTS_REPORT_S = 30.0, 30.0  # extracting and decoding the PNG archive; plots and report (with margin)


def test_the_quick_try_is_one_command_that_fits_five_minutes_on_an_avx2_cpu() -> None:
    """The README's quick-try command and `make quick` give the same flags; by the README's own AVX2 rates, the
    images it puts through training steps (range test + epochs) and evaluation (each epoch + the report's pass) plus
    the first read of the archive and the plots take under 5 minutes; its range test is at most two passes over its
    training images, and the README says so."""
    [command] = re.findall(r"^cifarkit train (--subset .*)$", README, re.M)
    make = re.search(r"^QUICK := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert make and command.replace("--out runs/quick", "").split() == make.group(1).split()
    config = TrainConfig(**given_config(build_parser().parse_args(["train", *command.split()])))
    assert config.subset and config.test_subset and config.lr_min is None  # real CIFAR-10, with the range test
    steps_per_pass = -(-config.subset // config.batch_size)
    assert config.lr_find_iters <= 2 * steps_per_pass
    trained = config.lr_find_iters * config.batch_size + config.epochs * config.subset
    evaluated = (config.epochs + 1) * config.test_subset
    seconds = trained / AVX2_TRAIN + evaluated / AVX2_EVAL + FIRST_READ_S + PLOTS_REPORT_S
    assert seconds < 300, f"{seconds:.0f} s"
    words = " ".join(README.split())
    assert f"{trained:,} images through training steps" in words and f"{evaluated:,} through evaluation" in words
    assert f"{config.lr_find_iters} steps of {config.batch_size} images (two passes over the {config.subset:,} " \
           "training images)" in words


# ------------------------------------------------------------------------------------ mistakes, said in one line

@pytest.mark.parametrize("argv, wrong", [(["train", "--epoch", "3"], "--epoch 3"),
                                         (["lr-find", "--lr-find-it", "10"], "--lr-find-it 10"),
                                         (["evaluate", "--checkpoint", "runs/a", "--tt"], "--tt"),
                                         (["cache", "--cl"], "--cl")])
def test_flags_cut_short_are_refused(argv: list[str], wrong: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--epoch 3` is not taken as `--epochs 3` (argparse's prefix matching is off in every subcommand): one error
    line naming the flag as typed, exit 2."""
    one_error_line(argv, capsys, wrong)


def test_a_subset_below_the_class_count_is_said_in_one_line(tiny_data: Cifar10,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """subset 5 of 10-class data warns once that 5 classes get no image; test_subset 3 that 7 get none; a subset of
    10 (one image per class) says nothing. The log record names the arguments (`subset=5`); the command line's
    console says the flags (`--subset 5`)."""
    with caplog.at_level(logging.WARNING):
        small = subset(tiny_data, 5, 3)
    assert len(np.unique(small.train_labels)) == 5  # what the warning says, counted
    assert [r.getMessage() for r in caplog.records] == [
        "subset=5 leaves 5 of the 10 classes without a single image; give 10 or more",
        "test_subset=3 leaves 7 of the 10 classes without a single image; give 10 or more"]
    assert [console_line(r) for r in caplog.records] == [
        "warning: --subset 5 leaves 5 of the 10 classes without a single image; give 10 or more",
        "warning: --test-subset 3 leaves 7 of the 10 classes without a single image; give 10 or more"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        subset(tiny_data, 10, 10)
    assert caplog.records == []


def console_line(record: logging.LogRecord) -> str:
    """What the command line's console says for `record` (console.ConsoleHandler, its stderr captured)."""
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        ConsoleHandler().emit(record)
    return stream.getvalue().strip()


def test_predict_refuses_an_animated_image_as_the_app_does(tmp_path: Path) -> None:
    """An animated GIF (2 frames) is refused by `predict` with the app's own reason; its first frame saved as a
    still GIF is classified."""
    frames = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    reason = check_image_file(tmp_path / "anim.gif")
    assert reason and "2 frames" in reason
    model = cifarkit.CustomResNet(10).eval()
    with pytest.raises(CifarkitError) as info:
        cifarkit.predict(model, [tmp_path / "anim.gif"], device="cpu", precision="fp32")
    assert str(info.value) == f"{tmp_path / 'anim.gif'}: {reason}"
    assert len(cifarkit.predict(model, [tmp_path / "still.gif"], precision="fp32")) == 1


def test_a_bad_cifarkit_data_is_named_in_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """$CIFARKIT_DATA pointing nowhere: the error names the variable (API and CLI), and lr-find writes nothing."""
    monkeypatch.setenv("CIFARKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(CifarkitError, match=r"^\$CIFARKIT_DATA: .*nowhere: no such file") as info:
        resolve_data(None)
    assert "unset CIFARKIT_DATA, or pass data=" in str(info.value)
    line = one_error_line(["lr-find", "--out", str(tmp_path / "lr")], capsys, "pass --data")
    assert line.startswith("error: $CIFARKIT_DATA: "), line
    assert not (tmp_path / "lr").exists()


# ------------------------------------------------------------------------------------------------- wording

def test_counts_and_epochs_read_as_people_write_them() -> None:
    """One epoch is singular; a fractional peak epoch has at most two decimals (5/24 of 2 epochs: 0.42)."""
    assert [fmt_count(n, "epoch") for n in (1, 2, 24)] == ["1 epoch", "2 epochs", "24 epochs"]
    assert fmt_count(2000, "image") == "2,000 images"
    assert [fmt_epoch(x) for x in (5.0, 5 * 2 / 24, 1.5, 0.1)] == ["5", "0.42", "1.5", "0.1"]


def test_a_run_says_its_range_test_epochs_and_peak_in_words(tmp_path: Path, tiny_data: Cifar10,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before the range test a run says its length against its data (32 steps of 128 on 100 images: 4096 / 100 =
    41.0 passes); its start line says "1 epoch x 1 step" and the peak of a 1-epoch run at 5/24 = 0.21."""
    config = TrainConfig(epochs=1, batch_size=128, lr_find_iters=32, out=str(tmp_path / "run"))
    log = RunLog(tmp_path / "run", config, enabled=True, progress=False)
    data = subset(tiny_data, 100, 50)
    log.header(data, None, torch.device("cpu"), 1)
    assert "LR range test: 32 steps of 128 images, 41.0 passes over the 100 training images" in capsys.readouterr().err
    log.start(dataclasses.replace(config, lr_min=1e-4, lr_max=1e-3), data, [1e-4], 1, torch.device("cpu"), 1)
    out = capsys.readouterr().err  # what the run tells the user: stderr
    assert ": 1 epoch x 1 step of 128; one-cycle LR 0.0001 -> 0.001 (peak at epoch 0.21) -> 0.0001" in out, out


def test_the_report_of_a_resumed_one_epoch_run_reads_right(tmp_path: Path) -> None:
    """The report of a 1-epoch run whose data was "recorded by the run" says "1 epoch", "at epoch 0.21" (5/24 of 1
    epoch, rounded), and names the data in a sentence of its own, not before "with Adam"."""
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, TrainConfig(epochs=1, out=str(run)))
    (run / "metrics.json").write_text(json.dumps({
        "final_test_accuracy": 0.3, "best_test_accuracy": 0.3, "epochs_completed": 1, "epochs": 1,
        "train_seconds": 10.0, "lr_min": 1e-4, "lr_max": 1e-3, "train_images": 2000, "test_images": 1000,
        "dataset": "CIFAR-10 (image folders) from /data/cifar10-png.tar.gz, recorded by the run"}))
    [summary] = [line for line in write_report(run).read_text().splitlines() if line.startswith("The assignment's")]
    assert "trained for **1 epoch** with Adam" in summary
    assert "at epoch 0.21 ->" in summary and "0.208333" not in summary
    assert "on 2,000 training and 1,000 test images. Data: CIFAR-10 (image folders) from " \
           "/data/cifar10-png.tar.gz, recorded by the run. It reached" in summary


def test_the_app_header_says_its_accuracy_is_on_the_test_subset(tmp_path: Path) -> None:
    """A run trained with test_subset=100: the header says the recorded accuracy is on that subset of 100 images and
    that `cifarkit evaluate` tests on the whole set; a run without a test subset has no such sentence."""
    (tmp_path / "metrics.json").write_text(json.dumps({"final_test_accuracy": 0.5, "test_images": 100}))
    header = describe_run(tmp_path, TrainConfig(test_subset=100), "here", 0.5, 100)
    assert "on the run's test subset (100 images" in header and "`cifarkit evaluate` tests on the whole" in header
    assert "test subset" not in describe_run(tmp_path, TrainConfig(), "here", 0.5, 100)


@pytest.mark.slow
def test_lr_find_says_where_it_wrote_and_counts_only_training_images(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`cifarkit lr-find` names the two files it wrote (which exist) and counts the training images it uses, never
    test images it does not use."""
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", (100, 20))
    out = tmp_path / "lr"
    code, _, err = run_cli(["lr-find", "--data", "synthetic", "--subset", "40", "--batch-size", "10",
                            "--lr-find-iters", "10", "--lr-find-start", "1e-4", "--device", "cpu", "--precision",
                            "fp32", "--out", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out / 'lr_finder.json'} and {out / 'lr_finder.png'}" in err
    assert (out / "lr_finder.json").is_file() and (out / "lr_finder.png").is_file()
    assert "; 40 train images;" in err and "test images" not in err, err
