"""The suite's own guard: a test not marked slow cannot train the network or start Python, so `make test-fast`
trains nothing; a slow test can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cifarkit.bench
import cifarkit.lr_finder
import cifarkit.train
from cifarkit.config import TrainConfig
from cifarkit.models import CustomResNet
from cifarkit.study.worker import launch
from training_guard import NETWORK_PARAMETERS, TRAINING_ENTRY_POINTS, UnmarkedTestTrains


def test_a_test_not_marked_slow_cannot_train_or_start_python(tmp_path: Path) -> None:
    """Here (not marked slow) an optimizer step over the network, train_step and the range test's engine given the
    network, the bench (which builds its own), a Python interpreter started by the test, directly or through a
    library, and a training worker the product starts each raise UnmarkedTestTrains before any work; a toy model's
    step, below the threshold, runs."""
    assert TRAINING_ENTRY_POINTS == ("cifarkit.train.train_step", "cifarkit.lr_finder.range_test",
                                     "cifarkit.bench.run_bench")
    model = CustomResNet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(UnmarkedTestTrains, match="optimizer step over 6,573,120 parameters"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # refused before the step
    with pytest.raises(UnmarkedTestTrains, match="train_step"):
        cifarkit.train.train_step(model, optimizer, None, None, None)
    with pytest.raises(UnmarkedTestTrains, match="range_test"):
        cifarkit.lr_finder.range_test(model, iter(()), TrainConfig())
    with pytest.raises(UnmarkedTestTrains, match="run_bench"):
        cifarkit.bench.run_bench(device="cpu", batch_size=2, steps=1, warmup=0, repeats=1)
    with pytest.raises(UnmarkedTestTrains, match="started"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(UnmarkedTestTrains, match="the product started .* -m cifarkit.study.worker"):
        launch("train", {}, resume=False, cpus=[0], log=tmp_path / "worker.log")
    toy = torch.nn.Linear(4, 2)
    assert sum(p.numel() for p in toy.parameters()) < NETWORK_PARAMETERS
    toy(torch.ones(1, 4)).sum().backward()
    torch.optim.SGD(toy.parameters(), lr=0.1).step()
    launcher = pytest.importorskip("jupyter_client.launcher", reason="jupyter_client comes with the dev extra")
    with pytest.raises(UnmarkedTestTrains, match="started"):  # through a library: how nbclient starts a kernel
        launcher.launch_kernel([sys.executable, "-c", "pass"])


@pytest.mark.slow
def test_a_slow_test_may_start_python() -> None:
    """Marked slow, the same interpreter start runs (Python alone, no torch: it costs a fraction of a second)."""
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True,
                          check=True).stdout == "42\n"
