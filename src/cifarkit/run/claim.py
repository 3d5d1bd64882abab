"""Where a run's files go: outputs checked before any work (a file, an unwritable place, another kind of run), the
lock on a run folder, and claiming a new folder so that a failed start leaves nothing behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from cifarkit.atomic import TEMP_GLOB
from cifarkit.errors import CifarkitError, TrainingInterrupted
from cifarkit.run.files import CHECKPOINT, CONFIG, LOCK, LR_FINDER, TRAINING_FILES


def _refuse(template: str, **values: object) -> CifarkitError:
    """A CifarkitError in the API's words (`out`, `resume=True`) with the command line's beside it (`--out`,
    `--resume`): `template` says {flag} and {resume} where they differ."""
    return CifarkitError(template.format(flag="out", resume="call fit with resume=True", **values),
                         cli=template.format(flag="--out", resume="pass --resume", **values))


def _writable_ancestor(path: Path, shown: Path, *, folder: bool) -> None:
    """The nearest existing folder at or above `path` must be a folder this process may write into (`shown`: the
    output the user named; `folder`: a run folder, said in RunLock's words)."""
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise _refuse("{flag} {path}: {here} is a file, not a folder; choose another {flag}", path=shown, here=here)
    if not os.access(here, os.W_OK | os.X_OK):
        if folder:
            raise _refuse("cannot use {path} as a run folder: {here} is not writable; choose a writable {flag}",
                          path=shown, here=here)
        raise _refuse("{flag} {path}: {here} is not writable; choose another {flag}", path=shown, here=here)


def _check_not_in_use(run: Path) -> None:
    """A live run holds RUN/.lock: say so (with its pid) before anything else is said about the folder."""
    lock = run / LOCK
    if not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # unreadable: RunLock says why when the run starts
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _in_use(fd, run) from None
    finally:
        os.close(fd)


def _in_use(fd: int, run: Path) -> CifarkitError:
    """The refusal of a folder whose lock (open as `fd`) a live run holds, naming that run's pid."""
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return _refuse("another cifarkit run (pid {holder}) is using {run}; wait for it or choose another {flag}",
                   holder=holder, run=run)


def check_run_out(out: str | os.PathLike[str], *, kind: str) -> Path:
    """Refuse, before any work, an output folder that cannot take this run: a file, a folder that cannot be written,
    or (kind "lr-find") a training run's folder, whose own lr_finder.json the range test would replace. Kind "train"
    refuses a folder that holds a run already, finished or not, with or without its checkpoint (resume continues
    one); a config.json alone is a start stopped before its first epoch ended, which has nothing to lose. "resume"
    asks for none of these."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise _refuse("{flag} {path} is a file: give a folder for the run's files", path=path)
    _writable_ancestor(path, path, folder=True)
    if kind in ("train", "resume"):
        _check_not_in_use(path)
    if kind == "lr-find" and path.is_dir():
        held = [name for name in TRAINING_FILES if (path / name).exists()]
        if held:
            raise _refuse("{flag} {path} holds a training run ({name}); lr-find would replace its {finder}: choose "
                          "another {flag}", path=path, name=held[0], finder=LR_FINDER)
    if kind == "train" and (path / CHECKPOINT).exists():
        raise _refuse("{path} already holds a run: {resume} to continue it, or choose another {flag}", path=path)
    if kind == "train" and path.is_dir():
        held = [name for name in TRAINING_FILES if name != CONFIG and (path / name).exists()]
        if held:
            raise _refuse("{path} already holds a run ({name}); a new run would replace it: choose another {flag}",
                          path=path, name=held[0])
    return path


def check_out_file(out: str | os.PathLike[str], *, suffix: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, or a place with no writable folder."""
    path = Path(out)
    if path.is_dir():
        raise _refuse("{flag} {path} is a folder; give a file name such as {example}", path=path,
                      example=path / f"model.{suffix}")
    _writable_ancestor(path.parent, path, folder=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise _refuse("{flag} {path} exists and is not writable; choose another {flag}", path=path)
    return path


def check_out_folder(out: str | os.PathLike[str], *, what: str) -> Path:
    """Refuse, before any work, an output folder (of a sweep, of compare's files) that cannot be made or written: a
    file, or a place with no writable folder. `what` names what goes in it ("the sweep's runs")."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise _refuse("{flag} {path} is a file: give a folder for {what}", path=path, what=what)
    _writable_ancestor(path, path, folder=False)
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
            refusal = _in_use(fd, self.path.parent)
            os.close(fd)
            raise refusal from None
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
