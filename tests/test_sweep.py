"""`cifarkit sweep`: trials as run folders, run by several workers, resumable after kill -9, pruned by Optuna's median
pruner, shared by two processes through a real PostgreSQL server, and bad input refused before any run starts.

The data is a tiny synthetic set (NOT CIFAR-10) written to disk in the official layout, so that each trial's child
process loads it in milliseconds. Each sweep runs on one CPU (its affinity: see `one_cpu`), so that its runs train
with one thread each, as every other test process does, instead of two threads fighting the other pytest worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import assert_one_error_line, history, model_weights, run_cli, slow_fixture

from cifarkit import cli
from cifarkit.data import make_synthetic
from cifarkit.errors import CifarkitError

optuna = pytest.importorskip("optuna", reason="cifarkit[sweep] is not installed")

from cifarkit.study import engine  # noqa: E402
from cifarkit.study.plan import make_plan, trials_said  # noqa: E402


@pytest.fixture
def data(tmp_path: Path, cifar_files: SimpleNamespace, cifar_cache: Path) -> Path:
    """400 train and 80 test synthetic images in the official pickle layout; a private cache."""
    return cifar_files.pickle_folder(make_synthetic(n_train=400, n_test=80), tmp_path / "data" / "cifar-10-batches-py")


def tiny(data: Path, *extra: str, epochs: int = 2) -> list[str]:
    """A trial's flags: a few steps of 16 images, no plots, and the augmentation on the batch (--augment batched), so
    that each trial's fresh interpreter does not import albumentations (these tests are about trials, not about the
    augmentation path)."""
    return ["--data", str(data), "--subset", "64", "--test-subset", "32", "--batch-size", "16", "--epochs", str(epochs),
            "--no-plots", "--augment", "batched", *extra]


def sweep_cpu() -> set[int]:
    """The one CPU this pytest worker's sweeps run on: gw0 the first this process may use, gw1 the second, ..."""
    cpus = sorted(os.sched_getaffinity(0))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return {cpus[int(worker.removeprefix("gw") or 0) % len(cpus)]}


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """This process on `sweep_cpu()` alone for the block: a sweep started in it gives its runs that CPU (its affinity,
    one torch thread each, as `worker.cpu_slices` splits the CPUs it may use)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sweep_cpu())
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def sweep(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in this process, on one CPU (its runs are child processes either way): (exit code, stdout, stderr)."""
    with one_cpu():
        return run_cli(["sweep", "--out", str(out), *args], capsys)


