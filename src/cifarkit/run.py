"""The run folder, cifarkit's central object: the name of every file in it, how each is read back, which weights a
path means, the lock, and claiming a new folder so that a failed start leaves nothing behind.

    from cifarkit import run
    weights = run.find_weights("runs/a")         # runs/a/model.pt, else runs/a/checkpoints/last.pt
    config = run.read_config("runs/a")           # TrainConfig, or one CifarkitError line naming config.json
    run.check_run_out("runs/b", kind="train")   # before any work: writable, not a file, not another kind of run

Every reader raises CifarkitError naming the file and what to do when it is missing, truncated or damaged. Nothing
here imports torch: the command line checks its outputs with it before loading the model.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cifarkit.atomic import TEMP_GLOB, write_json, write_text
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError, TrainingInterrupted, one_line

# Every file of a run folder (docs/design.md, "Run folder"). No other module spells these names.
CONFIG = "config.json"  # TrainConfig.to_dict() of what ran
METRICS = "metrics.json"  # the run's figures, rewritten every epoch
HISTORY = "history.csv"  # one row per epoch
STEPS = "steps.csv"  # one row per optimiser step
SCHEDULE = "schedule.json"  # the LR of every step
LR_FINDER = "lr_finder.json"  # the range test's curve and picks
LR_FINDER_PLOT = "lr_finder.png"  # `cifarkit lr-find`'s figure
MODEL = "model.pt"  # the final model, a file that describes itself (cifarkit.inference)
CHECKPOINT_NAME = "last.pt"
CHECKPOINT = f"checkpoints/{CHECKPOINT_NAME}"  # the full training state, for --resume
PER_CLASS = "per_class.json"
CLASSIFICATION_REPORT = "classification_report.csv"
REPORT = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
FILE_NAMES = (CONFIG, METRICS, HISTORY, STEPS, SCHEDULE, LR_FINDER, LR_FINDER_PLOT, MODEL, CHECKPOINT_NAME, PER_CLASS,
              CLASSIFICATION_REPORT, REPORT, REPORT_HTML, LOCK)  # spelled here only (tests/test_layers.py)
TRAINING_FILES = (CONFIG, METRICS, MODEL, CHECKPOINT)  # any of them: a training run's folder
WEIGHTS_HELP = f"a run folder (its {MODEL}, else {CHECKPOINT}), or a weights file"

# The first bytes of what torch.save writes: a zip archive (the format since PyTorch 1.6) or a pickle (older files).
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
OTHER_FILES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"{": "JSON"}


# ------------------------------------------------------------------------------------------------------ readers

def read_json(path: Path, what_to_do: str) -> Any:
    """JSON from `path`; a missing, truncated or damaged file is one CifarkitError naming it and `what_to_do`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CifarkitError(f"{path} is missing: {what_to_do}") from None
    except OSError as e:
        raise CifarkitError(f"cannot read {path} ({e.strerror or one_line(e)}): {what_to_do}") from e
    try:
        return json.loads(text)
    except ValueError as e:
        state = "empty" if not text.strip() else f"truncated or damaged ({one_line(e)})"
        raise CifarkitError(f"cannot read {path}: {state}; {what_to_do}") from e


