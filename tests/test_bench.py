"""cifarkit bench: figures, the model's multiply-adds and the CPU peak formula."""

from __future__ import annotations

import copy

import pytest
from torchinfo import summary

import torch

from cifarkit.bench import format_bench, run_bench
from cifarkit.flops import count_macs, cpu_peak, matmul_peak
from cifarkit.models import CustomResNet
from helpers import slow_fixture


@slow_fixture(scope="module")
def small_result() -> dict:
    """One tiny CPU run (batch 8, 1 step, no warm-up, 1 repeat), shared by the tests below (a few seconds)."""
    return run_bench(device="cpu", batch_size=8, steps=1, warmup=0, repeats=1)


@pytest.mark.slow
def test_run_bench_cpu_returns_positive_figures_and_sane_ratio(small_result: dict) -> None:
    """Every throughput and GFLOP/s figure is positive and finite; the project step runs within 10x of the bare
    loop either way (same model, optimizer and batch: anything further out is a bug, not noise)."""
    ips = small_result["images_per_s"]
    assert set(ips) == {"train_reference", "train_project", "eval", "pipeline_albumentations", "pipeline_batched"}
    assert all(0 < v < float("inf") for v in ips.values())
    assert all(v > 0 for v in small_result["gflops"].values())
    assert 0.1 < small_result["train_ratio"] < 10
    assert small_result["device"] == "cpu" and small_result["batch_size"] == 8
    assert all(len(v) == 1 for v in small_result["samples"].values())


@pytest.mark.slow
def test_run_bench_fp16_times_the_scaler_apart() -> None:
    """--precision fp16: both training loops step through a GradScaler, so their ratio is the project's own cost, and
    a third, bare loop without the scaler gives the scaler's cost; the CPU peak quoted is fp32's; the printout names
    the precision and both ratios."""
    result = run_bench(device="cpu", batch_size=2, steps=1, warmup=0, repeats=1, precision="fp16")
    assert result["precision"] == "fp16"
    assert set(result["images_per_s"]) >= {"train_reference", "train_project", "train_unscaled"}
    assert 0 < result["scaler_ratio"] < float("inf")
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
    if small_result["cpu_peak"] is not None:
        for word in ("cores x", "FMA units x", "fp32 lanes x", "FLOPs/lane x", "GHz =", "% of peak"):
            assert word in text
    no_peak = copy.deepcopy(small_result)
    no_peak["cpu_peak"], no_peak["peak_fraction"] = None, None
    assert "peak: unknown" in format_bench(no_peak)


def test_count_macs_matches_torchinfo() -> None:
    """The hook count of multiply-adds is 379,261,952 per image (194.18 G at batch 512), torchinfo's figure less
    BatchNorm's 4,480 (it counts BN's affine parameters as multiply-adds)."""
    macs = count_macs(CustomResNet())
    assert macs == 379_261_952
    assert round(macs * 512 / 1e9, 2) == 194.18
    assert summary(CustomResNet(), input_size=(1, 3, 32, 32), verbose=0).total_mult_adds - macs == 4_480


def test_cpu_peak_is_the_product_of_its_factors() -> None:
    """Where /proc/cpuinfo is readable, the peak equals cores x FMA units x lanes x FLOPs per lane x GHz, with lanes
    4, 8 or 16, at least one core, and 2 FLOPs per lane in fp32, 4 in bf16 (a dot product of two pairs): bf16 is
    exactly twice fp32."""
    peak, peak_bf16 = cpu_peak(), cpu_peak(bf16=True)
    if peak is None or peak_bf16 is None:
        pytest.skip("no /proc/cpuinfo clock or no AVX2/FMA on this machine")
    assert peak["cores"] >= 1 and peak["lanes"] in (4, 8, 16) and peak["flops_per_fma"] == 2
    product = peak["cores"] * peak["fma_units"] * peak["lanes"] * peak["flops_per_fma"] * peak["clock_ghz"]
    assert peak["peak_gflops"] == pytest.approx(product)
    assert (peak["dtype"], peak_bf16["dtype"], peak_bf16["flops_per_fma"]) == ("fp32", "bf16", 4)
    assert peak_bf16["peak_gflops"] == pytest.approx(2 * peak["peak_gflops"])


def test_matmul_peak_is_the_rate_of_timed_products() -> None:
    """The measured accelerator ceiling is 2 n^3 FLOPs over the median product time: positive, finite, and named
    with its size, precision and repeats (on CPU: fp32; bf16 is used on CUDA)."""
    peak = matmul_peak(torch.device("cpu"), n=128, repeats=3)
    assert 0 < peak["tflops"] < float("inf")
    assert (peak["n"], peak["dtype"], peak["repeats"]) == (128, "float32", 3)


def test_format_bench_names_a_measured_gpu_ceiling(small_result: dict) -> None:
    """With a measured matmul ceiling (a CUDA run) the printout states it and gives each figure's % of it."""
    gpu = copy.deepcopy(small_result)
    gpu["cpu_peak"], gpu["device"] = None, "cuda:0"
    gpu["matmul_peak"] = {"tflops": 779.9, "dtype": "bfloat16", "n": 8192, "repeats": 10}
    gpu["peak_fraction"] = {k: v / 779_900 for k, v in gpu["gflops"].items()}
    text = format_bench(gpu)
    assert "measured dense matmul ceiling: 779.9 TFLOP/s (8192^3 bfloat16" in text and "% of peak" in text
