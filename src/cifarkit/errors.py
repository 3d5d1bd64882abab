"""The one error type a user can cause: the CLI prints it as a single `error: ...` line and exits 2."""

from __future__ import annotations


class CifarkitError(Exception):
    """A mistake in input, data or configuration, explained in one line that says what to do."""
