"""Same answers on every device: no float64 tensor (MPS has none), fp16 with no host read beyond GradScaler's own, the
augmentation pipeline that ran recorded, a deterministic mode whose switches end with the run, evaluation in the
model's memory format, and a train cross-entropy comparable with the test loss.

The dispatch-mode checks see every aten call made while they are on, on the CPU here, as on any device."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import cifarkit
import cifarkit.train as train_module
from cifarkit.cli import build_parser
from cifarkit.config import TrainConfig
from cifarkit.data import make_synthetic
from cifarkit.data.loaders import resolve_augment
from cifarkit.device import backend_settings, grad_scaler, host_sync_every
from cifarkit.errors import CifarkitError
from cifarkit.models import build_model
from cifarkit.schedule import one_cycle
from helpers import slow_fixture

CPU = torch.device("cpu")


def _dispatch_counts() -> Any:
    """bench/dispatch_counts.py, the home of the counting dispatch mode (a script, not a package module)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "dispatch_counts.py"
    spec = importlib.util.spec_from_file_location("dispatch_counts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


counts = _dispatch_counts()
Watch = counts.Count  # float64 tensors made (with op and line), host reads outside optimizer.step (by line)


def test_the_watch_names_a_float64_tensor_and_a_host_read() -> None:
    """The watch is not blind: a float64 tensor made here is reported with this file and line, and `.item()` counts
    as one host read."""
    with Watch() as watch:
        line = traceback.extract_stack()[-1].lineno + 1
        t = torch.ones(2).double()
        t.sum().item()
    assert watch.float64[0] == f"aten._to_copy.default at {Path(__file__).name}:{line}"
    assert sum(watch.reads.values()) == 1


@slow_fixture(scope="module")
def watched_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Watch]]:
    """One-epoch CPU runs in fp32 (what MPS trains in), with plots (Grad-CAM included), each followed by `predict`
    on its weights, all under a Watch: augment "auto" (the DataLoader path on a CPU) and "batched" (with label
    smoothing 0.1). {augment asked: (run folder, watch)}. Runs of their own, not the shared one: the
    watch must see them train."""
    data = make_synthetic(n_train=8, n_test=8)
    out = {}
    for augment, smoothing in (("auto", 0.0), ("batched", 0.1)):
        run = tmp_path_factory.mktemp("watched") / augment
        config = TrainConfig(out=str(run), epochs=1, batch_size=4, lr_min=1e-4, lr_max=1e-3, device="cpu",
                             precision="fp32", augment=augment, label_smoothing=smoothing)
        with Watch() as watch:
            cifarkit.fit(config, data=data, progress=False)
            cifarkit.predict(run, data.test_images[:3], device="cpu", precision="fp32")
        out[augment] = run, watch
    return out


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["auto", "batched"])
def test_fit_and_predict_make_no_float64_tensor(watched_runs: dict[str, tuple[Path, Watch]], augment: str) -> None:
    """Training (either augmentation path), evaluation, checkpoints, the plots with Grad-CAM, and prediction make no
    float64 tensor; a failure names each op and the line that made it."""
    run, watch = watched_runs[augment]
    assert (run / "plots" / "gradcam.png").is_file()
    assert watch.float64 == []


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["auto", "batched"])
def test_config_json_records_the_pipeline_that_ran(watched_runs: dict[str, tuple[Path, Watch]], augment: str) -> None:
    """config.json holds the resolved pipeline: "auto" on a CPU ran the albumentations DataLoader, "batched" stays."""
    run, _ = watched_runs[augment]
    expected = {"auto": "albumentations", "batched": "batched"}[augment]
    assert json.loads((run / "config.json").read_text())["augment"] == expected


@pytest.mark.slow
def test_history_records_the_train_cross_entropy_beside_the_smoothed_loss(
        watched_runs: dict[str, tuple[Path, Watch]]) -> None:
    """history.csv has train_ce: without label smoothing it is train_loss itself; with smoothing 0.1 it is another
    number (the smoothed loss adds 0.1 x the mean over classes of -log p)."""
    rows = {}
    for augment in ("auto", "batched"):
        with open(watched_runs[augment][0] / "history.csv", newline="") as f:
            rows[augment] = next(csv.DictReader(f))
    assert rows["auto"]["train_ce"] == rows["auto"]["train_loss"]
    assert float(rows["batched"]["train_ce"]) != float(rows["batched"]["train_loss"])


@pytest.mark.slow
def test_fp16_steps_read_the_host_only_as_often_as_grad_scaler_itself() -> None:
    """A bare GradScaler loop reads the host once per step more in fp16 than in fp32 (GradScaler.step's check for
    inf gradients); train_step's fp16 steps read it no more often than that, beyond its fp32 steps. One image a
    step: fp16 training on a CPU runs PyTorch's slow fp16 kernels."""
    def reads(precision: str, project: bool) -> float:
        return counts.step_reads(precision, 2, project=project, images=1)
    bare = reads("fp16", project=False) - reads("fp32", project=False)
    assert bare == 1
    assert reads("fp16", project=True) - reads("fp32", project=True) <= bare


