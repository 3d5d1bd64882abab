"""The one way a command tells the user something: a line on stderr, written through tqdm so that it never glues to a
progress bar. Results (what a command computes) go to stdout with print; everything else comes through here."""

from __future__ import annotations

import sys

from tqdm import tqdm


def say(line: str) -> None:
    """One line for the user on stderr: what a command uses, what it found, a warning."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()
