"""One line for every mistake: each subcommand, given a wrong file, a hostile image or a bad number, exits 2 with one
`error:` line on stderr, no traceback, nothing on stdout, and writes nothing; numbers are refused before any work."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
from cifarkit.config import TrainConfig
from cifarkit.models import CustomResNet
from cifarkit.run import write_config
from helpers import assert_one_error_line, run_cli, snapshot


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few dozen bytes: what a decompression bomb shows a reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights, a run folder, wrong files of every kind, and images: good, too big, and bombs."""
    w = tmp_path_factory.mktemp("mistakes")
    torch.manual_seed(0)
    torch.save(CustomResNet().state_dict(), w / "model.pt")
    (w / "run").mkdir()
    write_config(w / "run", TrainConfig(data="synthetic", test_subset=4))
    (w / "run" / "metrics.json").write_text("{}\n")
    (w / "run" / "model.pt").write_bytes((w / "model.pt").read_bytes())
    (w / "notes.txt").write_text("my notes\n")
    (w / "history.csv").write_text("epoch,train_loss\n1,2.3\n")
    (w / "metrics.json").write_text('{"final_test_accuracy": 0.9}\n')
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(w / "image.png")
    (w / "empty.pt").write_bytes(b"")
    (w / "emptydir").mkdir()
    Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(w / "cat.png")
    for name, side in (("bomb", 15000), ("huge", 12000), ("big", 5000)):
        (w / f"{name}.png").write_bytes(png_header(side, side))
    return w


WRONG_FILES = [("text", "notes.txt", "(it is text)"), ("csv", "history.csv", "(it is text)"),
               ("json", "metrics.json", "(it is JSON)"), ("image", "image.png", "(it is a PNG image)"),
               ("empty", "empty.pt", "(it is empty)"), ("directory", "emptydir", "emptydir")]
TAKES_WEIGHTS = {"evaluate": ["evaluate", "--checkpoint", "{p}"], "predict": ["predict", "--checkpoint", "{p}",
                                                                             "{W}/cat.png"], "report": ["report", "{p}"]}
M, CAT = "{W}/model.pt", "{W}/cat.png"
CASES = [(f"{command}-{kind}", [a.replace("{p}", f"{{W}}/{name}") for a in argv], fragment)
         for command, argv in TAKES_WEIGHTS.items() for kind, name, fragment in WRONG_FILES] + [
    ("predict-bomb", ["predict", "--checkpoint", M, "{W}/bomb.png"], "(a decompression bomb?)"),
    ("predict-12000px", ["predict", "--checkpoint", M, "{W}/huge.png"], "12000x12000 pixels is past the 16.8 MP"),
    ("predict-5000px", ["predict", "--checkpoint", M, "{W}/big.png"], "5000x5000 pixels is past the 16.8 MP"),
    ("predict-not-an-image", ["predict", "--checkpoint", M, "{W}/notes.txt"], "cannot decode"),
    ("predict-no-image", ["predict", "--checkpoint", M, "{W}/nothing.png"], "no image at"),
    ("predict-top-k-0", ["predict", "--checkpoint", M, CAT, "--top-k", "0"], "--top-k: must be in 1..10, got 0"),
    ("predict-top-k-11", ["predict", "--checkpoint", M, CAT, "--top-k", "11"], "--top-k: must be in 1..10, got 11"),
    ("predict-precision", ["predict", "--checkpoint", M, CAT, "--precision", "fp8"], "--precision must be one of"),
    ("evaluate-test-subset-0", ["evaluate", "--checkpoint", M, "--test-subset", "0"], "--test-subset: must be at least"),
    ("evaluate-precision", ["evaluate", "--checkpoint", M, "--precision", "fp8"], "--precision must be one of"),
    ("evaluate-no-weights", ["evaluate", "--checkpoint", "{W}/nothing"], "no run folder or weights file at"),
    ("evaluate-no-data-recorded", ["evaluate", "--checkpoint", M], "records no data path"),
    ("report-precision", ["report", "{W}/run", "--precision", "fp8"], "--precision must be one of"),
    ("report-no-run", ["report", "{W}/nothing"], "no run folder at"),
    ("bench-steps-0", ["bench", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("bench-repeats-0", ["bench", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    ("bench-batch-size-0", ["bench", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("bench-steps-word", ["bench", "--steps", "many"], "expected a whole number, got 'many'"),
    ("bench-precision", ["bench", "--device", "cpu", "--precision", "fp8"], "--precision must be one of"),
    ("summary-batch-size-0", ["summary", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("summary-precision", ["summary", "--precision", "fp8"], "--precision must be one of"),
    ("train-epochs-0", ["train", "--data", "synthetic", "--epochs", "0", "--out", "{W}/new"], "--epochs must be"),
    ("train-epochs-word", ["train", "--epochs", "two", "--out", "{W}/new"], "argument --epochs: invalid int value"),
    ("train-unknown-flag", ["train", "--bogus", "--out", "{W}/new"], "unrecognized arguments: --bogus"),
    ("train-no-data", ["train", "--data", "{W}/nothing", "--out", "{W}/new/run"], "no such file or folder"),
    ("train-resume-nothing", ["train", "--resume", "--out", "{W}/new"], "nothing to resume"),
    ("lr-find-iters-5", ["lr-find", "--lr-find-iters", "5", "--out", "{W}/new"], "--lr-find-iters must be at least"),
    ("lr-find-batch-size-0", ["lr-find", "--batch-size", "0", "--out", "{W}/new"], "--batch-size must be positive"),
    ("lr-find-no-data", ["lr-find", "--data", "{W}/nothing", "--out", "{W}/new"], "no such file or folder"),
    ("lr-find-precision", ["lr-find", "--precision", "fp8", "--out", "{W}/new"], "--precision must be one of"),
    ("no-command", [], "required: COMMAND"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_one_line(work: Path, argv: list[str], fragment: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2; stderr is one `error:` line holding the fragment; no traceback, no PIL warning, no stdout; nothing in
    the working folder or the cache is written or changed."""
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)
    before = snapshot(work)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli([a.replace("{W}", str(work)) for a in argv], capsys)
    assert_one_error_line(code, err, fragment)
    assert out == ""
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert snapshot(work) == before
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_no_traceback_or_pil_warning_reaches_the_terminal(work: Path) -> None:
    """The real `python -m cifarkit predict` on a 12000x12000 PNG (where PIL would warn in two raw lines): exit 2 and
    stderr is exactly one `error:` line."""
    env = os.environ | {"PYTHONPATH": str(Path(cifarkit.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "cifarkit", "predict", "--checkpoint", str(work / "model.pt"),
                           str(work / "huge.png")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""
