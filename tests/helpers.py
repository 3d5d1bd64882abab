"""What several test modules share: the CLI run in-process with its output captured, the one-error-line checks, a
run's files read without cifarkit (its weights, history.csv, a folder's contents, its checkpoint's position), a
folder that refuses new files, runs made without training, and `slow_fixture`, the mark that makes every test
requesting a fixture slow (conftest.py reads it at collection). Independent forward passes live in by_hand.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

SLOW_ATTRIBUTE = "cifarkit_slow_fixture"  # set on a fixture's function; conftest.py marks its users slow

# The shared short run (conftest.py's `short_run`): `cifarkit train SHORT_RUN_ARGS`, `--data synthetic` drawing
# SHORT_SYNTHETIC (train, test) images. 2 epochs of SHORT_STEPS_PER_EPOCH steps.
SHORT_SYNTHETIC = (64, 32)
SHORT_RUN_ARGS = ["--data", "synthetic", "--subset", "32", "--test-subset", "16", "--batch-size", "8", "--epochs", "2",
                  "--lr-min", "1e-4", "--lr-max", "1e-3", "--no-plots"]
SHORT_STEPS_PER_EPOCH = 32 // 8


def slow_fixture(*args: Any, **kwargs: Any) -> Any:
    """`@slow_fixture(scope=...)` or `@slow_fixture`: a pytest fixture that trains (or launches a process, a server,
    a browser); every test that requests it, directly or through another fixture, is marked `slow`."""

    def wrap(function: F) -> F:
        setattr(function, SLOW_ATTRIBUTE, True)
        return pytest.fixture(**kwargs)(function)  # type: ignore[no-any-return]

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return wrap(args[0])
    return wrap


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`cifarkit ARGV` in this process: (exit code, stdout, stderr), with nothing printed before it mixed in."""
    from cifarkit.cli import main

    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and stderr exactly one `error: ...` line holding every fragment, no traceback, no raw `[Errno N]`
    (an OS error is said in words)."""
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "[Errno" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """`cifarkit ARGV` in this process, which must answer as `assert_one_error_line` says: its one line, without the
    newline."""
    code, _, err = run_cli(argv, capsys)
    assert_one_error_line(code, err, *fragments)
    return err.rstrip("\n")


def final_line(err: str, prefix: str = "error: ") -> str:
    """The line starting with `prefix` (`error: `, `interrupted: `) that ends the stderr of a command that worked
    before it stopped (what it said while working comes first): the only such line and the last, with no traceback
    and no raw `[Errno N]`."""
    lines = err.rstrip("\n").splitlines()
    assert "Traceback" not in err and "[Errno" not in err, err
    assert [line for line in lines if line.startswith(prefix)] == lines[-1:], err
    return lines[-1]


def drawn_images(figure: Any) -> list[Any]:
    """The arrays a matplotlib figure shows with imshow, axes by axes in drawing order (what a gallery put in it)."""
    import numpy as np

    return [np.asarray(image.get_array()) for ax in figure.axes for image in ax.images]


def drawn_lines(ax: Any) -> list[tuple[Any, Any]]:
    """(x, y) of every line an axes draws, in drawing order, as float arrays."""
    import numpy as np

    return [(np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)) for line in ax.lines]


def model_weights(path: Any, *, bare: bool = False) -> dict[str, Any]:
    """The weights a model.pt holds, read with torch.load alone: its "weights" field. The file must be a dict of
    named fields with its "format" marker, as fit writes it; bare=True also takes an older model file that is a bare
    state dict."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if "format" in state and "weights" in state:
        return state["weights"]
    assert bare and all(isinstance(v, torch.Tensor) for v in state.values()), f"{path}: not a model.pt of fit's"
    return state


def checkpoint_position(run: Path) -> tuple[int, int]:
    """(epoch, step_in_epoch) that RUN/checkpoints/last.pt continues from; loading it proves it is whole."""
    from cifarkit.checkpoint import load_checkpoint

    state = load_checkpoint(Path(run) / "checkpoints" / "last.pt")
    return state["epoch"], state["step_in_epoch"]


