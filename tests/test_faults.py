"""Fault injection for training: kill -9 at several points, SIGTERM/Ctrl-C, a full or read-only disk, a non-finite
loss, and two runs on one folder. The promise under test: nothing is lost beyond the current epoch, the checkpoint on
disk is always a whole one, and a resumed run ends with bitwise the same weights as an uninterrupted one.

Runs go through `cifarkit.cli.main` with tiny synthetic data (2 epochs x 2 steps of 8 images). Runs that must die
are forked children of the test process: a fork starts in milliseconds where a fresh interpreter spends seconds
importing torch, and the child is a real process, killed by a real SIGKILL or signalled by the test. Faults are
injected by patching inside the child (test-only code), at a given call count, so every case is deterministic.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import cifarkit.data.sources
import cifarkit.run.files
import cifarkit.runlog
import cifarkit.train
from cifarkit import cli
from cifarkit.checkpoint import load_checkpoint
from cifarkit.errors import CifarkitError
from cifarkit.run import RunLock, check_run_out
from helpers import (SHORT_RUN_ARGS, SHORT_STEPS_PER_EPOCH, SHORT_SYNTHETIC, assert_one_error_line, checkpoint_position,
                     final_line, history, model_weights, read_only, run_cli, slow_fixture)

ARGS = SHORT_RUN_ARGS  # the shared short run's flags: conftest.py's `short_run` is the uninterrupted reference
STEPS_PER_EPOCH = SHORT_STEPS_PER_EPOCH


@pytest.fixture(autouse=True)
def _small_synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data synthetic` draws 64/32 images instead of 5,000/1,000, as for the shared short run (the runs take 32/16
    of them either way): building the full stand-in costs seconds per run on a busy machine."""
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", SHORT_SYNTHETIC)


def train_argv(run: Path, *extra: str, resume: bool = False) -> list[str]:
    return ["train", *ARGS, "--out", str(run), *(["--resume"] if resume else []), *extra]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"


def assert_matches_reference(run: Path, reference: Path) -> None:
    assert_same_weights(model_weights(run / "model.pt"), model_weights(reference / "model.pt"))
    assert history(run, timing=False) == history(reference, timing=False)
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "temporary files were left behind"


@pytest.fixture
def reference(short_run: Path) -> Path:
    """The uninterrupted run with ARGS (the shared short run): the weights every interrupted run must end
    with."""
    return short_run


# ------------------------------------------------------------------------------------------ forked children

