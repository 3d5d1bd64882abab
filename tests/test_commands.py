"""Commands mean what they say: --version, help for every argument with clean defaults, lr-find's flags are train's,
evaluate's flip TTA on the whole test set, a run folder or a weights file (and which was used), predict's top-k and
JSON, --precision on every command, the run header before the range test with an ETA after the first epoch, and a
failed start that leaves nothing behind."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
import cifarkit.data.sources
import cifarkit.train
from cifarkit.cli import build_parser
from cifarkit.commands import SUMMARY_PRECISION
from cifarkit.data import normalization, resolve_data
from cifarkit.data.augment import normalize_batch
from cifarkit.device import choose_precision
from cifarkit.errors import CifarkitError
from cifarkit.models import CustomResNet
from cifarkit.run import read_config
from by_hand import class_scores_by_hand, predictions_near_ties, probabilities_by_hand, top_k_by_hand
from helpers import run_cli as cli, untrained_run

TINY = ["--device", "cpu", "--no-plots", "--batch-size", "8", "--subset", "8", "--test-subset", "8"]


@pytest.fixture(autouse=True)
def _tiny_synthetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--data synthetic` is 20 train / 10 test images here, and the cache is private."""
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", (20, 10))
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CIFARKIT_DATA", "synthetic")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version_and_help_for_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """`cifarkit --version` prints the version; every argument of every command has help, and no help shows a
    Python None or a suppressed default."""
    assert cli(["--version"], capsys)[:2] == (0, f"cifarkit {cifarkit.__version__}\n")
    for name, parser in subcommands().items():
        for action in parser._actions:
            assert action.help and action.help.strip(), (name, action.dest)
        text = parser.format_help()
        assert "None" not in text and "SUPPRESS" not in text, (name, text)


def test_lr_find_flags_are_trains() -> None:
    """lr-find's flags are train's, the same names and help (--lr-find-iters, not --iters), including the ones the
    range test uses: --label-smoothing, --precision."""
    subs = subcommands()
    train = {s: a.help for a in subs["train"]._actions for s in a.option_strings}
    lr_find = {s: a.help for a in subs["lr-find"]._actions for s in a.option_strings}
    assert {"--lr-find-iters", "--lr-find-start", "--lr-find-end", "--label-smoothing", "--precision"} <= set(lr_find)
    assert "--iters" not in lr_find
    assert all(train.get(flag) == text for flag, text in lr_find.items())


def test_evaluate_reports_flip_tta_on_the_whole_test_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate RUN uses model.pt and says so, tests on the whole test set (10 images, not the run's 4) and prints
    how many; --tta prints the flip-TTA accuracy, equal to one computed here (for weights where it differs from the
    plain accuracy); --test-subset 4 uses 4. Without model.pt it uses checkpoints/last.pt and says so."""
    data = resolve_data("synthetic")
    x = normalize_batch(torch.from_numpy(data.test_images), *normalization("true"))
    y = torch.from_numpy(data.test_labels)
    for seed in range(20):  # weights for which flipping changes the accuracy, so the check can tell them apart
        torch.manual_seed(seed)
        model = CustomResNet().eval()
        with torch.no_grad():
            plain, flipped = model(x).softmax(1), model(x.flip(3)).softmax(1)
        acc, acc_tta = ((plain.argmax(1) == y).double().mean().item(),
                        ((plain + flipped).argmax(1) == y).double().mean().item())
        if acc != acc_tta:
            break
    assert acc != acc_tta
    run = untrained_run(tmp_path / "run", seed)
    code, out, err = cli(["evaluate", "--checkpoint", str(run), "--tta", "--device", "cpu"], capsys)
    assert code == 0, err
    values = dict(pair.split("=") for pair in out.split())
    assert values["images"] == "10" and f"weights: {run / 'model.pt'}" in err
    assert float(values["test_accuracy"]) == pytest.approx(acc, abs=1e-4)
    assert float(values["test_accuracy_tta"]) == pytest.approx(acc_tta, abs=1e-4)
    assert "images=4" in cli(["evaluate", "--checkpoint", str(run), "--test-subset", "4"], capsys)[1]

    state = torch.load(run / "model.pt", weights_only=True)["weights"]
    (run / "checkpoints").mkdir()
    torch.save({"model": state, "config": read_config(run / "config.json").to_dict()},
               run / "checkpoints" / "last.pt")
    (run / "model.pt").unlink()
    code, out, err = cli(["evaluate", "--checkpoint", str(run)], capsys)
    assert code == 0 and f"weights: {run / 'checkpoints' / 'last.pt'} (the last checkpoint" in err, err
    assert float(dict(pair.split("=") for pair in out.split())["test_accuracy"]) == pytest.approx(acc, abs=1e-4)


