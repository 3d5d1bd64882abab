"""The `cifarkit` command: summary, and one `error:` line with exit code 2 for each invalid value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cifarkit.cli import main
from helpers import predictions_by_hand


@pytest.mark.slow
def test_summary_prints_the_assignment_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`cifarkit summary --batch-size 512` shows 6,573,120 parameters and 194.18 G mult-adds."""
    assert main(["summary", "--batch-size", "512"]) == 0
    out = capsys.readouterr().out
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
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--device cuda on a machine without CUDA is refused before any work."""
    assert main(["train", "--data", "synthetic", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_resume_without_a_run_is_an_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume on an empty folder says there is nothing to resume."""
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_cifarkit_is_the_same_command_end_to_end(tmp_path) -> None:
    """`python -m cifarkit` runs the CLI: an error exits 2 with `error:` on stderr and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "cifarkit", "train", "--epochs", "-1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_lr_find_evaluate_and_predict_commands(tmp_path, tiny_run, capsys: pytest.CaptureFixture[str]) -> None:
    """lr-find writes its data and plot and prints both LRs; evaluate prints the test accuracy of a run's weights
    (the session's trained run), the share of the 16 test images that a forward pass written here gets right;
    predict prints a class name and a probability for each image file."""
    import numpy as np
    from PIL import Image

    from cifarkit.data import CLASSES, resolve_data, subset

    small = ["--data", "synthetic", "--subset", "32", "--batch-size", "8"]
    assert main(["lr-find", *small, "--lr-find-iters", "10", "--out", str(tmp_path / "lr")]) == 0
    out = capsys.readouterr().out
    assert "lr_min=" in out and "lr_max=" in out
    assert (tmp_path / "lr" / "lr_finder.json").is_file() and (tmp_path / "lr" / "lr_finder.png").is_file()

    assert main(["evaluate", "--checkpoint", str(tiny_run), "--test-subset", "16"]) == 0
    accuracy = float(capsys.readouterr().out.split("test_accuracy=")[1].split()[0])
    data = subset(resolve_data("synthetic"), None, 16)  # evaluate's 16 test images (the run's seed: 0)
    by_hand = (predictions_by_hand(tiny_run, data.test_images) == data.test_labels).mean()
    assert accuracy == pytest.approx(by_hand, abs=1 / 16 + 1e-4)  # one near-tie apart at most
    images = []
    for i, size in enumerate((32, 64)):  # a user's photo of another size is resized
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((size, size, 3), 120 + 40 * i, dtype=np.uint8)).save(path)
        images.append(str(path))
    assert main(["predict", "--checkpoint", str(tiny_run / "model.pt"), *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        _, label, prob = line.split("\t")
        assert label in CLASSES and 0.0 < float(prob) <= 1.0
