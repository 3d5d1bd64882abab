"""One precision policy for every command: the device table, --precision's resolution and warning, fp16's gradient
scaler and its skipped steps, and the runners (training, range test, evaluation, report) running under it.

fp16 training on a CPU runs PyTorch's slow fp16 kernels, 17x slower than fp32 or more, so the runs here use tiny
models or a handful of 32x32 images."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import cifarkit.device as device_module
import cifarkit.train as train_module
from cifarkit.config import TrainConfig
from cifarkit.cpuinfo import cpu_flags
from cifarkit.data import make_synthetic
from cifarkit.data.loaders import build_train_batches
from cifarkit.device import autocast, backward_step, choose_precision, grad_scaler, resolve_precision
from cifarkit.errors import CifarkitError
from cifarkit.inference import evaluate
from cifarkit.lr_finder import range_test
from cifarkit.models import CustomResNet
from cifarkit.report import write_plots
from cifarkit.run import read_config
from cifarkit.train import fit
from helpers import slow_fixture

CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, expected", [
    ((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((9, 0), "bf16"), ((10, 0), "bf16")])
def test_cuda_choice_follows_the_compute_capability(capability: tuple[int, int], expected: str) -> None:
    """CUDA below 8.0 (V100 7.0, T4 7.5) trains in fp16; Ampere (8.0) and later in bf16."""
    assert choose_precision("cuda", cuda_capability=capability) == expected


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse4_2 avx avx2 fma f16c", "fp32"), ("avx2 avx512f avx512bw avx512_vnni", "fp32"),
    ("avx2 avx512f avx512_bf16 gfni", "bf16"), ("avx2 amx_bf16 amx_tile amx_int8", "bf16"), ("", "fp32")])
def test_cpu_choice_follows_the_bf16_flags(flags: str, expected: str) -> None:
    """A CPU trains in bf16 only when /proc/cpuinfo's flags show bf16 units (avx512_bf16 or amx_bf16), else fp32;
    the flags are read as `system.cpu_flags` reads them."""
    assert choose_precision("cpu", cpu_flags=cpu_flags(f"processor : 0\nflags : {flags}\n")) == expected


def test_the_cpu_policy_of_this_session(cpu_policy: frozenset[str] | None) -> None:
    """`choose_precision("cpu")` reads the flags this session runs under: the machine's, or the set --cpu-flags names
    (an AVX2-only CPU trains in fp32, one with AVX512-BF16 in bf16)."""
    flags = cpu_flags() if cpu_policy is None else cpu_policy
    assert choose_precision("cpu") == ("bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32")


def test_mps_and_other_devices_train_in_fp32() -> None:
    """MPS (and any device the table does not name) gets fp32, whatever flags or capability are passed."""
    assert choose_precision("mps") == "fp32"
    assert choose_precision("mps", cpu_flags={"amx_bf16"}, cuda_capability=(9, 0)) == "fp32"


def test_unset_facts_are_read_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a capability or flags, choose_precision asks torch for the GPU's capability and the OS for the CPU's
    flags."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert choose_precision("cuda") == "fp16"
    monkeypatch.setattr(device_module, "read_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert choose_precision("cpu") == "bf16"
    monkeypatch.setattr(device_module, "read_cpu_flags", lambda: frozenset({"avx2"}))
    assert choose_precision("cpu") == "fp32"


def test_resolve_keeps_explicit_choices_and_warns_once_for_emulated_bf16(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """auto becomes the policy's choice; bf16, fp16 and fp32 are kept as asked. bf16 where the policy would not pick
    it (a T4; a CPU without bf16 units) and fp16 on a CPU (never the policy's choice there) print exactly one
    `warning:` line on stderr and still run as asked; nothing else prints. An unknown precision is one
    CifarkitError."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    t4 = torch.device("cuda")
    assert [resolve_precision(p, t4) for p in ("auto", "fp16", "fp32")] == ["fp16", "fp16", "fp32"]
    assert capsys.readouterr().err == ""
    assert resolve_precision("bf16", t4) == "bf16"
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("warning: --precision bf16 on cuda") and "fp16" in err
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16" and capsys.readouterr().err == ""
    monkeypatch.setattr(device_module, "read_cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("auto", CPU) == "fp32" and capsys.readouterr().err == ""
    assert resolve_precision("fp16", CPU) == "fp16"
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("warning: --precision fp16 on cpu") and "picks fp32" in err
    assert resolve_precision("bf16", CPU) == "bf16"
    assert len(capsys.readouterr().err.splitlines()) == 1
    with pytest.raises(CifarkitError) as info:  # the API's words; the command line's beside them
        resolve_precision("fp8", CPU)
    assert str(info.value) == "precision must be one of auto, bf16, fp16, fp32, got 'fp8'"
    assert info.value.cli_line() == "--precision must be one of auto, bf16, fp16, fp32, got 'fp8'"


def test_config_accepts_every_precision_and_names_them_in_its_help() -> None:
    """TrainConfig validates auto, bf16, fp16 and fp32, refuses others in one line, and its help lists all four."""
    for precision in ("auto", "bf16", "fp16", "fp32"):
        TrainConfig(precision=precision).validate()
    with pytest.raises(CifarkitError, match="one of auto, bf16, fp16, fp32"):
        TrainConfig(precision="half").validate()
    help_text = TrainConfig.__dataclass_fields__["precision"].metadata["help"]
    assert "auto|bf16|fp16|fp32" in help_text and "T4" in help_text


def test_autocast_and_scaler_per_precision() -> None:
    """autocast runs bf16 or fp16 as named and is off for fp32; the gradient scaler is on for fp16 only."""
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(precision, CPU):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    assert [grad_scaler(p, CPU).is_enabled() for p in ("bf16", "fp16", "fp32")] == [False, True, False]


def inf_gradients(param: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    """Make the next gradient of `param` infinite (an fp16 overflow), once; returns the hook's handle."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        handle.remove()
        return torch.full_like(grad, float("inf"))

    handle = param.register_hook(hook)
    return handle


def test_backward_step_skips_overflowing_gradients_and_lowers_the_scale() -> None:
    """Through an fp16 scaler a step with inf gradients returns True, leaves the weights alone and halves the scale;
    the next, finite step returns False and moves the weights. With the scaler off it is a plain step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = grad_scaler("fp16", CPU)
    x = torch.randn(8, 4)
    before = model.weight.detach().clone()
    inf_gradients(model.weight)
    assert backward_step(model(x).square().mean(), opt, scaler) is True
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0**15
    assert backward_step(model(x).square().mean(), opt, scaler) is False
    assert not torch.equal(model.weight, before) and scaler.get_scale() == 2.0**15
    assert backward_step(model(x).square().mean(), opt, grad_scaler("fp32", CPU)) is False


def test_fp16_backward_on_a_cpu_takes_pytorchs_kernels_and_restores_the_flag(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """backward_step runs an fp16 backward on the CPU with oneDNN off (PyTorch's own fp16 kernels; oneDNN's fp16
    weight gradient is the slow one) and an fp32 backward with oneDNN as it was; the flag comes back as it was, off
    included. Seen from a gradient hook, which runs inside the backward pass."""
    torch.manual_seed(0)
    conv, x, seen = nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8), []
    conv.weight.register_hook(lambda g: seen.append(torch.backends.mkldnn.enabled))
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    for precision in ("fp16", "fp32"):
        with autocast(precision, CPU):
            loss = conv(x).float().square().mean()
        backward_step(loss, opt, grad_scaler(precision, CPU))
    assert seen == [False, True] and torch.backends.mkldnn.enabled is True
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    with autocast("fp16", CPU):
        loss = conv(x).float().square().mean()
    backward_step(loss, opt, grad_scaler("fp16", CPU))
    assert seen[-1] is False and torch.backends.mkldnn.enabled is False


class Recorder(nn.Module):
    """A tiny classifier that records the autocast state of each forward pass: (enabled, dtype) on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 10))
        self.seen: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return self.net(x)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                              ("fp32", torch.float32)])
@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_runs_every_forward_in_the_precision(precision: str, dtype: torch.dtype, tta: bool) -> None:
    """evaluate(precision=...) runs each forward pass, the flipped one of TTA included, in that precision, and
    returns finite figures."""
    data = make_synthetic(8, 12)
    model = Recorder()
    config = TrainConfig(eval_batch_size=5, channels_last=False)
    result = evaluate(model, torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels), config,
                      precision=precision, tta=tta)
    assert model.seen == [dtype] * (3 * (2 if tta else 1))
    assert np.isfinite(result["loss"]) and 0 <= result["acc"] <= 1 and np.isfinite(result["acc_tta"]) == tta


def test_train_step_reports_a_skipped_fp16_step_and_keeps_the_weights() -> None:
    """train_step under fp16 runs the forward in float16, and a step whose gradients overflow comes back skipped,
    with a finite loss and the weights untouched, and without torch's warning about a scheduler stepped before its
    optimizer."""
    torch.manual_seed(0)
    model = Recorder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inf_gradients(model.net[0].weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, _, skipped = train_module.train_step(model, opt, sched, x, y, precision="fp16",
                                                   scaler=grad_scaler("fp16", CPU))
    assert skipped and torch.isfinite(loss) and model.seen == [torch.float16]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_range_test_under_fp16_leaves_skipped_steps_off_the_curve(tiny_data) -> None:
    """range_test with config.precision fp16 runs under float16 autocast and a gradient scaler; a step forced to
    overflow is counted in `skipped` and its LR is not on the curve; the curve and both suggestions come back."""
    torch.manual_seed(0)
    model = Recorder()
    config = TrainConfig(batch_size=16, augment="batched", channels_last=False, precision="fp16",
                         lr_find_start=1e-4, lr_find_end=1.0, lr_find_iters=30)
    batches = build_train_batches(tiny_data.train_images, tiny_data.train_labels, config, device=CPU)
    forced = 5  # the sweep's step whose gradients overflow
    real_forward, calls = model.forward, [0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == forced + 1:
            inf_gradients(model.net[0].weight)
        return real_forward(x)

    model.forward = forward  # type: ignore[method-assign]
    result = range_test(model, batches, config, progress=False)
    assert set(model.seen) == {torch.float16}
    assert result.skipped >= 1 and len(result.lrs) + result.skipped <= config.lr_find_iters
    forced_lr = config.lr_find_start * (config.lr_find_end / config.lr_find_start) ** (forced / 29)
    assert not np.isclose(result.lrs, forced_lr, rtol=1e-9).any()
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) >= 5
    assert np.isfinite(result.losses).all() and 0 < result.lr_min < result.lr_max


@slow_fixture(scope="module")
def fp16_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An fp16 run on the CPU, 2 epochs of one 2-image step, the second step's gradients forced to overflow. Its
    scaler starts at 2^10, low enough that these steps never overflow by themselves. (run folder, stdout). Its own
    run, not the shared one: the overflow and the scaler are injected into its training."""
    run = tmp_path_factory.mktemp("fp16") / "run"
    real_step, calls = train_module.train_step, [0]

    def overflow_on_step_2(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            inf_gradients(next(model.parameters()))
        return real_step(model, *args, **kwargs)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stdout):  # the run's lines: stderr
        mp.setattr(train_module, "train_step", overflow_on_step_2)
        mp.setattr(train_module, "grad_scaler",
                   lambda precision, device: torch.amp.GradScaler(device.type, init_scale=2.0**10,
                                                                  enabled=precision == "fp16"))
        config = TrainConfig(out=str(run), epochs=2, batch_size=2, subset=2, test_subset=2, lr_min=1e-4, lr_max=1e-3,
                             plots=False, data="synthetic", precision="fp16")
        fit(config, data=make_synthetic(40, 20), progress=False)
    return run, stdout.getvalue()


@pytest.mark.slow
def test_fp16_cpu_run_trains_to_finite_weights_and_records_fp16(fp16_run: tuple[Path, str]) -> None:
    """An fp16 run on the CPU finishes with finite weights; config.json records "fp16"; its checkpoint holds the
    gradient scaler's state."""
    run, _ = fp16_run
    assert read_config(run / "config.json").precision == "fp16"
    weights = torch.load(run / "model.pt", weights_only=True)["weights"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    scaler = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] == 2.0**9 and scaler["growth_interval"] == 2000


@pytest.mark.slow
def test_overflowing_step_is_skipped_and_counted_not_a_non_finite_loss(fp16_run: tuple[Path, str]) -> None:
    """The step with inf gradients is skipped, not a stop: the run completes; history.csv counts it in epoch 2,
    metrics.json in total, and each epoch line ends with its count."""
    run, stdout = fp16_run
    with open(run / "history.csv", newline="") as f:
        assert [int(r["skipped_steps"]) for r in csv.DictReader(f)] == [0, 1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["epochs_completed"] == 2
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [re.search(r"\|\s+(\d+) skipped$", line).group(1) for line in lines] == ["0", "1"], lines


@pytest.mark.slow
def test_report_predictions_and_gradcam_run_in_the_precision(tmp_path: Path) -> None:
    """write_plots(precision="fp16") runs the test-set predictions and Grad-CAM's forward under float16 autocast,
    and still writes the confusion matrix and the Grad-CAM figure."""
    torch.manual_seed(0)
    model, seen = CustomResNet().to(memory_format=torch.channels_last), []
    model.prep.register_forward_pre_hook(lambda m, a: seen.append(torch.get_autocast_dtype("cpu")
                                                                   if torch.is_autocast_enabled("cpu") else None))
    written = write_plots(tmp_path, model=model, data=make_synthetic(10, 2), config=TrainConfig(eval_batch_size=6),
                          device=CPU, precision="fp16")
    assert seen == [torch.float16, torch.float16]  # one prediction batch, one Grad-CAM batch
    assert {p.name for p in written} >= {"confusion_matrix.png", "gradcam.png"}