def test_evaluate_report_prints_the_classification_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate --report prints, after the metrics, precision/recall/F1 and support for every class with the
    accuracy and the macro average, and the most-confused pairs, largest first: each figure as worked out here from
    the 10 test images and a forward pass written here (one near-tie apart at most)."""
    run = untrained_run(tmp_path / "run", 3)
    code, out, err = cli(["evaluate", "--checkpoint", str(run), "--report", "--device", "cpu"], capsys)
    assert code == 0, err
    first, *table = out.splitlines()
    assert first.startswith("test_accuracy=") and "images=10" in first
    assert table[0].split() == ["precision", "recall", "f1-score", "support"]
    pairs_at = table.index("most confused (true -> predicted: test images)")
    said = (dict(pair.split("=") for pair in first.split())["test_accuracy"],
            [line.split() for line in table[1:pairs_at] if line.strip()],
            [line.strip() for line in table[pairs_at + 1:]])
    data = resolve_data("synthetic")
    classes = data.classes

    def by_hand(predictions: np.ndarray) -> tuple[str, list[list[str]], list[str]]:
        """What evaluate --report says for these predictions of the test images, worked out here."""
        s = class_scores_by_hand(data.test_labels, predictions, len(classes))
        rows = [[c, *(f"{v[i]:.2f}" for v in (s.precision, s.recall, s.f1)), str(s.total[i])]
                for i, c in enumerate(classes)]
        accuracy = sum(s.correct) / sum(s.total)
        rows += [["accuracy", f"{accuracy:.2f}", str(sum(s.total))],
                 ["macro", "avg", *(f"{s.macro[k]:.2f}" for k in ("precision", "recall", "f1")), str(sum(s.total))]]
        pairs = [f"{classes[t]} -> {classes[p]}: {n}" for t, p, n in s.most_confused]
        return f"{accuracy:.4f}", rows, pairs

    hand = predictions_near_ties(run, data.test_images)
    assert said in [by_hand(p) for p in hand], (said, by_hand(hand[0]))


def test_predict_top_k_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """predict --top-k 3 prints, per image, the three classes a forward pass written here finds most likely, with
    their probabilities, most likely first (a 64x48 image resized to 32x32 first); --json gives the same as
    machine-readable data; a run folder and its model.pt give the same answer."""
    run = untrained_run(tmp_path / "run")
    images, pixels = [], []
    for i, size in enumerate(((32, 32), (64, 48))):
        images.append(str(tmp_path / f"img{i}.png"))
        image = Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8))
        image.save(images[-1])
        pixels.append(np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR)))
    by_hand = top_k_by_hand(probabilities_by_hand(run, np.stack(pixels)), resolve_data("synthetic").classes, 3)
    code, out, err = cli(["predict", "--checkpoint", str(run), *images, "--top-k", "3"], capsys)
    assert code == 0, err
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [line[0] for line in lines] == images and all(len(line) == 7 for line in lines)
    for line, hand in zip(lines, by_hand, strict=True):
        assert line[1::2] == [c for c, _ in hand]
        assert [float(p) for p in line[2::2]] == pytest.approx([p for _, p in hand], abs=2e-4)  # 4 decimals
    code, out, err = cli(["predict", "--checkpoint", str(run / "model.pt"), *images, "--top-k", "3", "--json"],
                         capsys)
    assert code == 0, err
    parsed = json.loads(out)
    assert [p["image"] for p in parsed] == images
    for item, hand in zip(parsed, by_hand, strict=True):
        assert [t["class"] for t in item["top"]] == [c for c, _ in hand]
        assert [t["probability"] for t in item["top"]] == pytest.approx([p for _, p in hand], abs=1e-4)


@pytest.mark.slow
def test_every_command_accepts_precision_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--precision fp16 on tiny inputs: train, lr-find, evaluate, predict, report (given the weights file) and bench
    run and exit 0; evaluate says it ran in fp16; summary exits 0 and says in one line why precision does not apply."""
    code, out, err = cli(["summary", "--batch-size", "1", "--precision", "fp16"], capsys)
    assert code == 0 and err == SUMMARY_PRECISION + "\n" and "Total params: 6,573,120" in out
    run, image = tmp_path / "run", tmp_path / "cat.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    small = ["--precision", "fp16", "--device", "cpu"]
    commands = [
        ["train", *small, "--subset", "2", "--test-subset", "2", "--batch-size", "2", "--epochs", "1", "--lr-min",
         "1e-4", "--lr-max", "1e-3", "--no-plots", "--out", str(run)],
        ["lr-find", *small, "--subset", "2", "--batch-size", "1", "--lr-find-iters", "10", "--lr-find-start", "1e-4",
         "--lr-find-end", "1", "--out", str(tmp_path / "lr")],  # 2 images: the loss falls within 10 steps
        ["evaluate", *small, "--checkpoint", str(run), "--test-subset", "2"],
        ["predict", *small, "--checkpoint", str(run), str(image)],
        ["report", *small, str(run / "model.pt")],
        ["bench", *small, "--batch-size", "1", "--steps", "1", "--warmup", "0", "--repeats", "1"],
    ]
    for argv in commands:
        code, out, err = cli(argv, capsys)
        assert code == 0, (argv[0], err)
        if argv[0] == "evaluate":
            assert "cpu, fp16" in err
    assert (run / "plots" / "confusion_matrix.png").is_file() and (tmp_path / "lr" / "lr_finder.json").is_file()


