"""What several test modules share: the CLI run in-process with its output captured, the one-error-line check, and
`slow_fixture`, the mark that makes every test requesting a fixture slow (conftest.py reads it at collection)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

SLOW_ATTRIBUTE = "cifarkit_slow_fixture"  # set on a fixture's function; conftest.py marks its users slow


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
    """Exit code 2 and stderr exactly one `error: ...` line holding every fragment, no traceback."""
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def drawn_images(figure: Any) -> list[Any]:
    """The arrays a matplotlib figure shows with imshow, axes by axes in drawing order (what a gallery put in it)."""
    import numpy as np

    return [np.asarray(image.get_array()) for ax in figure.axes for image in ax.images]


def drawn_lines(ax: Any) -> list[tuple[Any, Any]]:
    """(x, y) of every line an axes draws, in drawing order, as float arrays."""
    import numpy as np

    return [(np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)) for line in ax.lines]