def snapshot(folder: Path, *, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and folder under `folder` (but those named in `ignore`, and what they hold), relative path -> the
    file's sha256 and modification time in ns, or "<dir>" for a folder: equal before and after means nothing was
    written (not even the same bytes again), made or removed."""
    import hashlib

    def entry(p: Path) -> str:
        return f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}" if p.is_file() else "<dir>"

    return {str(p.relative_to(folder)): entry(p) for p in sorted(folder.rglob("*"))
            if not set(p.relative_to(folder).parts) & set(ignore)}


TIMING_COLUMNS = ("seconds", "images_per_second")  # history.csv's columns that differ from one run to another


def history(run: Path, *, timing: bool = True) -> list[dict[str, str]]:
    """RUN/history.csv's rows, read with the csv module, column -> text, in the file's column order; timing=False
    leaves out the timing columns (the only ones a resumed run may change)."""
    import csv

    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if timing or k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make `folder` refuse new files. Root ignores permission bits, so chmod 0o555 proves nothing there; `chattr +i`
    (immutable) is refused even to root, where the filesystem supports it. Elsewhere, non-root: chmod 0o555. Root
    without chattr: simulated (see _simulated_read_only). Yields the mode used."""
    import subprocess

    try:
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    except OSError:  # no chattr here
        immutable = False
    if immutable:
        try:
            yield "chattr"
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=False)  # a failure here must not hide the test's
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "chmod"
        finally:
            folder.chmod(0o755)
    else:
        yield from _simulated_read_only(folder)


def _simulated_read_only(folder: Path) -> Iterator[str]:
    """A folder that refuses new entries, renames and removals as a read-only filesystem would (EROFS), and that
    os.access calls not writable; its existing files stay writable, as under chmod 0o555 or chattr +i."""
    import builtins
    import errno
    import io

    real_io_open, real_os_open, real_mkdir, real_access = io.open, os.open, os.mkdir, os.access
    real_replace, real_rename, real_unlink = os.replace, os.rename, os.unlink
    target = os.path.realpath(folder)

    def inside(path: Any) -> bool:  # an entry of the folder, not the folder itself
        return isinstance(path, (str, bytes, os.PathLike)) and \
            os.path.dirname(os.path.realpath(os.fsdecode(path))) == target

    def refuse(path: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def new_entry(path: Any) -> bool:
        return inside(path) and not os.path.lexists(path)

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if new_entry(path) and set(mode) & set("wax+"):
            refuse(path)
        return real_io_open(path, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if new_entry(path) and flags & os.O_CREAT:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            refuse(path)
        real_mkdir(path, *args, **kwargs)

    def fake_move(real: Callable[..., None]) -> Callable[..., None]:
        def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if inside(src) or inside(dst):
                refuse(dst if inside(dst) else src)
            real(src, dst, *args, **kwargs)
        return move

    def fake_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            refuse(path)
        real_unlink(path, *args, **kwargs)

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)) == target \
                and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for module, name, fake in ((builtins, "open", fake_open), (io, "open", fake_open), (os, "open", fake_os_open),
                                   (os, "mkdir", fake_mkdir), (os, "replace", fake_move(real_replace)),
                                   (os, "rename", fake_move(real_rename)), (os, "unlink", fake_unlink),
                                   (os, "access", fake_access)):
            mp.setattr(module, name, fake)
        yield "simulated"


def unread_run(tmp_path: Any) -> Any:
    """A run folder whose model.pt is an empty file: any command that reads it fails, so a test that passes with it
    shows that its refusal comes before the weights are read."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    return run


def untrained_run(folder: Any, seed: int = 0) -> Any:
    """A run folder without training: model.pt (named fields, as fit writes it) holds a seeded, untrained
    CustomResNet, and config.json records `--data synthetic`. For tests whose promise is about arguments, refusals or
    files, not the network's numbers."""
    import torch

    from cifarkit.config import TrainConfig
    from cifarkit.data import resolve_data
    from cifarkit.models import CustomResNet

    from cifarkit.inference import save_model
    from cifarkit.run import write_config

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = TrainConfig(data="synthetic", data_fingerprint=resolve_data("synthetic").fingerprint, out=str(folder),
                         test_subset=4)
    save_model(folder / "model.pt", CustomResNet(), config, resolve_data("synthetic").classes)  # as fit writes it
    write_config(folder, config)
    return folder


def png_pixels(path: Any) -> Any:
    """A PNG's pixels as an H x W x 3 int array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int32)


def colour_pixels(pixels: Any, colour: str, tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` (per channel, 0-255) of a matplotlib colour ("tab:blue")."""
    import numpy as np
    from matplotlib.colors import to_rgb

    target = np.round(np.asarray(to_rgb(colour)) * 255).astype(np.int32)
    return int((np.abs(pixels - target) <= tolerance).all(axis=-1).sum())
