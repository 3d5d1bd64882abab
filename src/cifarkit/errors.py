"""The one error type a user can cause: the CLI prints it as a single `error: ...` line and exits 2."""

from __future__ import annotations


class CifarkitError(Exception):
    """A mistake in input, data or configuration, explained in one line that says what to do."""


def one_line(exc: BaseException) -> str:
    """Another library's exception as one short line ("OSError: No space left on device"), so that every
    CifarkitError built around it stays one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
