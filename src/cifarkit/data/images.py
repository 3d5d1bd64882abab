"""Image files we must not trust: CIFAR-10 trees of 60,000 PNGs decoded in helper processes, each file checked,
and a user's own pictures for `predict`."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarkit.errors import CifarkitError, one_line
from cifarkit.system import usable_cpus


_PARALLEL_MIN_IMAGES = 4000  # below this, starting helper processes costs more than it saves


def decode_image(path: str) -> np.ndarray:
    """One 32×32 image file as uint8 HWC RGB; anything else is a CifarkitError naming the file."""
    try:
        with Image.open(path) as image:
            if image.size != (32, 32):
                raise CifarkitError(f"{path}: image is {image.size[0]}×{image.size[1]}, expected 32×32; resize or "
                                    "remove it")
            return np.asarray(image.convert("RGB"))
    except CifarkitError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError on truncated data, SyntaxError, ValueError, ...
        raise CifarkitError(f"{path}: cannot decode it as an image ({one_line(exc)}); remove or replace it") from exc


def _decode_many(paths: list[str]) -> np.ndarray:
    out = np.empty((len(paths), 32, 32, 3), np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path)
    return out


# Decoding a big tree runs in helper interpreters that import only numpy and PIL. PIL decoding of 32×32 images is
# Python-bound, so threads do not help; unlike multiprocessing, helpers neither fork a process that may be running torch
# threads nor re-import the caller's main script. Same calls as decode_image; any failure falls back to it.
_DECODE_WORKER = """
import os, sys
import numpy as np
from PIL import Image, UnidentifiedImageError
for path in sys.stdin.buffer.read().split(b"\\0"):
    with Image.open(os.fsdecode(path)) as image:
        if image.size != (32, 32):
            sys.exit(3)
        sys.stdout.buffer.write(np.asarray(image.convert("RGB")).tobytes())
"""


def _decode_in_helper(paths: list[str]) -> np.ndarray:
    try:  # -I: no PYTHONPATH, user site or current folder on the helper's path, so it imports the real numpy and PIL
        done = subprocess.run([sys.executable, "-I", "-c", _DECODE_WORKER], capture_output=True, check=False,
                              input=b"\0".join(os.fsencode(p) for p in paths))
    except OSError:  # no processes allowed here: decode in this one
        return _decode_many(paths)
    if done.returncode != 0 or len(done.stdout) != len(paths) * 32 * 32 * 3:
        return _decode_many(paths)  # a bad file (decoding here names it in a CifarkitError) or a broken helper
    return np.frombuffer(done.stdout, np.uint8).reshape(len(paths), 32, 32, 3)


def decode_images(paths: list[str]) -> np.ndarray:
    """Decode every image, in one helper process per core for big trees (60k PNGs on 2 cores: ~8 s serial, ~5 s)."""
    workers = min(usable_cpus(), 8)
    if workers < 2 or len(paths) < _PARALLEL_MIN_IMAGES:
        return _decode_many(paths)
    bounds = np.linspace(0, len(paths), workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:  # threads only wait for the helpers
        return np.concatenate(list(pool.map(_decode_in_helper, [paths[a:b] for a, b in zip(bounds, bounds[1:])])))


def read_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 [32, 32, 3]; other sizes are resized (bilinear), as a user's photo would need."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (32, 32):
                img = img.resize((32, 32), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise CifarkitError(f"no image at {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CifarkitError(f"cannot decode {path} as an image ({type(e).__name__})") from e
