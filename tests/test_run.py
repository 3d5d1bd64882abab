"""The run folder as one object: a model file that predicts alone as inside its run, and every mistake on a run's
files or outputs answered by one `error:` line, exit 2, before any work, with nothing left behind."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
import cifarkit.device
from cifarkit.cli import build_parser
from cifarkit.cli_flags import check_args
from cifarkit.config import TrainConfig
from cifarkit.data import CLASSES
from cifarkit.errors import CifarkitError, os_error_line, write_error
from cifarkit.inference import MODEL_FORMAT, save_model
from cifarkit.models import CustomResNet
from cifarkit.report.gradcam import grad_cam
from cifarkit.run import check_run_out, weights_note, write_config
from helpers import model_weights, one_error_line, read_only, run_cli, snapshot

IMAGES = np.random.default_rng(7).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder as training leaves it, without training: model.pt (named fields) of a network trained with the
    reference std, config.json and metrics.json."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.manual_seed(0)
    config = TrainConfig(data="synthetic", std="reference", test_subset=4, epochs=1, out=str(folder))
    save_model(folder / "model.pt", CustomResNet().eval(), config, CLASSES)
    write_config(folder, config)
    (folder / "metrics.json").write_text(json.dumps({"final_test_accuracy": 0.1, "epochs_completed": 1}) + "\n")
    return folder


def test_model_file_alone_predicts_as_inside_its_run(run: Path, tmp_path: Path) -> None:
    """model.pt holds named fields (format, weights, config, classes, mean, std, fingerprint); copied alone it gives
    the same probabilities, to the bit, as inside its run, with the run's reference std (not the default true std,
    which gives other probabilities)."""
    fields = torch.load(run / "model.pt", weights_only=True)
    assert fields["format"] == MODEL_FORMAT and fields["classes"] == list(CLASSES)
    assert tuple(fields["std"]) == (0.2023, 0.1994, 0.2010) and tuple(fields["mean"]) == (0.4914, 0.4822, 0.4465)
    assert fields["config"]["std"] == "reference" and "data_fingerprint" in fields
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(run / "model.pt", alone)
    inside = cifarkit.predict(run, IMAGES, top_k=10, device="cpu", precision="fp32")
    assert cifarkit.predict(alone, IMAGES, top_k=10, device="cpu", precision="fp32") == inside
    other = cifarkit.predict(alone, IMAGES, top_k=10, device="cpu", precision="fp32", std="true")
    assert max(abs(dict(a)[c] - dict(b)[c]) for a, b in zip(inside, other, strict=True) for c in CLASSES) > 1e-6


def test_a_bare_state_dict_loads_and_says_what_it_assumes(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An older model.pt (a bare state dict) alone predicts, with one line saying it assumes the defaults; beside its
    run's config.json it takes that config, and says so."""
    weights = model_weights(run / "model.pt")
    alone = tmp_path / "old" / "model.pt"
    alone.parent.mkdir()
    torch.save(weights, alone)
    image = tmp_path / "cat.png"
    Image.fromarray(IMAGES[0]).save(image)
    code, _, err = run_cli(["predict", "--checkpoint", str(alone), str(image), "--device", "cpu"], capsys)
    assert code == 0, err
    assert sum("bare state dict" in line for line in err.splitlines()) == 1
    assert "assuming the defaults (std 'true'" in err
    torch.save(weights, run / "model.pt")
    model, config = cifarkit.load_model(run, device="cpu")
    assert config.std == "reference" and "its settings are taken from" in capsys.readouterr().err


