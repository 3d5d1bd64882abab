"""cifarkit bench: figures, the model's multiply-adds and the CPU peak formula."""

from __future__ import annotations

import copy
import itertools
import time
from types import SimpleNamespace

import pytest
from torchinfo import summary

import torch

from cifarkit.bench import PIPELINE_MIN_BATCHES, format_bench, run_bench
from cifarkit import flops
from cifarkit.cpuinfo import cpuinfo_fields
from cifarkit.flops import count_macs, matmul_peak
from cifarkit.models import CustomResNet
from helpers import slow_fixture


BATCH, MACS = 8, 379_261_952  # the bench below; multiply-adds per image (test_count_macs_matches_torchinfo)


@slow_fixture(scope="module")
def small_bench() -> tuple[dict, float]:
    """One tiny CPU run (batch 8, 1 step, no warm-up, 1 repeat) and its wall-clock seconds (a few seconds)."""
    t0 = time.perf_counter()
    result = run_bench(device="cpu", batch_size=BATCH, steps=1, warmup=0, repeats=1)
    return result, time.perf_counter() - t0


@pytest.fixture
def small_result(small_bench: tuple[dict, float]) -> dict:
    """The tiny run's figures, shared by the tests below."""
    return small_bench[0]


@pytest.mark.slow
def test_run_bench_cpu_returns_figures_the_clock_allows_and_sane_ratio(small_bench: tuple[dict, float]) -> None:
    """Each figure's implied time (the batch over its images/s) is positive, and together they fit in the run's own
    wall-clock time, which holds them and more (a rate too low would not; the clock test below pins each rate);
    GFLOP/s is images/s x the model's 379,261,952 multiply-adds x 2 FLOPs, x 3 for a training step (forward and
    a backward of about twice its cost); the project step runs within 10x of the bare loop either way (same model,
    optimizer and batch: anything further out is a bug, not noise)."""
    small_result, wall = small_bench
    ips = small_result["images_per_s"]
    assert set(ips) == {"train_reference", "train_project", "eval", "pipeline_albumentations", "pipeline_batched"}
    implied = [BATCH / v for v in ips.values()]
    assert all(0 < t < float("inf") for t in implied) and sum(implied) < wall
    for name, gflops in small_result["gflops"].items():
        assert gflops == pytest.approx(ips[name] * MACS * 2 * (1 if name == "eval" else 3) / 1e9), name
    assert 0.1 < small_result["train_ratio"] < 10
    assert small_result["device"] == "cpu" and small_result["batch_size"] == 8
    assert all(len(v) == 1 for v in small_result["samples"].values())


@pytest.mark.slow
def test_run_bench_rates_are_images_over_the_clocks_seconds() -> None:
    """With a clock that moves 1 s between the reads around each timing, every rate is the number of images that
    timing put through: 2 steps of 8 images for each training loop and for evaluation (16 images/s), and one pass
    over the pipelines' PIPELINE_MIN_BATCHES batches of 8 images (each image once per epoch); GFLOP/s follows."""
    ticks = itertools.count()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flops, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        result = run_bench(device="cpu", batch_size=BATCH, steps=2, warmup=0, repeats=1)
    pipeline = PIPELINE_MIN_BATCHES * BATCH
    assert result["images_per_s"] == {"train_reference": 16, "train_project": 16, "eval": 16,
                                      "pipeline_albumentations": pipeline, "pipeline_batched": pipeline}
    assert result["gflops"]["eval"] == pytest.approx(16 * MACS * 2 / 1e9)


@pytest.mark.slow
def test_run_bench_fp16_times_the_scaler_apart() -> None:
    """--precision fp16: both training loops step through a GradScaler, so their ratio is the project's own cost, and
    a third, bare loop without the scaler gives the scaler's cost; the CPU peak quoted is fp32's; the printout names
    the precision and both ratios."""
    result = run_bench(device="cpu", batch_size=1, steps=1, warmup=0, repeats=1, precision="fp16")
    assert result["precision"] == "fp16"
    assert set(result["images_per_s"]) >= {"train_reference", "train_project", "train_unscaled"}
    ips = result["images_per_s"]  # the scaler's cost: the bare loop's rate with it over its rate without it
    assert result["scaler_ratio"] == pytest.approx(ips["train_reference"] / ips["train_unscaled"])
    assert (result["cpu_peak"] or {}).get("dtype", "fp32") == "fp32"  # fp16 runs on a CPU's fp32 FMAs
    text = format_bench(result)
    assert "precision: fp16 (autocast + GradScaler in both loops)" in text
    assert "bare loop without the GradScaler" in text and "ratio with / without the GradScaler" in text


def test_format_bench_states_the_peak_formula_and_convention(small_result: dict) -> None:
    """The printout names each factor of the CPU peak (cores, FMA units, lanes, FLOPs per lane, clock), the FLOP
    convention and the project / reference ratio; without a known peak it says so instead."""
    text = format_bench(small_result)
    assert "ratio project / reference" in text and "multiply-adds" in text and "3 x forward" in text
    assert f"precision: {small_result['precision']}," in text and "GradScaler" not in text  # a CPU never gets fp16
    no_peak = copy.deepcopy(small_result)
    no_peak["cpu_peak"], no_peak["peak_fraction"] = None, None
    assert "peak: unknown" in format_bench(no_peak)
    if small_result["cpu_peak"] is None:
        pytest.skip("this CPU's peak is unknown (no clock or no FMA vectors in /proc/cpuinfo): no formula to print")
    for word in ("cores x", "FMA units x", "fp32 lanes x", "FLOPs/lane x", "GHz =", "% of peak"):
        assert word in text


