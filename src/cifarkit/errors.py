"""The one error type a user can cause: the CLI prints it as a single `error: ...` line and exits 2."""

from __future__ import annotations

import errno
import re


REPOSITORY = "https://github.com/cifarkit/cifarkit"  # cifarkit installs from here: it is on no package index


def pip_install(extra: str) -> str:
    """The command that installs cifarkit with an optional extra (app, export, ...) from its repository."""
    return f'pip install "cifarkit[{extra}] @ git+{REPOSITORY}"'


class CifarkitError(Exception):
    """A mistake in input, data or configuration, explained in one line that says what to do.

    The message speaks the Python API's words (`epochs`, `resume=True`); `cli`, when given, is the same line in the
    command line's words (`--epochs`, `--resume`), which is what `cifarkit` prints.
    """

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli

    def cli_line(self) -> str:
        return self.cli or str(self)


def named_error(message: str, *names: str) -> CifarkitError:
    """A CifarkitError whose message names arguments (`lr_min must be positive`) and whose CLI line names their flags
    (`--lr-min must be positive`): each of `names` is replaced where it stands as a whole word."""
    cli = message
    for name in names:
        cli = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "--" + name.replace("_", "-"), cli)
    return CifarkitError(message, cli=cli)


def one_line(exc: BaseException) -> str:
    """Another library's exception as one short line ("OSError: No space left on device"), so that every
    CifarkitError built around it stays one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def write_error(path: object, exc: OSError) -> CifarkitError:
    """The one wording of a failed write (a full disk, a read-only folder): the file, why, and that an old one is
    intact (every write is atomic: cifarkit.atomic)."""
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or one_line(exc))
    return CifarkitError(f"cannot write {path}: {reason}; the previous file, if any, is intact")


def os_error_line(exc: OSError) -> str:
    """An OSError that reached the command line, in one line: a full disk in write_error's words, else the file and
    the system's reason, never a raw `[Errno N]`."""
    if exc.errno == errno.ENOSPC:
        return str(write_error(exc.filename or "a file", exc))
    reason = exc.strerror or one_line(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped a run: at a step boundary with a checkpoint (`train --resume` continues it), or before
    the first checkpoint, with nothing kept. The command line exits 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
