"""The one way cifarkit writes a file that someone may read back: a temp file beside it, fsync, then rename.

A reader (a resumed run, `cifarkit report`, a second process) sees the old file or the new one, never a torn one.
Temp files are named `.NAME.tmp-PID`; a run folder's lock holder sweeps those left by a writer that was killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_GLOB = ".*.tmp-*"  # matches every temp name below, for sweeping orphans


def temp_path(path: Path) -> Path:
    """`.NAME.tmp-PID` beside `path`: one writer per process, and a name TEMP_GLOB finds."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike[str], *, text: bool = False) -> Iterator[IO[Any]]:
    """`with atomic_write(path) as f: f.write(...)`: the file appears at `path` only when the block ends without an
    error; on any error (a full disk, Ctrl-C) the temp file is removed and an old file at `path` is left intact."""
    path = Path(path)
    tmp = temp_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, text=True) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