def test_count_macs_matches_torchinfo() -> None:
    """The hook count of multiply-adds is 379,261,952 per image (194.18 G at batch 512), torchinfo's figure less
    BatchNorm's 4,480 (it counts BN's affine parameters as multiply-adds)."""
    macs = count_macs(CustomResNet())
    assert macs == 379_261_952
    assert round(macs * 512 / 1e9, 2) == 194.18
    assert summary(CustomResNet(), input_size=(1, 3, 32, 32), verbose=0).total_mult_adds - macs == 4_480


CPUINFO = "processor : 0\nvendor_id : {vendor}\ncpu family : {family}\nmodel : {model}\nmodel name : Test CPU\n" \
          "cpu MHz : {mhz}\nflags : {flags}\n"


@pytest.mark.parametrize("vendor, family, model, mhz, flags, fp32_gflops", [
    ("AuthenticAMD", 25, 1, 2450.0, "sse4_2 avx avx2 fma", 78.4),  # Zen 3: 1 x 2 x 8 x 2 x 2.45
    ("GenuineIntel", 6, 106, 3000.0, "avx2 fma avx512f avx512_bf16", 192.0),  # 1 x 2 x 16 x 2 x 3.0
    ("AuthenticAMD", 23, 1, 2000.0, "avx2 fma", 32.0),  # Zen 1 splits 256-bit FMAs: 1 x 2 x 4 x 2 x 2.0
])
def test_cpu_peak_of_known_cpus(monkeypatch: pytest.MonkeyPatch, vendor: str, family: int, model: int, mhz: float,
                                flags: str, fp32_gflops: float) -> None:
    """The peak of one core of three CPUs, worked out by hand as cores x 2 FMA units x lanes (8 with AVX2, 16 with
    AVX-512, 4 on Zen 1) x 2 FLOPs per lane x GHz; in bf16, 4 FLOPs per lane: exactly twice. Without FMA vectors
    or a clock there is no peak."""
    text = CPUINFO.format(vendor=vendor, family=family, model=model, mhz=mhz, flags=flags)
    monkeypatch.setattr(flops, "cpuinfo_fields", lambda: cpuinfo_fields(text))
    monkeypatch.setattr(flops, "usable_cpus", lambda: 1)
    peak, peak_bf16 = flops.cpu_peak(), flops.cpu_peak(bf16=True)
    assert peak is not None and peak_bf16 is not None
    assert peak["peak_gflops"] == pytest.approx(fp32_gflops)
    assert peak_bf16["peak_gflops"] == pytest.approx(2 * fp32_gflops)
    assert (peak["dtype"], peak_bf16["dtype"], peak["cores"]) == ("fp32", "bf16", 1)
    assert peak["formula"].endswith(f"= {fp32_gflops:.1f} GFLOP/s")
    no_fma = text.replace(" fma", "").replace(" avx512f", "")
    monkeypatch.setattr(flops, "cpuinfo_fields", lambda: cpuinfo_fields(no_fma))
    assert flops.cpu_peak() is None
    monkeypatch.setattr(flops, "cpuinfo_fields", lambda: cpuinfo_fields(text.replace(f"cpu MHz : {mhz}\n", "")))
    assert flops.cpu_peak() is None


def test_matmul_peak_is_the_rate_of_timed_products() -> None:
    """The measured accelerator ceiling is 2 n^3 FLOPs over the median product time, named with its size,
    precision and repeats (on CPU: fp32; bf16 is used on CUDA): with a clock that moves 0.25 s between the reads
    around each product, 128 x 128 products give 2 x 128^3 / 0.25 s = 1.6777216e-5 TFLOP/s."""
    ticks = itertools.count()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flops, "time", SimpleNamespace(perf_counter=lambda: 0.25 * next(ticks)))
        peak = matmul_peak(torch.device("cpu"), n=128, repeats=3)
    assert peak["tflops"] == pytest.approx(1.6777216e-5)
    assert (peak["n"], peak["dtype"], peak["repeats"]) == (128, "float32", 3)


def test_format_bench_names_a_measured_gpu_ceiling(small_result: dict) -> None:
    """With a measured matmul ceiling (a CUDA run) the printout states it and gives each figure's % of it."""
    gpu = copy.deepcopy(small_result)
    gpu["cpu_peak"], gpu["device"] = None, "cuda:0"
    gpu["matmul_peak"] = {"tflops": 779.9, "dtype": "bfloat16", "n": 8192, "repeats": 10}
    gpu["peak_fraction"] = {k: v / 779_900 for k, v in gpu["gflops"].items()}
    text = format_bench(gpu)
    assert "measured dense matmul ceiling: 779.9 TFLOP/s (8192^3 bfloat16" in text and "% of peak" in text