def test_resume_from_a_text_or_truncated_checkpoint_is_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train --resume when checkpoints/last.pt is text or a torn zip: one line naming last.pt, and the folder is left
    exactly as it was."""
    (run / "checkpoints").mkdir()
    whole = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(4096)}}, whole)
    for content, words in ((b"not a checkpoint\n", "(it is text)"), (whole.getvalue()[:300], "truncated")):
        (run / "checkpoints" / "last.pt").write_bytes(content)
        before = snapshot(run)
        err = one_error_line(["train", "--resume", "--out", str(run), "--device", "cpu"], capsys)
        assert f"{run}/checkpoints/last.pt" in err and words in err, err
        assert snapshot(run) == before


def test_lr_find_refuses_a_training_run_and_a_file(run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """lr-find --out a training run's folder would replace its lr_finder.json: refused, the folder untouched; --out a
    file: refused in --out's words."""
    before = snapshot(run)
    err = one_error_line(["lr-find", "--out", str(run), "--data", "synthetic", "--device", "cpu"], capsys)
    assert err == (f"error: --out {run} holds a training run (config.json); lr-find would replace its "
                   "lr_finder.json: choose another --out")
    assert snapshot(run) == before
    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    assert one_error_line(["lr-find", "--out", str(note)], capsys) == (f"error: --out {note} is a file: give a "
                                                                        "folder for the run's files")


def test_train_refuses_a_finished_run_without_its_checkpoint(run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A new train into a finished run's folder that has no checkpoints/ (a published result, a run copied without
    them) would replace its config.json, metrics.json and model.pt: refused by name, every file as it was. A folder
    with only a config.json (a start stopped before its first epoch ended) is no run yet and is not refused."""
    before = snapshot(run)
    assert not (run / "checkpoints").exists()
    err = one_error_line(["train", "--out", str(run), "--data", "synthetic", "--device", "cpu"], capsys)
    assert err == (f"error: {run} already holds a run (metrics.json); a new run would replace it: choose another "
                   "--out")
    assert snapshot(run) == before
    (run / "metrics.json").unlink()
    assert "(model.pt)" in one_error_line(["train", "--out", str(run)], capsys)
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run / "config.json", started / "config.json")
    assert check_run_out(started, kind="train") == started


def test_the_weights_line_of_a_checkpoint_says_whether_the_run_finished(run: Path) -> None:
    """A run's last checkpoint is said to precede model.pt only while model.pt is missing; beside a finished run's
    model.pt the line names that file as its final weights, never as one still to come."""
    last = run / "checkpoints" / "last.pt"
    assert (run / "model.pt").is_file()
    assert weights_note(last) == (f"weights: {last} (the last checkpoint; the finished run's weights are "
                                  f"{run / 'model.pt'})")
    (run / "model.pt").unlink()
    assert weights_note(last) == f"weights: {last} (the last checkpoint: {run / 'model.pt'} is written when the run " \
        "finishes)"
    assert weights_note(run / "model.pt") == f"weights: {run / 'model.pt'}"


def test_images_to_predict_are_checked_with_the_arguments(run: Path, tmp_path: Path) -> None:
    """predict's image paths are checked by check_args, the torch-free check before any command runs: a missing file
    and a folder are each refused by name, after an image that exists."""
    image = tmp_path / "cat.png"
    Image.fromarray(IMAGES[0]).save(image)
    for missing, words in ((tmp_path / "none.png", f"no image at {tmp_path / 'none.png'}"),
                           (tmp_path, f"{tmp_path} is a folder, not an image file")):
        args = build_parser().parse_args(["predict", "--checkpoint", str(run), str(image), str(missing)])
        with pytest.raises(CifarkitError) as info:
            check_args(args)
        assert info.value.cli_line() == words
    check_args(build_parser().parse_args(["predict", "--checkpoint", str(run), str(image)]))


def test_export_out_is_checked_before_work(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export --out a folder, or under a file, or in a read-only folder (as root too: see helpers.read_only): one
    line in --out's words, naming no `.part` file, and nothing written."""
    blocker, locked = tmp_path / "file", tmp_path / "locked"
    blocker.write_text("x")
    locked.mkdir()
    cases = [(tmp_path, f"--out {tmp_path} is a folder"),
             (blocker / "model.onnx", f"--out {blocker / 'model.onnx'}: {blocker} is a file, not a folder"),
             (locked / "model.onnx", f"--out {locked / 'model.onnx'}: {locked} is not writable")]
    with read_only(locked):
        for out, words in cases:
            before = snapshot(tmp_path)
            err = one_error_line(["export", str(run), "--out", str(out)], capsys)
            assert words in err and ".part" not in err, err
            assert snapshot(tmp_path) == before


