"""The one way a command tells the user something: a line on stderr, written through tqdm so that it never glues to a
progress bar. Results (what a command computes) go to stdout with print; everything else comes through here."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def say(line: str) -> None:
    """One line for the user on stderr: what a command uses, what it found, a warning."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


class ConsoleHandler(logging.Handler):
    """Library warnings (cifarkit.data logs through `logging`, so that Python users can filter them) as `say` lines
    on the command line: one channel, never glued to a progress bar. A record that names an argument (`subset=5`)
    carries the command line's words in its `cli` attribute (`--subset 5`), which is what is said here."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(f"{record.levelname.lower()}: {getattr(record, 'cli', None) or record.getMessage()}")
        except Exception:  # a handler never raises into the code that logged
            self.handleError(record)


def route_logging() -> None:
    """Send cifarkit's log records at WARNING and above through `say` (once per process), where nothing else
    handles them: a program (or a test runner) that configured logging keeps its own handlers."""
    logger = logging.getLogger("cifarkit")
    if logging.getLogger().handlers:
        return
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler(logging.WARNING)
        logger.addHandler(handler)