def spawn(out: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`cifarkit sweep` as a process of its own (to be killed, or to run beside another), on one CPU."""
    cpu = sweep_cpu()
    pin = (lambda: os.sched_setaffinity(0, cpu)) if hasattr(os, "sched_setaffinity") else None
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "cifarkit", "sweep", "--out", str(out), *args], stdout=f,
                                stderr=subprocess.STDOUT, preexec_fn=pin)


def trials_of(out: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=out.name, storage=storage or engine.default_storage(out))
    return study.get_trials(deepcopy=False)


def complete_runs(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return sorted(t.user_attrs["run"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)


GRID_RUNS = ["label_smoothing=0-seed0", "label_smoothing=0-seed1", "label_smoothing=0.1-seed0",
             "label_smoothing=0.1-seed1"]


@pytest.mark.slow
def test_grid_of_two_seeds_with_two_workers_then_a_rerun_trains_nothing(tmp_path: Path, data: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """2 seeds x 2 grid values with 2 workers make the 4 run folders, named by config and seed, each finished; the
    range test ran once per recipe and both seeds of a recipe trained with its LRs; the same command again trains
    nothing and leaves every file as it was."""
    out = tmp_path / "ls"
    args = [*tiny(data, "--lr-find-iters", "10", epochs=1), "--grid", "label_smoothing=0,0.1", "--seeds", "0,1",
            "--workers", "2"]
    code, stdout, err = sweep(capsys, out, *args)
    assert code == 0, stdout + err
    runs = sorted(p.name for p in out.iterdir() if (p / "config.json").is_file())
    assert runs == GRID_RUNS
    assert all((out / r / "model.pt").is_file() for r in runs)
    assert complete_runs(trials_of(out)) == GRID_RUNS
    finders = sorted(p.parent.name for p in (out / "lr-find").glob("*/lr_finder.json"))
    assert finders == ["label_smoothing=0", "label_smoothing=0.1"]
    for recipe in finders:
        found = json.loads((out / "lr-find" / recipe / "lr_finder.json").read_text())
        for seed in (0, 1):
            config = json.loads((out / f"{recipe}-seed{seed}" / "config.json").read_text())
            assert (config["lr_min"], config["lr_max"], config["seed"]) == (found["lr_min"], found["lr_max"], seed)
    assert stdout == ""  # a sweep's lines are messages, on stderr; its results are the run folders
    assert err.count("used by its 2 seeds") == 2
    assert sum(line.startswith("done ") for line in err.splitlines()) == 4

    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "study.db"}
    code, stdout, err = sweep(capsys, out, *args)
    assert code == 0, stdout + err
    assert "4 already finished" in err
    assert "done " not in err and "lr-find " not in err
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert len(trials_of(out)) == 4


@pytest.mark.slow
def test_kill9_mid_sweep_then_rerun_runs_each_trial_once_and_resumes_exactly(tmp_path: Path, data: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep killed by SIGKILL while its first trial is in epoch 2 (its run process dies with it), then run again:
    each trial completes exactly once, the killed trial resumes from its checkpoint and ends with bitwise the
    weights and history of the same trial run by an uninterrupted sweep."""
    args = [*tiny(data, "--lr-min", "1e-4", "--lr-max", "1e-3"),
            "--grid", "label_smoothing=0,0.1", "--seeds", "0", "--workers", "1"]
    out = tmp_path / "killed" / "ls"
    out.parent.mkdir()
    parent = spawn(out, tmp_path / "killed.log", *args)
    killed = out / "label_smoothing=0-seed0"
    deadline = time.monotonic() + 180
    try:
        while not (killed / "checkpoints" / "last.pt").exists():
            assert parent.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.02)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    time.sleep(0.5)  # the run's process receives its parent's death signal
    assert not (killed / "model.pt").exists(), "the trial finished before the kill: it was not killed mid-run"
    assert not (out / "label_smoothing=0.1-seed0").exists()

    code, stdout, err = sweep(capsys, out, *args)
    assert code == 0, stdout + err
    assert f"resume {killed.name} from its checkpoint" in err
    trials = trials_of(out)
    assert complete_runs(trials) == ["label_smoothing=0-seed0", "label_smoothing=0.1-seed0"]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["run"] for t in failed] == [killed.name]  # the killed ticket, handed out again once

    reference = tmp_path / "reference" / "ls"
    reference.parent.mkdir()
    code, stdout, err = sweep(capsys, reference, *args[:-6], "--grid", "label_smoothing=0", "--seeds", "0",
                              "--workers", "1")
    assert code == 0, stdout + err
    a, b = (model_weights(run / "model.pt") for run in (killed, reference / killed.name))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    rows, ref_rows = history(killed, timing=False), history(reference / killed.name, timing=False)
    assert [list(r.items()) for r in rows] == [list(r.items()) for r in ref_rows]  # the columns in the same order