def read_config(run_or_file: str | os.PathLike[str]) -> TrainConfig:
    """The TrainConfig of a run folder (or of a config.json given itself)."""
    path = Path(run_or_file)
    path = path / CONFIG if path.is_dir() else path
    fix = (f"it records the run's settings; restore it from a copy, or give the weights file alone "
           f"({MODEL} holds its own settings)")
    values = read_json(path, fix)
    try:
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object")
        return TrainConfig.from_dict(values)
    except CifarkitError as e:
        raise CifarkitError(f"cannot read {path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise CifarkitError(f"cannot read {path}: not a cifarkit config ({one_line(e)}); {fix}") from e


def read_metrics(run: Path) -> dict[str, Any]:
    """RUN/metrics.json, written at the end of every epoch."""
    path = Path(run) / METRICS
    metrics = read_json(path, f"it is written at the end of every epoch; finish the run with `cifarkit train "
                              f"--resume --out {run}`, or restore a copy")
    if not isinstance(metrics, dict):
        raise CifarkitError(f"cannot read {path}: not a cifarkit metrics file (a JSON {type(metrics).__name__})")
    return metrics


def read_optional_json(path: Path) -> dict[str, Any] | None:
    """A file a run may lack (lr_finder.json when the LRs were given, per_class.json before the plots): None when
    absent, one CifarkitError line when damaged."""
    if not Path(path).is_file():
        return None
    return read_json(path, "delete it, or restore a copy, and run the command again")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of RUN/history.csv or RUN/steps.csv ([] when the file is absent)."""
    if not Path(path).is_file():
        return []
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise CifarkitError(f"cannot read {path}: {one_line(e)}; it is rewritten at the end of every epoch") from e


def write_config(run: Path, config: TrainConfig) -> None:
    config.save(Path(run) / CONFIG)


def write_metrics(run: Path, metrics: dict[str, Any]) -> None:
    write_json(Path(run) / METRICS, metrics)


def write_lr_finder(folder: Path, values: dict[str, Any]) -> Path:
    path = Path(folder) / LR_FINDER
    write_text(path, json.dumps(values) + "\n")
    return path


# --------------------------------------------------------------------------------------------- which weights

def find_weights(run_or_path: str | os.PathLike[str]) -> Path:
    """The weights a path means: a run folder's model.pt, else its checkpoints/last.pt (a run not finished; also
    found in the checkpoints folder itself), else the path itself when it is a file."""
    path = Path(run_or_path)
    if path.is_dir():
        for weights in (path / MODEL, path / CHECKPOINT, path / CHECKPOINT_NAME):
            if weights.is_file():
                return weights
        raise CifarkitError(f"{path} is a folder without {MODEL} or {CHECKPOINT}: not a cifarkit run folder")
    if not path.is_file():
        raise CifarkitError(f"no run folder or weights file at {path}")
    return path


def run_file(weights: Path, name: str) -> Path | None:
    """RUN/name for weights given as a run folder, RUN/model.pt or RUN/checkpoints/last.pt: the nearest of the path,
    its folder and that folder's parent that holds `name`; None when none does."""
    weights = Path(weights)
    folders = (weights,) if weights.is_dir() else (weights.parent, weights.parent.parent)
    return next((f / name for f in folders if (f / name).is_file()), None)


def run_of(weights: Path) -> Path | None:
    """The run folder that weights belong to (the one holding config.json); None for a file on its own."""
    found = run_file(weights, CONFIG)
    return found.parent if found is not None else None


def report_folder(path: Path) -> Path:
    """The run folder `cifarkit report PATH` writes into: PATH itself, or the run a weights file inside it belongs
    to; it must hold config.json and metrics.json (one finished epoch)."""
    path = Path(path)
    if path.is_file():
        check_torch_file(path)
        run_dir = run_of(path)
        if run_dir is None:
            raise CifarkitError(f"{path} is not inside a run folder (no {CONFIG} beside it); give the run folder")
    elif path.is_dir():
        run_dir = path
    else:
        raise CifarkitError(f"no run folder at {path}: give the --out folder of a `cifarkit train` run")
    for name in (CONFIG, METRICS):
        if not (run_dir / name).is_file():
            raise CifarkitError(f"{run_dir} has no {name}: give the folder of a `cifarkit train` run that "
                                "completed at least one epoch")
    read_config(run_dir), read_metrics(run_dir)  # damaged: refused before any work
    return run_dir


def is_checkpoint(weights: Path) -> bool:
    return weights.name == CHECKPOINT_NAME


def weights_note(weights: Path) -> str:
    """One line that says which weights of a run are used."""
    if is_checkpoint(weights) and weights.parent.name == Path(CHECKPOINT).parent.name:
        return (f"weights: {weights} (the last checkpoint: {weights.parent.parent / MODEL} is written when the "
                "run finishes)")
    return f"weights: {weights}"


