"""The `cifarkit` command: summary, and one `error:` line with exit code 2 for each invalid value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from by_hand import predictions_by_hand, probabilities_by_hand
from helpers import one_error_line, run_cli


@pytest.mark.slow
def test_summary_prints_the_assignment_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`cifarkit summary --batch-size 512` shows 6,573,120 parameters and 194.18 G mult-adds."""
    code, out, err = run_cli(["summary", "--batch-size", "512"], capsys)
    assert code == 0, err
    assert "Total params: 6,573,120" in out and "194.18" in out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "4", "--peak-epoch", "5"], "--peak-epoch must be in"),
    (["--lr-min", "0.1", "--lr-max", "0.01"], "--lr-min (0.1) must be below --lr-max"),
    (["--pad-mode", "wrap"], "--pad-mode must be reflect or zero"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--precision", "fp8"], "--precision must be one of auto, bf16, fp16, fp32"),
    (["--beta1-peak", "1"], "--beta1-peak must be in [0, 1)"),
])
def test_invalid_train_values_exit_2_with_one_error_line(argv: list[str], message: str, tmp_path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Each invalid value: exit 2, stderr is exactly one line starting with `error:` that names the flag."""
    one_error_line(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), *argv], capsys, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--device cuda on a machine without CUDA is refused before any work, in one `error:` line."""
    one_error_line(["train", "--data", "synthetic", "--device", "cuda", "--out", str(tmp_path / "r")], capsys,
                   "no CUDA GPU")


def test_resume_without_a_run_is_an_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume on an empty folder says there is nothing to resume, in one `error:` line."""
    one_error_line(["train", "--resume", "--out", str(tmp_path / "none")], capsys, "nothing to resume")


@pytest.mark.slow
def test_python_m_cifarkit_is_the_same_command_end_to_end(tmp_path) -> None:
    """`python -m cifarkit` runs the CLI: an error exits 2 with `error:` on stderr and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "cifarkit", "train", "--epochs", "-1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_lr_find_evaluate_and_predict_commands(tmp_path, tiny_run, capsys: pytest.CaptureFixture[str]) -> None:
    """lr-find writes its data and plot and prints both LRs; evaluate prints the test accuracy of a run's weights
    (the shared trained run), the share of the 16 test images that a forward pass written here gets right;
    predict prints, for each image file, the class that forward pass finds most likely and its probability (a
    one-colour image stays that colour when resized to 32x32)."""
    import numpy as np
    from PIL import Image

    from cifarkit.data import CLASSES, resolve_data, subset

    small = ["--data", "synthetic", "--subset", "32", "--batch-size", "8"]
    code, out, err = run_cli(["lr-find", *small, "--lr-find-iters", "10", "--out", str(tmp_path / "lr")], capsys)
    assert code == 0, err
    assert "lr_min=" in out and "lr_max=" in out
    assert (tmp_path / "lr" / "lr_finder.json").is_file() and (tmp_path / "lr" / "lr_finder.png").is_file()

    code, out, err = run_cli(["evaluate", "--checkpoint", str(tiny_run), "--test-subset", "16"], capsys)
    assert code == 0, err
    accuracy = float(out.split("test_accuracy=")[1].split()[0])
    data = subset(resolve_data("synthetic"), None, 16)  # evaluate's 16 test images (the run's seed: 0)
    by_hand = (predictions_by_hand(tiny_run, data.test_images) == data.test_labels).mean()
    assert accuracy == pytest.approx(by_hand, abs=1 / 16 + 1e-4)  # one near-tie apart at most
    images, colours = [], (120, 160)
    for colour, size in zip(colours, (32, 64), strict=True):  # a user's photo of another size is resized
        images.append(str(tmp_path / f"img{colour}.png"))
        Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(images[-1])
    code, out, err = run_cli(["predict", "--checkpoint", str(tiny_run / "model.pt"), *images], capsys)
    assert code == 0, err
    lines = [line.split("\t") for line in out.strip().splitlines()]
    probs = probabilities_by_hand(tiny_run, np.stack([np.full((32, 32, 3), c, np.uint8) for c in colours]))
    assert [line[0] for line in lines] == images
    for (_, label, prob), expected in zip(lines, probs, strict=True):
        assert label == CLASSES[int(expected.argmax())], (label, expected)
        assert float(prob) == pytest.approx(float(expected.max()), abs=1e-3)  # printed to 4 decimals