@pytest.mark.slow
def test_train_step_returns_the_plain_cross_entropy_beside_the_smoothed_loss() -> None:
    """With label smoothing 0.1, train_step's sums are (loss x B, cross-entropy without smoothing x B, correct),
    each worked out by F.cross_entropy on the logits of an identical copy of the model (train mode, same batch)."""
    torch.manual_seed(0)
    model = build_model().train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    twin = build_model().train()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = twin(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = one_cycle(opt, lr_min=1e-4, lr_max=1e-3, epochs=1, steps_per_epoch=2, peak_epoch=0.5)
    loss, sums, skipped = train_module.train_step(model, opt, sched, x, y, precision="fp32",
                                                  scaler=grad_scaler("fp32", CPU), label_smoothing=0.1)
    assert not skipped and sums.dtype == torch.float32
    assert sums[0].item() == pytest.approx(4 * F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)
    assert sums[1].item() == pytest.approx(4 * F.cross_entropy(logits, y).item(), rel=1e-5)
    assert sums[2].item() == (logits.argmax(1) == y).sum().item()
    assert loss.item() == pytest.approx(sums[0].item() / 4, rel=1e-6)


@pytest.mark.parametrize("model_channels_last, config_channels_last", [(True, False), (False, True)])
def test_evaluation_feeds_the_model_in_its_own_memory_format(model_channels_last: bool,
                                                            config_channels_last: bool) -> None:
    """evaluate's inputs take the model's memory format (NHWC for a channels_last model), whatever the config says."""
    model = build_model(channels_last=model_channels_last)
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    data = make_synthetic(n_train=4, n_test=4)
    train_module.evaluate(model, torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels),
                          TrainConfig(channels_last=config_channels_last))
    assert seen == [model_channels_last]


def test_auto_augmentation_is_batched_on_cuda_only() -> None:
    """--augment auto resolves by device type: "batched" on CUDA, the albumentations DataLoader elsewhere; an explicit
    choice is kept."""
    assert [resolve_augment("auto", torch.device(d)) for d in ("cuda", "cpu", "mps")] == \
        ["batched", "albumentations", "albumentations"]
    assert resolve_augment("albumentations", torch.device("cuda")) == "albumentations"


def test_one_sync_cadence() -> None:
    """The loop reads the device every step on a CPU and every 25 steps on a GPU or MPS."""
    assert [host_sync_every(torch.device(d)) for d in ("cpu", "cuda", "mps")] == [1, 25, 25]


@pytest.fixture
def switches() -> Any:
    """The process-wide switches backend_settings touches, as they are now; restored after the test."""
    def now() -> tuple[Any, ...]:
        return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    before = now()
    yield now
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[0], before[1]
    torch.use_deterministic_algorithms(before[2])


def test_deterministic_settings_hold_for_the_run_only(switches: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """deterministic: deterministic algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8 and no cuDNN autotuning inside;
    otherwise on CUDA, cuDNN autotuning inside. Either way the caller's settings come back after."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = False
    before = switches()
    with backend_settings(torch.device("cuda"), deterministic=True):
        assert switches() == (False, True, True, ":4096:8")
    assert switches() == before
    with backend_settings(torch.device("cuda")):
        assert switches()[0] is True and switches()[2] is False
    assert switches() == before
    with backend_settings(CPU):
        assert switches() == before  # no cuDNN on a CPU: nothing to switch


@pytest.mark.slow
def test_a_deterministic_fit_records_it_and_restores_the_process(tmp_path: Path, switches: Any) -> None:
    """fit with deterministic=True records it in config.json and leaves deterministic algorithms off afterwards,
    as they were; its run matches a second one bit for bit (model.pt)."""
    before = switches()
    data = make_synthetic(n_train=8, n_test=4)
    for name in ("a", "b"):
        cifarkit.fit(TrainConfig(out=str(tmp_path / name), epochs=1, batch_size=4, lr_min=1e-4, lr_max=1e-3,
                                 device="cpu", precision="fp32", plots=False, deterministic=True),
                     data=data, progress=False)
    assert switches() == before
    assert json.loads((tmp_path / "a" / "config.json").read_text())["deterministic"] is True
    a, b = (torch.load(tmp_path / n / "model.pt", weights_only=True)["weights"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_help_offers_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    """`cifarkit train --help` lists --deterministic (a flag from TrainConfig's field)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--deterministic" in capsys.readouterr().out


def test_deterministic_must_be_a_bool() -> None:
    """A non-bool `deterministic` (from a hand-edited config) is refused in one line naming the field."""
    with pytest.raises(CifarkitError, match="deterministic must be true or false"):
        TrainConfig(deterministic="yes").validate()  # type: ignore[arg-type]


def test_cv2_border_codes_are_cv2s() -> None:
    """The border codes written out in transforms.py (so that importing it needs no cv2) are cv2's own."""
    import cv2

    from cifarkit.data.transforms import CV2_BORDERS
    assert CV2_BORDERS == {"reflect": cv2.BORDER_REFLECT_101, "zero": cv2.BORDER_CONSTANT}


@pytest.mark.slow
def test_batched_training_needs_no_albumentations(tmp_path: Path) -> None:
    """With albumentations and cv2 unimportable, `cifarkit train --augment batched` (no plots) still trains: a CUDA
    machine with torch alone can run the GPU check."""
    import subprocess
    import sys

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("albumentations", "cv2"):
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "cifarkit", "train", "--data", "synthetic", "--epochs", "1",
                             "--subset", "8", "--test-subset", "4", "--batch-size", "4", "--lr-min", "1e-4",
                             "--lr-max", "1e-3", "--augment", "batched", "--no-plots", "--device", "cpu",
                             "--precision", "fp32", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.slow
def test_gpu_check_refuses_cleanly_without_cuda() -> None:
    """bench/gpu_check.sh on a machine without CUDA prints one line saying so and exits 2, having run nothing."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run, not refuse")
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing was run\n"