def check_torch_file(path: Path) -> None:
    """Refuse, from its first bytes, a file that cannot be a PyTorch file (text, CSV, JSON, an image, empty), so that
    torch.load never parses it."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CifarkitError(f"cannot read {path}: {e.strerror or one_line(e)}") from e
    if head.startswith(TORCH_MAGIC):
        return
    raise CifarkitError(f"cannot read {path}: truncated or not a PyTorch file (it is {_file_kind(head)}); give a run "
                        f"folder, its {MODEL} or {CHECKPOINT}")


def _file_kind(head: bytes) -> str:
    if not head:
        return "empty"
    kind = next((name for magic, name in OTHER_FILES.items() if head.lstrip().startswith(magic)), None)
    if kind is None and b"\0" not in head:
        try:
            head.decode("utf-8")
            kind = "text"
        except UnicodeDecodeError:
            pass
    return kind or "neither a zip archive nor a pickle"


# ------------------------------------------------------------------------------------------------ outputs

def _refuse(template: str, **values: object) -> CifarkitError:
    """A CifarkitError in the API's words (`out`, `resume=True`) with the command line's beside it (`--out`,
    `--resume`): `template` says {flag} and {resume} where they differ."""
    return CifarkitError(template.format(flag="out", resume="call fit with resume=True", **values),
                         cli=template.format(flag="--out", resume="pass --resume", **values))


def _writable_ancestor(path: Path, shown: Path) -> None:
    """The nearest existing folder at or above `path` must be a folder this process may write into (`shown`: the
    output the user named)."""
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise _refuse("{flag} {path}: {here} is a file, not a folder; choose another {flag}", path=shown, here=here)
    if not os.access(here, os.W_OK | os.X_OK):
        raise _refuse("{flag} {path}: {here} is not writable; choose another {flag}", path=shown, here=here)


def check_run_out(out: str | os.PathLike[str], *, kind: str) -> Path:
    """Refuse, before any work, an output folder that cannot take this run: a file, a folder that cannot be written,
    or (kind "lr-find") a training run's folder, whose own lr_finder.json the range test would replace. Kind "train"
    refuses a folder that holds a run already (resume continues one); "resume" asks for none of these."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise _refuse("{flag} {path} is a file: give a folder for the run's files", path=path)
    _writable_ancestor(path, path)
    if kind == "lr-find" and path.is_dir():
        held = [name for name in TRAINING_FILES if (path / name).exists()]
        if held:
            raise _refuse("{flag} {path} holds a training run ({name}); lr-find would replace its {finder}: choose "
                          "another {flag}", path=path, name=held[0], finder=LR_FINDER)
    if kind == "train" and (path / CHECKPOINT).exists():
        raise _refuse("{path} already holds a run: {resume} to continue it, or choose another {flag}", path=path)
    return path


def check_out_file(out: str | os.PathLike[str], *, suffix: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, or a place with no writable folder."""
    path = Path(out)
    if path.is_dir():
        raise _refuse("{flag} {path} is a folder; give a file name such as {example}", path=path,
                      example=path / f"model.{suffix}")
    _writable_ancestor(path.parent, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise _refuse("{flag} {path} exists and is not writable; choose another {flag}", path=path)
    return path


# ------------------------------------------------------------------------------------------- lock and claim

class RunLock:
    """An exclusive flock on RUN/.lock: a second run on the same folder is refused; the kernel drops the lock when
    its holder dies, even by kill -9, so a crash never leaves the folder stuck."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only or full disk, no permission: say so before any work is done
            raise CifarkitError(f"cannot use {self.path.parent} as a run folder: {e.strerror or e}; "
                                "choose a writable --out") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CifarkitError(f"another cifarkit run (pid {holder}) is using {self.path.parent}; "
                                "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        # Temp files of a writer killed mid-write (kill -9, power loss): only a lock holder writes here, so any that
        # exist now are orphans, and each can be a checkpoint's size.
        checkpoints = Path(CHECKPOINT).parent.name
        for orphan in (*self.path.parent.glob(TEMP_GLOB), *self.path.parent.glob(f"{checkpoints}/{TEMP_GLOB}")):
            orphan.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _signals_raise(run: Path) -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise TrainingInterrupted in the block, so a start stopped before the training loop (the
    range test takes minutes on a CPU) cleans up like any failure; the loop installs handlers of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if (run / CHECKPOINT).exists():
            raise TrainingInterrupted(signum, f"stopped by {name}; {run / CHECKPOINT} keeps the last finished epoch; "
                                      f"continue with: cifarkit train --resume --out {run}")
        raise TrainingInterrupted(signum, f"stopped by {name} before the first checkpoint; nothing was kept")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def claim_run_folder(run: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold RUN's lock for the block. If the block fails (an error, Ctrl-C, SIGTERM) before the run's first
    checkpoint, remove what this start made: the folder, with any parents made for it, when it did not exist before;
    else only the entries it added. A folder with a checkpoint keeps everything, and so does one whose lock another
    run holds."""
    if not enabled:  # under torchrun, only rank 0 writes the run folder
        yield
        return
    run = Path(run).absolute()
    made = not run.exists()
    top = run  # the highest folder this start creates
    while made and not top.parent.exists():
        top = top.parent
    before = set() if made or not run.is_dir() else set(os.listdir(run))
    checkpoint = run / CHECKPOINT
    with contextlib.ExitStack() as lock:
        lock.enter_context(RunLock(run))  # refused (another run, no permission): nothing of ours to remove
        try:
            with _signals_raise(run):
                yield
        except BaseException:
            if not checkpoint.exists():
                lock.close()  # release first, so the lock file goes with the rest
                _remove_new(run, top if made else None, before)
            raise


def _remove_new(run: Path, made: Path | None, before: set[str]) -> None:
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    for name in set(os.listdir(run)) - before:
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
