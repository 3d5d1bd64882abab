"""read_uploads: any still image becomes a 32x32 RGB input; every file out of bounds gets one line, never an error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.app.uploads import MAX_BYTES, MAX_FILES, MAX_SIDE, check_image_file, read_uploads


def _save(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


# (mode, format, the colour PIL is given in that mode, its RGB worked out by hand, tolerance per channel): a flat
# image keeps its colour through any resize; JPEG and lossy WebP store subsampled YCbCr, so a channel may move by a
# few levels.
MODES = [
    ("RGB", ".png", (10, 200, 30), (10, 200, 30), 0),
    ("RGBA", ".png", (10, 200, 30, 255), (10, 200, 30), 0),  # opaque: the colour itself
    ("L", ".png", 77, (77, 77, 77), 0),  # grey: the same level in each channel
    ("P", ".gif", 0, (200, 100, 50), 0),  # palette index 0, whose entry is (200, 100, 50) (set below)
    ("1", ".bmp", 1, (255, 255, 255), 0),  # bilevel: 1 is white
    ("I;16", ".png", 65535, (255, 255, 255), 0),  # 16-bit grey at full scale: white
    ("CMYK", ".jpg", (0, 255, 255, 0), (255, 0, 0), 3),  # no cyan or black, full magenta and yellow: red
    ("RGB", ".webp", (10, 200, 30), (10, 200, 30), 6),
]


@pytest.mark.parametrize("mode, suffix, colour, rgb, tolerance", MODES)
def test_any_mode_and_size_is_read_as_32x32_rgb(tmp_path: Path, mode: str, suffix: str, colour: object,
                                                rgb: tuple[int, int, int], tolerance: int) -> None:
    """Each mode and format PIL writes comes back as uint8 [1, 32, 32, 3] under its file name, with no problem, every
    pixel the RGB of the colour it was drawn in (worked out by hand for each mode)."""
    image = Image.new(mode, (70, 45), colour)
    if mode == "P":
        image.putpalette([200, 100, 50] + [0, 0, 0] * 255)
    path = _save(tmp_path / f"photo{suffix}", image)
    batch = read_uploads([path])
    assert batch.images.shape == (1, 32, 32, 3) and batch.images.dtype == np.uint8
    assert batch.names == [path.name] and batch.problems == []
    difference = np.abs(batch.images[0].astype(int) - np.array(rgb))
    assert difference.max() <= tolerance, (mode, suffix, batch.images[0].reshape(-1, 3).min(0),
                                           batch.images[0].reshape(-1, 3).max(0))


def test_16_bit_grey_is_scaled_to_8_bits(tmp_path: Path) -> None:
    """A 16-bit greyscale PNG at level 40000 of 65535 (61% grey) reads as 40000 * 255 / 65535 = 155.6, i.e. 156 in
    every channel (give or take one level of rounding), not as white, in the app and in predict alike; a 32-bit
    greyscale image ("I") holding levels 0..255 keeps them (100 reads as 100), and one holding 16-bit levels is scaled
    as 16-bit (40000 reads as 156, 65535 as 255)."""
    from cifarkit.data.images import read_image, to_rgb32

    path = _save(tmp_path / "grey16.png", Image.new("I;16", (70, 45), 40000))
    assert np.abs(read_uploads([path]).images[0].astype(int) - 156).max() <= 1
    assert np.abs(read_image(path).astype(int) - 156).max() <= 1
    assert (to_rgb32(Image.fromarray(np.full((32, 32), 100, np.int32))) == 100).all()
    wide = to_rgb32(Image.fromarray(np.array([[40000, 65535]], np.int32).repeat(32, 0).repeat(16, 1)))
    assert (np.abs(wide[:, :16].astype(int) - 156) <= 1).all() and (wide[:, 16:] == 255).all()


def test_the_32x32_image_is_what_predict_reads(tmp_path: Path) -> None:
    """Resizing matches `cifarkit predict` (cifarkit.data.images.read_image) pixel for pixel."""
    from cifarkit.data.images import read_image

    pixels = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    path = _save(tmp_path / "p.png", Image.fromarray(pixels))
    np.testing.assert_array_equal(read_uploads([path]).images[0], read_image(path))


def test_each_refused_file_gets_one_line_naming_it_and_the_rest_are_read(tmp_path: Path) -> None:
    """A text file, an animated GIF, a too-wide image, a too-large file and a truncated PNG are each named with
    the reason; the good image between them is still read."""
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    wide = _save(tmp_path / "wide.png", Image.new("1", (MAX_SIDE + 1, MAX_SIDE)))  # one column past the cap
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_BYTES + 1))
    good = _save(tmp_path / "good.png", Image.new("RGB", (32, 32), "green"))
    whole = _save(tmp_path / "whole.png", Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (64, 64, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:2000])

    batch = read_uploads([text, gif, good, wide, big, cut])
    assert batch.names == ["good.png"] and batch.images.shape == (1, 32, 32, 3)
    problems = dict(p.split(": ", 1) for p in batch.problems)
    assert list(problems) == ["notes.txt", "anim.gif", "wide.png", "big.png", "cut.png"]
    assert "not an image" in problems["notes.txt"]
    assert "animated" in problems["anim.gif"] and "2 frames" in problems["anim.gif"]
    assert f"{MAX_SIDE + 1}x{MAX_SIDE} pixels is past the 16.8 MP ({MAX_SIDE}x{MAX_SIDE}) cap" in problems["wide.png"]
    assert "over the 10 MB limit" in problems["big.png"]
    assert "damaged" in problems["cut.png"]


def test_more_files_than_the_cap_reads_the_first_ones_and_says_so(tmp_path: Path) -> None:
    """MAX_FILES + 1 files: the first MAX_FILES are read and one line states the cap."""
    paths = [_save(tmp_path / f"{i:02d}.png", Image.new("RGB", (8, 8))) for i in range(MAX_FILES + 1)]
    batch = read_uploads(paths)
    assert len(batch.names) == MAX_FILES and batch.names[-1] == f"{MAX_FILES - 1:02d}.png"
    assert batch.problems == [f"{MAX_FILES + 1} files sent: only the first {MAX_FILES} were read "
                              f"(at most {MAX_FILES} per request)"]


@pytest.mark.parametrize("side", [10_000, 15_000])  # PIL warns above 89.5 Mpixel and raises above 179 Mpixel
def test_decompression_bombs_are_refused_without_a_warning(tmp_path: Path, side: int) -> None:
    """A small file that declares side x side pixels is refused from its header; no DecompressionBombWarning is
    emitted, whatever the warning filters say."""
    bomb = _save(tmp_path / "bomb.png", Image.new("1", (side, side)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_image_file(bomb) == f"too many pixels (over {MAX_SIDE}x{MAX_SIDE})"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_vanished_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    """A path that no longer exists (a cleaned upload folder) is reported as gone."""
    assert read_uploads([tmp_path / "gone.png"]).problems == ["gone.png: the file is gone (upload it again)"]
