"""Image files from a user (the app's uploads), read within stated bounds into the model's input.

Each file is checked before its pixels are decoded: size on disk, format, frame count and pixel count come from the
header, so an oversized or hostile file costs a header read. What passes is read as `cifarkit predict` reads it
(`cifarkit.data.images.read_image`: converted to RGB, resized bilinearly to 32x32). What fails becomes one line that
names the file and the bound, never an exception:

    >>> batch = read_uploads(["cat.jpg", "notes.txt"])
    >>> batch.images.shape, batch.problems
    ((1, 32, 32, 3), ['notes.txt: not an image that can be read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)'])
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cifarkit.data.images import MAX_SIDE, image_problem, read_image
from cifarkit.errors import CifarkitError

MAX_FILES = 16  # per request
MAX_BYTES = 10 * 1024 * 1024  # per file: 10 MiB

BOUNDS = (f"at most {MAX_FILES} files per request, each a still image of at most {MAX_SIDE}x{MAX_SIDE} pixels "
          f"and {MAX_BYTES // 2**20} MB")


@dataclass
class Uploads:
    """The readable images (uint8 [N, 32, 32, 3]) with their file names, and one line per refused file."""

    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 32, 32, 3), np.uint8))
    names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_image_file(path: Path) -> str | None:
    """Why the file at `path` is refused (one line without its name), or None when it is a still image within the
    bounds. Only the header is read; PIL's decompression-bomb warning becomes a refusal, never a printed warning."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.stat(path).st_size
    except OSError:
        return "the file is gone (upload it again)"
    if size > MAX_BYTES:
        return f"{size / 2**20:.1f} MB is over the {MAX_BYTES // 2**20} MB limit per file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return image_problem(img)  # the checks `predict` makes: one home
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return f"too many pixels (over {MAX_SIDE}x{MAX_SIDE})"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # SyntaxError: PIL's damaged-header signal
        return "not an image that can be read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"


def read_uploads(paths: Sequence[str | os.PathLike[str]], *, max_files: int = MAX_FILES) -> Uploads:
    """The first `max_files` files read as 32x32 RGB images; every refused file (or the surplus) gets a line."""

    out = Uploads()
    images = []
    if len(paths) > max_files:
        out.problems.append(f"{len(paths)} files sent: only the first {max_files} were read "
                            f"(at most {max_files} per request)")
    for raw in paths[:max_files]:
        path = Path(raw)
        problem = check_image_file(path)
        if problem is None:
            try:
                images.append(read_image(path))
            except CifarkitError:  # a header that reads but pixels that do not (a truncated file)
                problem = "the image data is damaged and cannot be decoded"
        if problem is None:
            out.names.append(path.name)
        else:
            out.problems.append(f"{path.name}: {problem}")
    if images:
        out.images = np.stack(images)
    return out