def test_report_on_a_damaged_metrics_file_is_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """report RUN whose metrics.json is cut short: one line naming metrics.json and how to get it back; no plot or
    report written."""
    (run / "metrics.json").write_text('{"final_test_accuracy": 0.')
    before = snapshot(run)
    err = one_error_line(["report", str(run), "--device", "cpu"], capsys)
    assert err.startswith(f"error: cannot read {run}/metrics.json: truncated or damaged") and "--resume" in err
    assert snapshot(run) == before


def test_a_damaged_config_is_blamed_on_config_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An older run (bare state dict model.pt) whose config.json is damaged: the line names config.json, not the
    weights."""
    torch.save(model_weights(run / "model.pt"), run / "model.pt")
    (run / "config.json").write_text('{"epochs": ')
    err = one_error_line(["evaluate", "--checkpoint", str(run), "--device", "cpu"], capsys)
    assert err.startswith(f"error: cannot read {run}/config.json: truncated or damaged"), err


@pytest.mark.parametrize("argv", [["summary"], pytest.param(["bench", "--device", "cpu", "--steps", "1", "--repeats",
                                                               "1"], marks=pytest.mark.slow)])
def test_a_batch_that_cannot_fit_says_lower_batch_size(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A batch of 10^9 images (12 TB of input) cannot be allocated: one line that says to lower --batch-size, not the
    allocator's traceback."""
    err = one_error_line([*argv, "--batch-size", str(10**9)], capsys)
    assert err == ("error: a batch of 1000000000 images does not fit in memory on this device; lower "
                   "--batch-size")


