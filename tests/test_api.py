"""The Python API: `cifarkit.load_model` and `cifarkit.predict` on every kind of image, `fit(config, data=...)`, errors
that name API arguments (not CLI flags), and the README's Python API snippet run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
import cifarkit.data.sources
from cifarkit import CifarkitError, TrainConfig, fit
from cifarkit.data import CLASSES, make_synthetic
from cifarkit.models import CustomResNet
from cifarkit.run import write_config
from by_hand import probabilities_by_hand, top_k_by_hand

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with untrained, seeded weights and a config whose std is the reference one."""
    folder = tmp_path / "run"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(CustomResNet().state_dict(), folder / "model.pt")
    write_config(folder, TrainConfig(std="reference"))
    return folder


def test_load_model_returns_model_and_config(run: Path) -> None:
    """load_model takes a run folder or its model.pt and unpacks into an eval-mode CustomResNet and the run's
    TrainConfig."""
    for where in (run, run / "model.pt", str(run)):
        model, config = cifarkit.load_model(where, device="cpu")
        assert isinstance(model, CustomResNet) and not model.training and config.std == "reference"


def test_predict_takes_arrays_pil_images_and_paths(run: Path, tmp_path: Path) -> None:
    """Three images as one NHWC array give, per image, the top-3 classes and probabilities of a forward pass written
    here, most likely first; the same images as a list of HWC arrays, PIL images, paths, or with a run folder
    instead of the model, give the same; a 64x48 image is resized."""
    images = make_synthetic(3, 1).train_images
    loaded = cifarkit.load_model(run, device="cpu")
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    expected = cifarkit.predict(loaded, images, top_k=3)
    by_hand = top_k_by_hand(probabilities_by_hand(run, images), CLASSES, 3)
    assert len(expected) == len(by_hand) == 3
    for top, hand in zip(expected, by_hand, strict=True):
        assert [c for c, _ in top] == [c for c, _ in hand]
        assert [p for _, p in top] == pytest.approx([p for _, p in hand], abs=1e-4)
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert cifarkit.predict(loaded, list(images), top_k=3) == expected
    assert cifarkit.predict(loaded, [Image.fromarray(i) for i in images], top_k=3) == expected
    assert cifarkit.predict(loaded, paths, top_k=3) == expected
    assert cifarkit.predict(run, [str(p) for p in paths], top_k=3, device="cpu") == expected
    single = cifarkit.predict(loaded, images[0], top_k=3)  # a batch of one: a GEMM that may round differently
    assert [c for c, _ in single[0]] == [c for c, _ in expected[0]]
    assert [p for _, p in single[0]] == pytest.approx([p for _, p in expected[0]], rel=1e-5)
    assert len(cifarkit.predict(loaded.model, np.zeros((48, 64, 3), np.uint8))[0]) == 1


@pytest.mark.parametrize("call, words", [
    (lambda m: cifarkit.predict(m, np.zeros((32, 32, 3), np.uint8), top_k=0), "top_k must be in 1..10, got 0"),
    (lambda m: cifarkit.predict(m, np.zeros((32, 32, 3), np.float32)), "images[0] is float32"),
    (lambda m: cifarkit.predict(m, []), "images is empty"),
    (lambda m: cifarkit.predict(m, [3]), "images[0] is of type int"),
    (lambda m: fit(TrainConfig(epochs=0)), "epochs must be positive, got 0"),
    (lambda m: fit(TrainConfig(lr_min=0.1, lr_max=0.01)), "lr_min (0.1) must be below lr_max (0.01)"),
])
def test_api_errors_name_arguments(run: Path, call, words: str) -> None:
    """A mistake through the API is a CifarkitError whose message names the argument, not a CLI flag."""
    loaded = cifarkit.load_model(run, device="cpu")
    with pytest.raises(CifarkitError) as info:
        call(loaded)
    assert words in str(info.value) and "--" not in str(info.value)


def test_fit_on_a_run_and_resume_without_one_say_resume_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit into a folder that holds a run says to pass resume=True; fit(resume=True) where nothing was saved says to
    start without it: API words, no CLI flag. The folder holding a run keeps all its files."""
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", (20, 10))
    held = tmp_path / "held"
    (held / "checkpoints").mkdir(parents=True)
    (held / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    config = TrainConfig(out=str(held), subset=8, batch_size=8, lr_min=1e-4, lr_max=1e-3, device="cpu")
    with pytest.raises(CifarkitError, match=r"already holds a run: call fit with resume=True") as info:
        fit(config, data="synthetic", progress=False)
    assert "--" not in str(info.value)
    assert sorted(p.name for p in held.rglob("*") if p.name != ".lock") == ["checkpoints", "last.pt"]
    assert (held / "checkpoints" / "last.pt").read_bytes() == b"a checkpoint"
    config.out = str(tmp_path / "empty")
    with pytest.raises(CifarkitError, match=r"nothing to resume .* without resume=True") as info:
        fit(config, resume=True, progress=False)
    assert "--" not in str(info.value) and not (tmp_path / "empty").exists()


def readme_snippet() -> str:
    """The ```python block under the README's "## Python API" heading."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no python block under ## Python API"
    return found.group(1)


@pytest.mark.slow
def test_readme_python_api_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python API snippet runs as written (in an empty folder, `synthetic` made small): it trains, loads
    the run and prints top-3 predictions; run a second time in the same folder, it does the same into a run folder
    of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifarkit.data.sources, "SYNTHETIC_SIZES", (400, 200))
    number = r"[\d.e+-]+"
    for runs in (1, 2):
        exec(compile(readme_snippet(), str(README), "exec"), {"__name__": "__readme__"})
        out = capsys.readouterr().out
        assert len(list((tmp_path / "runs").glob("api-*/model.pt"))) == runs
        assert re.search(rf"\[\('\w+', {number}\), \('\w+', {number}\), \('\w+', {number}\)\]", out), out
