"""torchrun + DistributedDataParallel: real 2-process gloo trainings on tiny synthetic data (CPU), `--resume` after a
SIGTERM sent through torchrun, and the pieces (sharded evaluation, flag agreement, setup checks) in-process.

The subprocess runs take a minute or two in all on a busy 2-core machine: 64 train / 32 test images, global batch 16
(8 per rank), 2 epochs, one thread per process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cifarkit import distributed as D
from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, resolve_data, subset
from cifarkit.errors import CifarkitError
from cifarkit.inference import evaluate
from cifarkit.models import CustomResNet
from cifarkit.run import read_config
from cifarkit.train import fit
from helpers import history, model_weights, slow_fixture

pytestmark = [pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="needs torch.distributed with the gloo backend"),
              pytest.mark.xdist_group("torchrun")]  # one pytest worker runs them all: 2 ranks each, their ports

SUBSET, TEST_SUBSET, BATCH, EPOCHS, WORLD = 64, 32, 16, 2, 2
TINY = ["--data", "synthetic", "--subset", str(SUBSET), "--test-subset", str(TEST_SUBSET), "--batch-size", str(BATCH),
        "--epochs", str(EPOCHS), "--lr-min", "1e-4", "--lr-max", "1e-3", "--no-plots", "--precision", "fp32"]
STEPS_PER_EPOCH = SUBSET // BATCH  # per rank: 32 images each, in batches of 16 / 2
TIMEOUT = 240
# Everything a --no-plots run leaves, once: a per-rank copy or a leftover temp file would show up here.
EXPECTED_FILES = [".lock", "checkpoints/last.pt", "config.json", "history.csv", "metrics.json", "model.pt",
                  "schedule.json", "steps.csv"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--standalone",
            "-m", "cifarkit", "train", *args]


def worker_env() -> dict[str, str]:
    """One thread per process (two processes share the cores), no rendezvous inherited from an outer torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def processes_of(run: Path) -> list[int]:
    """Live processes (not zombies) whose command line names `run`: the workers of that run and nothing else."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(run) in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def reap(run: Path) -> list[int]:
    """Kill, by pid, workers of `run` still alive (torchrun starts each in its own session); return their pids."""
    left = processes_of(run)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def run_torchrun(args: list[str], run: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(torchrun(*args), env=worker_env(), capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        reap(run)


def tail(proc: subprocess.CompletedProcess[str] | str) -> str:
    text = proc if isinstance(proc, str) else proc.stdout + proc.stderr
    return text[-4000:]


@lru_cache(maxsize=1)
def tiny_data() -> Cifar10:
    """The exact images the runs train and test on."""
    return subset(resolve_data("synthetic"), SUBSET, TEST_SUBSET, seed=0)


@slow_fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, subprocess.CompletedProcess[str]]]:
    """One 2-process run per augmentation path, shared by the tests of this module."""
    cache: dict[str, tuple[Path, subprocess.CompletedProcess[str]]] = {}

    def get(augment: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        if augment not in cache:
            run = tmp_path_factory.mktemp(f"ddp-{augment}") / "run"
            cache[augment] = run, run_torchrun([*TINY, "--augment", augment, "--out", str(run)], run)
        return cache[augment]

    return get


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["albumentations", "batched"])
def test_two_process_gloo_training(ddp_run: Callable, augment: str) -> None:
    """`torchrun --nproc_per_node=2 -m cifarkit train` on CPU (gloo) exits 0 and: metrics.json says world_size 2 and
    both ranks ended with identical weights; the run folder holds exactly one set of outputs (one history.csv with a
    row per epoch, one checkpoints/last.pt, nothing per rank); only rank 0 printed; the global batch of 16 was split
    into 8 per rank, so an epoch is 4 steps and the one-cycle schedule has 4 per epoch; evaluation counted each of
    the 32 test images once: its accuracy and loss equal a one-process evaluation of the saved model.pt."""
    run, proc = ddp_run(augment)
    assert proc.returncode == 0, tail(proc)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD
    checksums = metrics["weights_checksum_per_rank"]
    assert len(checksums) == WORLD and checksums[0] == checksums[1]
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == EXPECTED_FILES
    assert len((run / "steps.csv").read_text().splitlines()) == 1 + EPOCHS * STEPS_PER_EPOCH  # rank 0's steps

    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["world_size"]) == (EPOCHS, 0, WORLD)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model_weights(run / "model.pt").items())

    # Rank 0 alone prints: the run's header and each epoch's line appear once (on stderr, with every message).
    assert proc.stderr.count(f"run {run}:") == 1, tail(proc)
    for epoch in range(1, EPOCHS + 1):
        assert proc.stderr.count(f"epoch {epoch:3d}/{EPOCHS} |") == 1, tail(proc)

    schedule = json.loads((run / "schedule.json").read_text())
    assert metrics["steps_per_epoch"] == schedule["steps_per_epoch"] == STEPS_PER_EPOCH
    assert len(schedule["lrs"]) == EPOCHS * STEPS_PER_EPOCH
    assert (metrics["train_images"], metrics["test_images"]) == (SUBSET, TEST_SUBSET)

    for row in rows:  # counts of 32 images, not of 16 (one shard) or 64 (each image twice)
        assert float(row["test_acc"]) * TEST_SUBSET == pytest.approx(round(float(row["test_acc"]) * TEST_SUBSET))
    data = tiny_data()
    model = CustomResNet(len(data.classes))
    model.load_state_dict(model_weights(run / "model.pt"))
    alone = evaluate(model, torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels),
                     read_config(run / "config.json"))
    assert float(rows[-1]["test_acc"]) == alone["acc"]
    assert float(rows[-1]["test_loss"]) == pytest.approx(alone["loss"], rel=1e-5)


@pytest.mark.slow
def test_sigterm_then_resume_under_ddp_matches_uninterrupted_run(ddp_run: Callable, tmp_path: Path) -> None:
    """SIGTERM to the torchrun launcher during epoch 2: torchrun forwards it, both ranks stop at the same step,
    rank 0 writes a mid-epoch checkpoint holding both ranks' partial sums, and every process exits within
    torchrun's grace period (no SIGKILL, none left running). The checkpoint refuses a resume on another number of
    processes. `torchrun ... train --resume` then finishes the run, and its model.pt equals, tensor for tensor
    (bitwise), that of the same run uninterrupted; so does its history, up to float64 summation order."""
    ref, ref_proc = ddp_run("albumentations")
    assert ref_proc.returncode == 0, tail(ref_proc)
    run = tmp_path / "run"
    ckpt_path = run / "checkpoints" / "last.pt"
    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(torchrun(*TINY, "--augment", "albumentations", "--out", str(run)), env=worker_env(),
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not ckpt_path.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the checkpoint of epoch 1 exists: epoch 2 has begun (4 steps of seconds each)
            assert proc.poll() is None, "the run ended before it could be interrupted:\n" + tail(log_path.read_text())
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            left = reap(run)
    output = log_path.read_text()
    assert not left, f"workers {left} were still running after torchrun exited:\n{tail(output)}"
    assert "SIGKILL" not in output, tail(output)  # torchrun kills workers that outlive its grace period
    stops = re.findall(r"stopped by SIGTERM at epoch \d+, step \d+", output)
    assert stops and len(set(stops)) == 1, tail(output)  # every rank that reports, reports the same step

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and 1 <= ckpt["step_in_epoch"] <= STEPS_PER_EPOCH, (ckpt["epoch"], ckpt["step_in_epoch"])
    assert ckpt["world_size"] == WORLD
    assert stops[0] == f"stopped by SIGTERM at epoch 2, step {ckpt['step_in_epoch']}"
    # The partial sums cover both ranks: 8 images per rank per step.
    assert ckpt["partial"]["seen"] == ckpt["step_in_epoch"] * BATCH

    with pytest.raises(CifarkitError, match=r"written by 2 process"):
        fit(read_config(run / "config.json"), resume=True, progress=False)  # this test is a world of one

    resumed = run_torchrun(["--resume", "--out", str(run)], run)
    assert resumed.returncode == 0, tail(resumed)
    want, got = model_weights(ref / "model.pt"), model_weights(run / "model.pt")
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    metrics, ref_metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, ref))
    assert metrics["world_size"] == WORLD
    assert metrics["weights_checksum_per_rank"] == ref_metrics["weights_checksum_per_rank"]
    rows, ref_rows = history(run), history(ref)
    assert len(rows) == len(ref_rows) == EPOCHS
    for row, ref_row in zip(rows, ref_rows, strict=True):
        for key in ("epoch", "train_acc", "test_loss", "test_acc", "lr"):
            assert row[key] == ref_row[key], key
        assert float(row["train_loss"]) == pytest.approx(float(ref_row["train_loss"]), rel=1e-12)


# ------------------------------------------------------------------------------------------------ in-process


def test_world_of_one_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchrun's WORLD_SIZE a run is a world of one and every helper is a no-op that touches no process
    group: the default, single-process path is unchanged by DDP support."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = D.init_distributed("cpu")
    assert ctx == D.DistContext() and ctx.is_main and not ctx.enabled and not dist.is_initialized()
    cpu = torch.device("cpu")
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t, ctx) is t and t.tolist() == [1.0, 2.0]
    assert D.any_ranks([True, False], ctx, cpu) == [True, False]
    assert D.broadcast_object((1, 2), ctx) == (1, 2)
    assert D.gather_floats(3.5, ctx, cpu) == [3.5]
    assert D.split_batch(512, ctx) == 512 and D.shard_range(10, ctx) == (0, 10)
    D.barrier(ctx)
    D.sync_buffers(nn.BatchNorm1d(2), ctx)
    D.shutdown(ctx)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_cover_each_item_once(world: int) -> None:
    """The evaluation shards of any n over any number of ranks are contiguous, disjoint and cover 0..n-1."""
    for n in range(0, 40):
        ranges = [D.shard_range(n, D.DistContext(rank=r, world_size=world)) for r in range(world)]
        assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(n))


def test_sharded_evaluation_counts_each_image_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate() on 3 ranks, each on its shard (in batches that do not divide the shard), sums to exactly the
    one-process evaluation: 10 images counted once, the same number correct, and the same loss sum to float32
    rounding (a GEMM over 2 rows may round differently from one over 4: seen on an AVX512 CPU)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    config = TrainConfig(eval_batch_size=2, channels_last=False)
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(D, "all_reduce_sum", lambda values, ctx: seen.append(values.clone()) or values)
    evaluate(model, images, labels, config, tta=True)
    alone = seen.pop()
    for rank in range(3):
        evaluate(model, images, labels, config, tta=True, ctx=D.DistContext(rank=rank, world_size=3))
    total = torch.stack(seen).sum(0)  # [loss sum, correct, correct with TTA, count]
    assert total[3] == alone[3] == 10
    assert torch.equal(total[1:3], alone[1:3])
    assert float(total[0]) == pytest.approx(float(alone[0]), rel=1e-6)


def test_setup_checks_before_training() -> None:
    """A global batch that does not split evenly, and --sync-bn on CPU (PyTorch's SyncBatchNorm runs only on GPUs),
    are refused with one clear line before training; a world of one ignores --sync-bn."""
    cpu = torch.device("cpu")
    two = D.DistContext(rank=0, world_size=2)
    assert D.split_batch(512, two) == 256
    with pytest.raises(CifarkitError, match="does not split evenly"):
        D.check_setup(15, False, two, cpu)
    with pytest.raises(CifarkitError, match="--sync-bn needs CUDA"):
        D.check_setup(16, True, two, cpu)
    D.check_setup(16, True, D.DistContext(), cpu)
    D.check_setup(16, False, two, cpu)