class Child:
    """A forked child running `cli.main(argv)` after `inject()`; its stdout and stderr go to `log`."""

    def __init__(self, argv: list[str], log: Path, inject: Callable[[], None] | None = None) -> None:
        self.log = log
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # pytest's capture objects are not ours
                if inject is not None:
                    inject()
                code = cli.main(argv)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.status: int | None = None

    def poll(self) -> int | None:
        """Its exit code once it has ended (negative: the signal that killed it), else None."""
        if self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"child {self.pid} ran past {timeout} s; its log:\n{self.log.read_text()}")
            time.sleep(0.02)
        assert self.status is not None
        return self.status

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    @property
    def stderr(self) -> str:
        return self.log.read_text()


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Start children with `children(argv, log, inject)`; any still alive at the end is killed (only ours)."""
    started: list[Child] = []

    def start(argv: list[str], log: Path, inject: Callable[[], None] | None = None) -> Child:
        started.append(Child(argv, log, inject))
        return started[-1]

    yield start
    for child in started:
        child.kill()


def wait_for(path: Path, child: Child, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or child.poll() is not None:
            child.kill()
            pytest.fail(f"{path} never appeared; the child's log:\n{child.stderr}")
        time.sleep(0.02)


def on_call(module: Any, name: str, n: int, action: Callable[..., Any], *, after: bool = False) -> None:
    """Patch module.name (in the child) so that its n-th call runs `action(*args)` before (or after) the real one."""
    real = getattr(module, name)
    calls = [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n and not after:
            action(*args)
        result = real(*args, **kwargs)
        if calls[0] == n and after:
            action(*args)
        return result

    setattr(module, name, patched)


def die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_mid_write(obj: Any, f: io.BufferedWriter) -> None:
    """torch.save's stand-in: write the first half of the real bytes, reach the disk, then SIGKILL."""
    buffer = io.BytesIO()
    REAL_TORCH_SAVE(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    die()


REAL_TORCH_SAVE = torch.save


def kill_on_save(n: int) -> Callable[[], None]:
    """Inject: the n-th torch.save (1: epoch 1's checkpoint, ...) dies half-way through writing its file."""
    def inject() -> None:
        calls = [0]

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == n:
                die_mid_write(obj, f)
            REAL_TORCH_SAVE(obj, f, *args, **kwargs)

        torch.save = save  # type: ignore[assignment]
    return inject


# ------------------------------------------------------------------------------------------ kill -9

@pytest.mark.slow
def test_kill9_anywhere_resumes_exactly(tmp_path: Path, reference: Path, children: Callable[..., Child],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """One run folder through five kill -9s, then a resume that must end bitwise equal to the uninterrupted run:
    (1) in epoch 1, before any checkpoint: --resume says to start again, a fresh start is allowed;
    (2) blocked in epoch 2, killed from outside, after a second run on the same folder was refused by the lock;
    (3) during epoch 2's evaluation; (4) half-way through writing epoch 2's checkpoint; (5) half-way through
    writing model.pt. After each, last.pt on disk is a whole checkpoint (the old one or the new one), the dead
    process's lock does not block the next run, and the orphaned temp files are cleaned up."""
    run, logs = tmp_path / "run", tmp_path
    ckpt = run / "checkpoints" / "last.pt"

    # (1) kill -9 at the second training step of epoch 1
    child = children(train_argv(run), logs / "1.log", lambda: on_call(cifarkit.train, "train_step", 2, die))
    assert child.wait() == -signal.SIGKILL
    assert not ckpt.exists()
    code, _, err = run_cli(train_argv(run, resume=True), capsys)
    assert_one_error_line(code, err, "no checkpoint yet", "without --resume")

    # (2) a fresh start blocks at the first step of epoch 2; a second run is refused; then kill -9 from outside
    started = tmp_path / "epoch2-started"

    def block_in_epoch_2() -> None:
        def block(*_: Any) -> None:
            started.touch()
            time.sleep(120)
        on_call(cifarkit.train, "train_step", STEPS_PER_EPOCH + 1, block)

    child = children(train_argv(run), logs / "2.log", block_in_epoch_2)
    wait_for(started, child)
    for argv in (train_argv(run, resume=True), train_argv(run)):
        code, _, err = run_cli(argv, capsys)
        assert_one_error_line(code, err, f"another cifarkit run (pid {child.pid})")
    child.kill()
    assert checkpoint_position(run) == (1, 0)
    assert (run / ".lock").read_text() == str(child.pid)  # the dead holder's pid is still in the file...

    # (3) ...yet the resume takes the lock; it is killed during epoch 2's evaluation
    child = children(train_argv(run, resume=True), logs / "3.log", lambda: on_call(cifarkit.train, "evaluate", 1, die))
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert checkpoint_position(run) == (1, 0)

    # (4) killed half-way through writing epoch 2's checkpoint: the torn temp file is not last.pt
    child = children(train_argv(run, resume=True), logs / "4.log", kill_on_save(1))
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert checkpoint_position(run) == (1, 0)
    torn = ckpt.with_name(f".last.pt.tmp-{child.pid}")
    assert torn.is_file() and 0 < torn.stat().st_size < ckpt.stat().st_size

    # (5) killed half-way through writing model.pt, after epoch 2's checkpoint
    child = children(train_argv(run, resume=True), logs / "5.log", kill_on_save(2))
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert checkpoint_position(run) == (2, 0)
    assert not torn.exists() and not (run / "model.pt").exists()

    code, _, err = run_cli(train_argv(run, resume=True), capsys)
    assert code == 0, err
    assert_matches_reference(run, reference)


# fp16 training on a CPU runs PyTorch's slow fp16 kernels (17x slower than fp32 or more): 2 images a step
FP16 = ["--precision", "fp16", "--subset", "4", "--batch-size", "2", "--test-subset", "2"]
FP16_STEPS_PER_EPOCH = 4 // 2


@slow_fixture(scope="module")
def fp16_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted fp16 run with its gradient scaler (2 epochs x 2 steps of 2 images), in this process. Its own
    run, not the shared one: fp16 on a CPU is slow, so it trains on 4 images, not 32."""
    run = tmp_path_factory.mktemp("faults-fp16") / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", SHORT_SYNTHETIC)
        assert cli.main(train_argv(run, *FP16)) == 0
    return run


@pytest.mark.slow
def test_kill9_mid_epoch_in_fp16_resumes_exactly(tmp_path: Path, fp16_reference: Path,
                                                 children: Callable[..., Child],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """fp16: kill -9 at the second step of epoch 2, then --resume, ends bitwise equal to the uninterrupted fp16 run,
    with the same history, skipped steps included. The checkpoint it resumes from holds a scale that the scaler
    lowered in epoch 1, so a resume that lost the scaler's state would not match."""
    run = tmp_path / "run"
    kill = lambda: on_call(cifarkit.train, "train_step", FP16_STEPS_PER_EPOCH + 2, die)  # noqa: E731
    child = children(train_argv(run, *FP16), tmp_path / "1.log", kill)
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert checkpoint_position(run) == (1, 0)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["scaler"]["scale"] < 2.0**16  # the scaler's start
    code, _, err = run_cli(train_argv(run, *FP16, resume=True), capsys)
    assert code == 0, err
    assert_matches_reference(run, fp16_reference)


# ------------------------------------------------------------------------------------------ SIGTERM / Ctrl-C

def expose_stop_flag(box: dict[str, Any]) -> None:
    """Patch (in the child) train.stop_on_signals so the test code can see the flag its handler sets."""
    real = cifarkit.train.stop_on_signals

    @contextlib.contextmanager
    def stop_on_signals() -> Iterator[dict[str, int]]:
        with real() as flag:
            box["flag"] = flag
            yield flag

    cifarkit.train.stop_on_signals = stop_on_signals  # type: ignore[assignment]


@pytest.mark.parametrize("signum, during, resume", [
    pytest.param(signal.SIGINT, "step", True, id="SIGINT-in-step"),
    pytest.param(signal.SIGTERM, "step", True, id="SIGTERM-in-step"),
    pytest.param(signal.SIGTERM, "evaluate", False, id="SIGTERM-in-evaluation")])
@pytest.mark.slow
def test_signal_checkpoints_and_resumes_exactly(tmp_path: Path, reference: Path, children: Callable[..., Child],
                                                capsys: pytest.CaptureFixture[str], signum: int, during: str,
                                                resume: bool) -> None:
    """SIGINT (Ctrl-C) or SIGTERM from outside, during a training step of epoch 2 or during epoch 1's evaluation:
    the run stops at the next step boundary, writes a whole checkpoint there (epoch 2, step 1, with the partial
    epoch's sums), exits with 128 + signum and one `interrupted:` line that says how to continue; the resume (run
    for the in-step cases: the evaluation case stops at the same point) ends with bitwise the same weights and
    history as the uninterrupted run."""
    run = tmp_path / "run"
    ready = tmp_path / "ready"

    def inject() -> None:
        box: dict[str, Any] = {}
        expose_stop_flag(box)

        def wait_for_signal(*_: Any) -> None:
            ready.touch()
            deadline = time.monotonic() + 60
            while "signum" not in box["flag"] and time.monotonic() < deadline:
                time.sleep(0.01)

        if during == "step":  # after the first step of epoch 2
            on_call(cifarkit.train, "train_step", STEPS_PER_EPOCH + 1, wait_for_signal, after=True)
        else:  # inside epoch 1's evaluation
            on_call(cifarkit.train, "evaluate", 1, wait_for_signal)

    child = children(train_argv(run), tmp_path / "child.log", inject)
    wait_for(ready, child)
    os.kill(child.pid, signum)
    assert child.wait() == 128 + signum
    line = final_line(child.stderr, "interrupted: ")
    name = signal.Signals(signum).name
    assert line == (f"interrupted: stopped by {name} at epoch 2, step 1; checkpoint saved to {run}/checkpoints/"
                    f"last.pt; continue with: cifarkit train --resume --out {run}")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1) and state["partial"] is not None
    assert not (run / "model.pt").exists()
    if resume:
        code, _, err = run_cli(train_argv(run, resume=True), capsys)
        assert code == 0, err
        assert_matches_reference(run, reference)


# ------------------------------------------------------------------------------------------ storage faults

@pytest.mark.slow
def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while writing epoch 2's checkpoint (simulated: torch.save writes 4 KiB, then fails with ENOSPC): one
    `error:` line naming the file and "disk full", exit 2; last.pt is still epoch 1's and loads; no temp file is
    left; the lock is released; once there is room again, the resume ends equal to the uninterrupted run."""
    run = tmp_path / "run"
    calls = [0]

    def full_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_TORCH_SAVE(obj, f, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(torch, "save", full_disk)
        code, _, err = run_cli(train_argv(run), capsys)
    assert code == 2
    assert final_line(err) == (f"error: cannot write {run}/checkpoints/last.pt: disk full; the previous file, if any, "
                               "is intact")
    assert checkpoint_position(run) == (1, 0)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    code, _, err = run_cli(train_argv(run, resume=True), capsys)
    assert code == 0, err
    assert_matches_reference(run, reference)


@pytest.mark.slow
def test_disk_full_in_run_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while writing epoch 2's metrics.json (simulated in run.files.write_json), before epoch 2's checkpoint: one
    `error:` line in the checkpoint's disk-full words (no traceback, no raw errno), exit 2; last.pt is still epoch 1's, history.csv is whole, no temp file is left
    beside the checkpoint."""
    run = tmp_path / "run"
    real_write_json = cifarkit.run.files.write_json
    calls = [0]

    def full_disk(path: Path, obj: Any) -> None:
        calls[0] += path.name == "metrics.json"
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_json(path, obj)

    monkeypatch.setattr(cifarkit.run.files, "write_json", full_disk)
    code, _, err = run_cli(train_argv(run), capsys)
    assert code == 2
    assert final_line(err) == f"error: cannot write {run}/metrics.json: disk full; the previous file, if any, is intact"
    assert checkpoint_position(run) == (1, 0)
    assert [row["epoch"] for row in history(run)] == ["1", "2"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]


@pytest.mark.slow
def test_read_only_checkpoint_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoints folder turns read-only after epoch 1 (see helpers.read_only: chattr +i, as root ignores
    modes): the run stops at epoch 2's checkpoint with one `error:` line, exit 2, and epoch 1's checkpoint intact
    beside no temp file."""
    run = tmp_path / "run"
    folder = run / "checkpoints"
    with contextlib.ExitStack() as stack:
        def lock_folder(*_: Any) -> None:
            stack.enter_context(read_only(folder))

        real_step = cifarkit.train.train_step
        calls = [0]

        def step(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == STEPS_PER_EPOCH + 1:
                lock_folder()
            return real_step(*args, **kwargs)

        monkeypatch.setattr(cifarkit.train, "train_step", step)
        code, _, err = run_cli(train_argv(run), capsys)
    line = final_line(err)
    assert code == 2 and line.startswith(f"error: cannot write {folder}/last.pt: ") and line.endswith(
        "; the previous file, if any, is intact"), line
    assert checkpoint_position(run) == (1, 0)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_read_only_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder that refuses new files (see helpers.read_only) is refused before any work with one `error:`
    line, exit 2, and nothing is written into it."""
    run = tmp_path / "run"
    run.mkdir()
    with read_only(run):
        code, _, err = run_cli(train_argv(run), capsys)
    assert_one_error_line(code, err)
    assert err.startswith(f"error: cannot use {run} as a run folder: "), err
    assert list(run.iterdir()) == []


def test_lock_refuses_second_run_and_frees_on_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While a RunLock is held (as by a live run), `train` on that folder is refused with one line naming the holder's
    pid; after release the folder is free again."""
    run = tmp_path / "run"
    with RunLock(run):
        code, _, err = run_cli(train_argv(run), capsys)
        assert code == 2 and err == f"error: another cifarkit run (pid {os.getpid()}) is using {run}; wait for it or " \
                                    "choose another --out\n"
    with RunLock(run):
        pass


def test_the_lock_and_the_early_check_refuse_a_busy_folder_alike(tmp_path: Path) -> None:
    """A folder another run holds is refused in the same words by the check before any work (check_run_out) and by
    the lock itself (a run that took it in between): the holder's pid, `out` for Python, `--out` on the command
    line."""
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(CifarkitError) as early:
            check_run_out(run, kind="resume")
        with pytest.raises(CifarkitError) as late:
            RunLock(run).__enter__()
    expected = f"another cifarkit run (pid {os.getpid()}) is using {run}; wait for it or choose another "
    assert (str(early.value), early.value.cli_line()) == (expected + "out", expected + "--out")
    assert (str(late.value), late.value.cli_line()) == (str(early.value), early.value.cli_line())


# ------------------------------------------------------------------------------------------ numerical faults

@pytest.mark.slow
@pytest.mark.parametrize("checked", [True, False], ids=["checked-step", "between-checks"])
def test_non_finite_loss_stops_and_keeps_last_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], checked: bool) -> None:
    """The loss (and the weights) turn NaN at the first step of epoch 2 (step 5). Checked step (CPU checks every step):
    the run stops there with one `error:` line naming step 5 and epoch 2. Between checks (a GPU reads the loss only
    every 25 steps; simulated here by making torch.isfinite always say yes): the run stops at epoch 2's end, before
    evaluating or saving. Either way exit 2, and last.pt is epoch 1's, with finite weights."""
    run = tmp_path / "run"
    real_step = cifarkit.train.train_step
    calls = [0]

    def poisoned(model: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
        calls[0] += 1
        loss, correct, skipped = real_step(model, *args, **kwargs)
        if calls[0] == STEPS_PER_EPOCH + 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            loss = torch.tensor(float("nan"))
        return loss, correct, skipped

    monkeypatch.setattr(cifarkit.train, "train_step", poisoned)
    with pytest.MonkeyPatch.context() as mp:
        if not checked:
            mp.setattr(torch, "isfinite", lambda t: torch.ones_like(t, dtype=torch.bool))
        code, _, err = run_cli(train_argv(run), capsys)
    line = final_line(err)
    assert code == 2
    where = f"at step {STEPS_PER_EPOCH + 1} (epoch 2)" if checked else f"by step {2 * STEPS_PER_EPOCH} (epoch 2)"
    assert line == (f"error: the loss became nan {where}; stopped, and {run}/checkpoints/last.pt keeps the last good "
                    "state: lower --lr-max"), line
    assert checkpoint_position(run) == (1, 0)
    assert all(torch.isfinite(t).all() for t in load_checkpoint(run / "checkpoints" / "last.pt")["model"].values()
               if t.is_floating_point())
    assert not (run / "model.pt").exists()
