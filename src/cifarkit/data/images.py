"""Image files we must not trust: CIFAR-10 trees of 60,000 PNGs decoded in helper processes, each file checked,
and a user's own pictures for `predict`."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from cifarkit.cpuinfo import usable_cpus
from cifarkit.errors import CifarkitError, one_line


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


# The cap on an image to classify (predict, the app), checked from its header before any pixel is decoded:
# 4096 x 4096 = 16.8 MP (a phone photo is 12 MP). A decompression bomb declares far more, and would cost 3 bytes of
# memory per pixel.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE


def size_problem(width: int, height: int) -> str | None:
    """Why an image of width x height pixels is refused (one line), or None within MAX_PIXELS."""
    if width * height > MAX_PIXELS:
        return (f"{width}x{height} pixels is past the {MAX_PIXELS / 1e6:.1f} MP ({MAX_SIDE}x{MAX_SIDE}) cap on an "
                "image to classify; shrink it first")
    return None


def image_problem(image: Image.Image) -> str | None:
    """Why an opened image file is refused for classification (one line), or None: too many pixels, or animated
    (which frame would be meant?). Read from the header alone; `predict` and the app both ask here."""
    if problem := size_problem(*image.size):
        return problem
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        return f"an animated image ({frames} frames); give a still image"
    return None


def check_image_path(path: str | os.PathLike[str]) -> None:
    """Refuse a path that holds no image file (missing, or a folder) in one line, before any work."""
    if os.path.isdir(path):
        raise CifarkitError(f"{path} is a folder, not an image file")
    if not os.path.exists(path):
        raise CifarkitError(f"no image at {path}")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as RGB uint8 [32, 32, 3], resized (bilinear) from any other size, as a user's photo needs.

    A file of more than MAX_PIXELS, or an animated one, is refused from its header (image_problem), before decoding;
    anything else that is not an image is a CifarkitError naming the file."""
    check_image_path(path)
    try:
        with warnings.catch_warnings():
            # PIL warns (two raw lines) past 89 MP and refuses past 179 MP: the cap below is stricter and says it once
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                problem = image_problem(image)
                if problem:
                    raise CifarkitError(f"{path}: {problem}")
                return to_rgb32(image)
    except CifarkitError:
        raise
    except Image.DecompressionBombError:
        raise CifarkitError(f"{path}: refused: its header declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
                            f"pixels, past the {MAX_PIXELS / 1e6:.1f} MP (4096x4096) cap (a decompression bomb?)") from None
    except Exception as e:  # UnidentifiedImageError, OSError on truncated data, SyntaxError, ValueError, ...
        raise CifarkitError(f"cannot decode {path} as an image ({one_line(e)})") from e


# Greyscale of more than 8 bits as PIL opens it: 16-bit PNG and TIFF ("I;16*"); 32-bit TIFF, or an image made from
# an int32 array ("I").
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb32(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image, or an array PIL reads (uint8 HxW, HxWx3 or HxWx4), as RGB uint8 [32, 32, 3], resized (bilinear)
    when it is another size. 16-bit greyscale is scaled to 8 bits (PIL's own conversion clips it at 255, so that most
    of its levels would read as white); 32-bit greyscale ("I") is read as 8-bit levels when they all lie in 0..255,
    else as 16-bit levels (0..65535, clipped there)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode in (*SIXTEEN_BIT_MODES, "I"):
        levels = np.asarray(image)
        if image.mode == "I" and 0 <= levels.min() and levels.max() <= 255:
            eight_bit = levels.astype(np.uint8)
        else:
            eight_bit = ((np.clip(levels, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        image = Image.fromarray(eight_bit, "L")
    rgb = image.convert("RGB")
    if rgb.size != (32, 32):
        rgb = rgb.resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