def test_app_on_a_busy_port_or_a_foreign_host_speaks_in_flags(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """app on a port another program holds, on a name that does not resolve, or on an address this machine lacks
    (192.0.2.1, reserved for documentation): one line in the CLI's words, nothing of Gradio's advice."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        err = one_error_line(["app", str(run), "--port", str(port)], capsys)
    assert err == f"error: port {port} on 127.0.0.1 is in use by another program: choose another --port"
    err = one_error_line(["app", str(run), "--host", "no-such-host.invalid"], capsys)
    assert err.startswith("error: --host no-such-host.invalid is not a name or address this machine can resolve")
    err = one_error_line(["app", str(run), "--host", "192.0.2.1"], capsys)
    assert err.startswith("error: --host 192.0.2.1 is not an address of this machine")
    assert "GRADIO" not in err and "launch(" not in err


def test_api_errors_speak_python(tmp_path: Path) -> None:
    """From Python an error names arguments (`device='cuda'`, `out`, `precision`), never a flag; the CLI line of the
    same error names the flag."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CifarkitError) as info:
        check_run_out(blocker, kind="train")
    assert str(info.value) == f"out {blocker} is a file: give a folder for the run's files"
    assert info.value.cli_line() == f"--out {blocker} is a file: give a folder for the run's files"
    with pytest.raises(CifarkitError) as info:
        TrainConfig(precision="fp8").validate()
    assert "--" not in str(info.value) and info.value.cli_line().startswith("--precision must be one of")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: device='cuda' is not a mistake here")
    with pytest.raises(CifarkitError) as info:
        cifarkit.device.pick_device("cuda")
    assert str(info.value).startswith("device='cuda' was asked for") and "--" not in str(info.value)
    assert info.value.cli_line().startswith("--device cuda was asked for")


def test_a_bad_gradcam_layer_is_a_cifarkit_error() -> None:
    """Grad-CAM at a layer the network does not have: CifarkitError listing the layers (not a ValueError)."""
    with pytest.raises(CifarkitError, match=r"layer must be one of prep, layer1, layer2, layer3, got 'layer9'"):
        grad_cam(CustomResNet().eval(), torch.zeros(1, 3, 32, 32), layer="layer9")


def test_a_full_disk_has_one_wording(tmp_path: Path) -> None:
    """ENOSPC, whether a write catches it or it reaches the command line as a bare OSError, reads the same."""
    path = tmp_path / "metrics.json"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    expected = f"cannot write {path}: disk full; the previous file, if any, is intact"
    assert str(write_error(path, full)) == expected
    assert os_error_line(full) == expected


def test_bf16_without_units_warns_once_in_predict(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """predict --precision bf16 on a CPU without bf16 units (the policy's flags forced to AVX2 only): the warning is
    said once, the prediction still printed."""
    monkeypatch.setattr(cifarkit.device, "read_cpu_flags", lambda: frozenset({"avx2"}))
    image = tmp_path / "a.png"
    Image.fromarray(IMAGES[1]).save(image)
    code, out, err = run_cli(["predict", "--checkpoint", str(run), str(image), "--device", "cpu", "--precision",
                              "bf16"], capsys)
    assert code == 0, err
    assert sum(line.startswith("warning: --precision bf16") for line in err.splitlines()) == 1, err
    assert out.startswith(str(image))


CHILD = """
import sys, time
from cifarkit.cli import main
for argv in {cases!r}:
    start = time.perf_counter()
    code = main(argv)
    print(code, round(time.perf_counter() - start, 3), "torch" in sys.modules, flush=True)
"""


@pytest.mark.slow  # starts an interpreter
def test_mistakes_are_answered_without_torch(run: Path, tmp_path: Path) -> None:
    """A wrong flag or output, a missing or non-PyTorch weights file, an image to predict that is missing or a folder,
    a damaged metrics.json: each answered with exit 2 in well under a second, and torch never imported (checked in a
    fresh interpreter's sys.modules)."""
    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    (tmp_path / "broken").mkdir()
    shutil.copy(run / "config.json", tmp_path / "broken" / "config.json")
    shutil.copy(run / "model.pt", tmp_path / "broken" / "model.pt")
    (tmp_path / "broken" / "metrics.json").write_text("{")
    cases = [["train", "--epochs", "0"], ["train", "--precision", "fp8"], ["train", "--device", "tpu"],
             ["train", "--out", str(note)], ["train", "--resume", "--out", str(note)],
             ["lr-find", "--out", str(run)], ["evaluate", "--checkpoint", str(tmp_path / "none")],
             ["predict", "--checkpoint", str(note), str(note)], ["evaluate", "--checkpoint", str(run), "--device", "x"],
             ["predict", "--checkpoint", str(run), str(note), str(tmp_path / "none.png")],
             ["predict", "--checkpoint", str(run), str(tmp_path)],
             ["report", str(tmp_path / "broken")], ["export", str(run), "--out", str(tmp_path)],
             ["app", str(run), "--port", "0"], ["bench", "--precision", "fp64"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(cifarkit.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD.format(cases=cases)], capture_output=True, text=True,
                          env=env, timeout=120)
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == len(cases), proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(cases), proc.stderr
    for argv, (code, seconds, imported) in zip(cases, rows, strict=True):
        assert (code, imported) == ("2", "False"), argv
        assert float(seconds) < 0.5, (argv, seconds)


@pytest.mark.slow
def test_sigterm_during_the_range_test_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while train runs its range test (before the first checkpoint): exit 143, one `interrupted:` line, and
    the run folder it made is gone, lock included."""
    out = tmp_path / "runs" / "t"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(cifarkit.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cifarkit", "train", "--data", "synthetic", "--out", str(out),
                             "--device", "cpu", "--subset", "64", "--batch-size", "16", "--lr-find-iters", "100000",
                             "--epochs", "1", "--no-plots"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the header's last line comes just before the range test starts
        seen.append(line)
        if line.startswith("LR range test:"):
            break
    time.sleep(1.0)
    assert out.is_dir(), "".join(seen)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, rest
    assert rest.strip().splitlines()[-1].startswith("interrupted: stopped by SIGTERM before the first checkpoint")
    assert not (tmp_path / "runs").exists()


def test_library_warnings_reach_the_console_as_one_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Where nothing configured logging (the command line), a cifarkit.data warning is one `warning:` line on stderr
    and nothing on stdout; called twice, the route is added once."""
    import logging

    from cifarkit.console import ConsoleHandler, route_logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logger = logging.getLogger("cifarkit")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not isinstance(h, ConsoleHandler)])
    route_logging()
    route_logging()
    logging.getLogger("cifarkit.data.cifar10").warning("subset %d leaves %d classes empty", 5, 5)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "warning: subset 5 leaves 5 classes empty\n")