@pytest.mark.slow
def test_header_before_the_range_test_and_eta_after_the_first_epoch(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The data (source, short fingerprint, image counts), the synthetic note, device and precision are printed
    before the range test starts, the precision being the one `choose_precision` picks for this CPU; after epoch 1's
    steps, one line estimates the whole run's time."""
    code, out, err = cli(["train", *TINY, "--epochs", "2", "--lr-find-iters", "10", "--out", str(tmp_path / "r")],
                         capsys)
    assert code == 0, err
    lines = err.splitlines()  # what the run tells the user: on stderr, results on stdout
    first = {key: next(i for i, line in enumerate(lines) if line.startswith(key))
             for key in ("data: ", "NOTE: ", "device: ", "lr-find: ", "2 epochs ≈ ")}
    assert first["data: "] < first["NOTE: "] < first["device: "] < first["lr-find: "] < first["2 epochs ≈ "]
    fingerprint = resolve_data("synthetic").fingerprint
    assert f"fingerprint {fingerprint[:12]}; 8 train / 8 test images" in lines[first["data: "]]
    expected = choose_precision("cpu")  # the policy's choice for this CPU (or the one --cpu-flags stands for)
    assert re.fullmatch(rf"device: cpu x1 \(.+\), precision {expected}", lines[first["device: "]])
    assert re.fullmatch(r"2 epochs ≈ \d+ (s|min)( \d+ min)? at [\d.]+ s per step on this CPU; .+ to go, plus "
                        r"evaluation", lines[first["2 epochs ≈ "]]), lines[first["2 epochs ≈ "]]


@pytest.mark.parametrize("failure", ["bad data", "error", "Ctrl-C"])
@pytest.mark.parametrize("folder", ["new", "existing"])
def test_failed_start_leaves_nothing_behind(failure: str, folder: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A start that fails (bad --data: before the run folder is made; an error or Ctrl-C in the range test: after)
    leaves no new folder, parents included, and in a folder that held files before, only those files."""
    run = tmp_path / "new" / "deep" / "run" if folder == "new" else tmp_path / "mine"
    if folder == "existing":
        run.mkdir()
        (run / "notes.txt").write_text("mine\n")

    def fail(*args: object, **kwargs: object) -> None:
        raise CifarkitError("the range test failed") if failure == "error" else KeyboardInterrupt

    monkeypatch.setattr(cifarkit.train, "range_test", fail)
    data = str(tmp_path / "nothing") if failure == "bad data" else "synthetic"
    code, out, err = cli(["train", *TINY, "--data", data, "--out", str(run)], capsys)
    assert code == (130 if failure == "Ctrl-C" else 2), err
    if folder == "new":
        assert not (tmp_path / "new").exists()
    else:
        assert [p.name for p in run.iterdir()] == ["notes.txt"]