@pytest.mark.slow
def test_search_prunes_a_trial_with_a_huge_lr(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A search whose first trial (LRMAX 1e-3, enqueued as Optuna users seed a search) trains well and whose second
    has LRMAX 5 (it diverges in epoch 1 and stays far below the first): the median pruner stops the second at an
    epoch end, before its last epoch, and records it pruned."""
    out = tmp_path / "lr"
    args = [*tiny(data, "--lr-min", "1e-4", "--subset", "128", "--batch-size", "8", epochs=4),
            "--search", "lr_max=1e-3:5:log", "--trials", "2"]
    out.mkdir()
    parsed = cli.build_parser().parse_args(["sweep", "--out", str(out), *args])
    plan = make_plan(cli.given_config(parsed) | {"data": str(data)}, seeds=None, grid=[], search=parsed.search,
                     trials=2)
    study = engine.open_study(engine.open_storage(engine.default_storage(out)), out.name, plan, 0)
    study.enqueue_trial({"lr_max": 1e-3})
    study.enqueue_trial({"lr_max": 5.0})

    code, stdout, err = sweep(capsys, out, *args)
    assert code == 0, stdout + err
    trials = {t.params["lr_max"]: t for t in trials_of(out)}
    assert sorted(trials) == [1e-3, 5.0]
    good, bad = trials[1e-3], trials[5.0]
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert bad.state == optuna.trial.TrialState.PRUNED, err
    epochs = len((out / bad.user_attrs["run"] / "history.csv").read_text().splitlines()) - 1
    assert 1 <= epochs < 4
    assert f"pruned {bad.user_attrs['run']} after epoch" in err


# ------------------------------------------------------------------------------------- a shared PostgreSQL study

def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    path = shutil.which("initdb")
    return found[-1].parent if found else Path(path).parent if path else None


@slow_fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own on 127.0.0.1 (initdb in a temporary folder), stopped at the end; its URL."""
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries (Debian package postgresql) are not installed")
    root = Path(tempfile.mkdtemp(prefix="cifarkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's user
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pgdata = root / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(root / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {root}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.xdist_group("postgres")
def test_two_sweeps_share_one_study_through_postgresql(tmp_path: Path, data: Path, postgres: str) -> None:
    """Two `cifarkit sweep` processes (as on two machines: the same --out name, each its own folder) with one
    PostgreSQL --storage: the 4 trials complete once each, and no trial's run folder is finished by both."""
    args = [*tiny(data, "--lr-min", "1e-4", "--lr-max", "1e-3", epochs=1), "--grid", "label_smoothing=0,0.1",
            "--seeds", "0,1", "--workers", "1", "--storage", postgres]
    outs = [tmp_path / machine / "ls" for machine in ("a", "b")]
    for out in outs:
        out.parent.mkdir()
    procs = [spawn(out, tmp_path / f"{out.parent.name}.log", *args) for out in outs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{out.parent.name}.log").read_text()
    trials = trials_of(outs[0], postgres)
    assert len(trials) == 4
    assert complete_runs(trials) == GRID_RUNS
    finished = [{p.name for p in out.iterdir() if (p / "model.pt").is_file()} for out in outs]
    assert not finished[0] & finished[1]
    assert sorted(finished[0] | finished[1]) == GRID_RUNS


# ------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["--grid", "momentum=0.9,0.95"], "--grid: 'momentum' is not a training field"),
    (["--grid", "epochs=2,2.5"], "--grid epochs: expected a whole number, got '2.5'"),
    (["--grid", "label_smoothing=0,1.5"], "--label-smoothing must be in [0, 1), got 1.5"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", ","], "--seeds is empty"),
    (["--search", "augment=1:2", "--trials", "2"], "--search augment: only number fields can be searched"),
    (["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "cannot reach --storage postgresql+psycopg://"),
    (["--storage", "nosuchdb://x"], "cannot reach --storage nosuchdb://x"),
])
def test_bad_input_is_one_error_line_before_any_run(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
                                                    args: list[str], message: str) -> None:
    """Each mistake: exit 2, one `error:` line on stderr that names it, and no sweep folder made."""
    out = tmp_path / "sweep"
    code, stdout, err = sweep(capsys, out, *tiny(data), *args)
    assert_one_error_line(code, err, message)
    assert not out.exists()


def test_another_plan_on_an_existing_study_is_refused(tmp_path: Path, data: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The same --out with another --grid: one error line naming --grid, exit 2, and the study keeps its trials."""
    out = tmp_path / "ls"
    out.mkdir()
    parsed = cli.build_parser().parse_args(["sweep", "--out", str(out), *tiny(data)])
    plan = make_plan(cli.given_config(parsed), seeds="0", grid=["label_smoothing=0,0.1"], search=[], trials=None)
    engine.open_study(engine.open_storage(engine.default_storage(out)), out.name, plan, 0)
    code, stdout, err = sweep(capsys, out, *tiny(data), "--grid", "label_smoothing=0,0.2", "--seeds", "0")
    assert_one_error_line(code, err, "error: study 'ls' was made by a sweep with other --grid: rerun it with the same "
                          "flags, or give another --out")
    assert sorted(t.user_attrs["run"] for t in trials_of(out)) == ["label_smoothing=0-seed0",
                                                                   "label_smoothing=0.1-seed0"]


@pytest.mark.slow  # starts a Python interpreter that imports torch
def test_train_loads_neither_optuna_nor_scipy() -> None:
    """`cifarkit train`'s modules (and the CLI, with sweep and compare among its commands) import without optuna or
    scipy: those load only when sweep or compare runs."""
    code = ("import sys, cifarkit.cli, cifarkit.train, cifarkit.commands; cifarkit.cli.build_parser(); "
            "print(sorted(m for m in ('optuna', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("case", ["a file", "a run folder"])
def test_an_unusable_out_is_refused_before_the_data_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         case: str) -> None:
    """--out naming a file, or a training run's folder: exit 2 and one `error:` line naming --out, said before the
    data is looked at (the data named does not exist, so a later check would name it instead), the file untouched."""
    out = tmp_path / "out"
    if case == "a file":
        out.write_text("kept")
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")
    code, stdout, err = run_cli(["sweep", "--out", str(out), "--data", str(tmp_path / "none"), "--epochs", "1"],
                                capsys)
    assert_one_error_line(code, err, f"--out {out}", "is a file" if case == "a file" else "is a run folder")
    assert stdout == ""
    assert (out.read_text() == "kept") if case == "a file" else sorted(os.listdir(out)) == ["config.json"]


@pytest.mark.parametrize("seeds, grid, search, trials, said", [
    ("0", [], [], None, "1 trial (1 config x 1 seed)"),
    ("0-2", ["label_smoothing=0,0.1"], [], None, "6 trials (2 configs x 3 seeds)"),
    ("0", [], ["lr_max=1e-3:1e-2"], 1, "1 search trial"),
    ("0", [], ["lr_max=1e-3:1e-2"], 20, "20 search trials"),
])
def test_the_sweeps_size_is_said_in_singular_and_plural(seeds: str, grid: list[str], search: list[str],
                                                        trials: int | None, said: str) -> None:
    """The first line's count of trials, configs and seeds: one is singular, every other count plural."""
    assert trials_said(make_plan({}, seeds=seeds, grid=grid, search=search, trials=trials)) == said


@pytest.mark.parametrize("signum, dropped", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_stopped_sweep_exits_128_plus_the_signal(tmp_path: Path, signum: signal.Signals, dropped: bool,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep waiting on a trial that another live process holds, stopped by SIGTERM or SIGINT, returns 128 + the
    signal (143, 130), as `cifarkit train` does, and hands nothing out: the held trial stays RUNNING. Every line it
    says (its size, the wait, the stop) is on stderr; stdout stays empty. A SIGTERM whose KeyboardInterrupt Python
    drops (handled inside a weakref callback or __del__) still stops it, at its next tick."""
    import threading

    from cifarkit.study.sweep import Sweep

    out = tmp_path / "s"
    out.mkdir()
    plan = make_plan({}, seeds="0", grid=[], search=[], trials=None)
    sweep = Sweep(plan, out, engine.default_storage(out), 1)
    assert engine.claim(sweep.storage, sweep.study, lambda t: True) is not None  # held by this process: alive
    before = signal.getsignal(signal.SIGTERM)
    done = threading.Event()

    def stop_once_the_sweep_listens() -> None:  # the sweep takes SIGTERM over once its study is open and it waits
        while not done.wait(0.05):
            if signal.getsignal(signal.SIGTERM) is not before:
                time.sleep(0.2)
                if not dropped:
                    os.kill(os.getpid(), signum)
                    return
                # A signal handled inside a weakref callback or __del__: Python drops the handler's exception
                # (simulated here by calling the handler where its exception is caught).
                with contextlib.suppress(KeyboardInterrupt):
                    signal.getsignal(signum)(signum, None)
                return

    stopper = threading.Thread(target=stop_once_the_sweep_listens, daemon=True)
    interactive = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (xdist ignores SIGINT)
    stopper.start()
    try:
        assert sweep.run() == 128 + signum
    finally:
        done.set()
        stopper.join()
        signal.signal(signal.SIGINT, interactive)
    assert [t.state for t in trials_of(out)] == [optuna.trial.TrialState.RUNNING]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1 trial (1 config x 1 seed)" in captured.err and "waiting for 1 trial" in captured.err
    assert "interrupted: " in captured.err


@pytest.mark.parametrize("raised, line, code", [
    (OSError(28, "No space left on device", "r/history.csv"), "error: cannot write r/history.csv: disk full", 2),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "error: a batch of 16 images does not fit", 2),
    (CifarkitError("lr_max must be positive", cli="--lr-max must be positive"), "error: --lr-max must be", 2),
])
def test_a_trials_process_answers_errors_as_the_command_line_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raised: Exception,
        line: str, code: int) -> None:
    """A trial's process says a full disk, an allocator's failure and a user error as `cifarkit train` would: one
    `error:` line in the command line's words (no `[Errno 28]`), exit 2, so the sweep's report of the trial reads
    it."""
    import torch

    import cifarkit.commands  # noqa: F401 - imported with the real fit, which it keeps after the patch below
    import cifarkit.train
    from cifarkit.study.worker import run_job

    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(cifarkit.train, "fit", fail)
    config = {"out": str(tmp_path / "r"), "batch_size": 16, "lr_min": 1e-4, "lr_max": 1e-3}
    job = {"kind": "train", "config": config, "resume": False, "threads": torch.get_num_threads()}
    capsys.readouterr()
    assert run_job(job) == code
    err = capsys.readouterr().err
    assert_one_error_line(code, err, line)
    assert "Errno" not in err


def test_cuda_asked_without_a_gpu_is_one_line_before_the_study_opens(tmp_path: Path, data: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--device cuda where PyTorch sees no CUDA GPU (made so here, whatever the machine has): exit 2, one `error:`
    line naming --device cuda, and no sweep folder, so no study holds a trial that failed for it."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "sweep"
    code, _, err = sweep(capsys, out, *tiny(data), "--device", "cuda")
    assert_one_error_line(code, err, "--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    assert not out.exists()


def test_failed_trials_are_enqueued_again_once_on_a_rerun(tmp_path: Path) -> None:
    """A trial that failed (its run stopped with an error) is enqueued again, same run folder, by the next sweep
    over the study, and counted once, as its copy; a second look enqueues nothing more."""
    out = tmp_path / "s"
    out.mkdir()
    plan = make_plan({}, seeds="0,1", grid=[], search=[], trials=None)
    storage = engine.open_storage(engine.default_storage(out))
    study = engine.open_study(storage, out.name, plan, 0)
    trial = engine.claim(storage, study, lambda t: t.user_attrs["seed"] == 1)
    assert trial is not None
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert engine.counts(study)["fail"] == 1
    assert engine.retry_failed(study) == 1
    assert engine.retry_failed(study) == 0
    waiting = [t.user_attrs["run"] for t in trials_of(out) if t.state == optuna.trial.TrialState.WAITING]
    assert sorted(waiting) == ["seed0", "seed1"]  # the plan's two tickets, the failed one again
    counts = engine.counts(study)
    assert (counts["fail"], counts["waiting"]) == (0, 2)
