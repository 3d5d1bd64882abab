"""`cifarkit export`: the ONNX file takes uint8 NHWC images of any batch size and matches PyTorch, or is not written."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit.export as export_module
from cifarkit.data.augment import normalize_batch
from cifarkit.data.images import read_image
from cifarkit.cli import main
from cifarkit.inference import load_model_file
from cifarkit.data import CLASSES, normalization
from helpers import one_error_line, slow_fixture, unread_run

SNIPPET = Path(__file__).parents[1] / "examples" / "onnx_classify.py"
# PyTorch deprecates torch.jit; --format torchscript still serves runtimes that load it (LibTorch)
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\..*` is deprecated:DeprecationWarning")


@slow_fixture(scope="module")
def onnx_file(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny run exported once as ONNX, checked on 40 test images; the command's stdout."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    buffer = StringIO()  # capsys is per test; this fixture is per module
    with redirect_stdout(buffer):
        assert main(["export", str(tiny_run), "--format", "onnx", "--out", str(out), "--check-images", "40"]) == 0
    return out, buffer.getvalue()


def _torch_probs(run: Path, images: np.ndarray) -> np.ndarray:
    model, found = load_model_file(run / "model.pt", torch.device("cpu"))
    with torch.no_grad():
        batch = torch.from_numpy(np.array(images))  # a writable copy (read_image may return a read-only view)
        return torch.softmax(model(normalize_batch(batch, *normalization(found.config.std))), dim=1).numpy()


def test_export_prints_parity_and_both_speeds(onnx_file: tuple[Path, str]) -> None:
    """The command states the I/O contract, the max probability difference and top-1 agreement on the 40 images,
    and onnxruntime's and PyTorch's images/s."""
    out, stdout = onnx_file
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"wrote {out} (") and "uint8 [B, 32, 32, 3]" in lines[0]
    assert lines[1].startswith("parity: max |prob difference| ") and "top-1 differs on 0 of 40" in lines[1]
    assert float(lines[1].split("|prob difference| ")[1].split()[0]) <= 1e-3
    assert "onnxruntime" in lines[2] and "PyTorch eval" in lines[2]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_takes_uint8_nhwc_of_any_batch_and_returns_pytorchs_probabilities(
        onnx_file: tuple[Path, str], tiny_run: Path, batch: int) -> None:
    """Batches other than the traced one run; outputs are softmax rows within 1e-3 of PyTorch's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file[0]), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    probs = session.run(["probs"], {"images": images})[0]
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs, _torch_probs(tiny_run, images), atol=1e-3)
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"])[0] == "airplane"


def test_readme_snippet_classifies_a_png_as_pytorch_does(onnx_file: tuple[Path, str], tiny_run: Path,
                                                         tmp_path: Path) -> None:
    """examples/onnx_classify.py, run beside model.onnx and cat.png, prints PyTorch's class for that PNG."""
    (tmp_path / "model.onnx").symlink_to(onnx_file[0])
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    out = subprocess.run([sys.executable, str(SNIPPET)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = _torch_probs(tiny_run, read_image(tmp_path / "cat.png")[None])[0]
    name, prob = out.stdout.split()
    assert name == CLASSES[int(expected.argmax())]
    assert float(prob) == pytest.approx(float(expected.max()), abs=1e-3)


def test_the_readme_shows_the_snippet_as_tested() -> None:
    """README.md's onnxruntime block is examples/onnx_classify.py, line for line (the file the test above runs)."""
    readme = (SNIPPET.parents[1] / "README.md").read_text()
    assert f"```python\n{SNIPPET.read_text().rstrip()}\n```" in readme


def test_a_graph_that_disagrees_with_pytorch_is_refused_and_not_written(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An export that forgets the normalisation (raw 0..255 pixels into the network) fails the check: exit 2, one
    `error:` line with the figures, and no file at --out."""
    real = export_module.ImagesToProbs
    monkeypatch.setattr(export_module, "ImagesToProbs", lambda model, mean, std: real(model, (0, 0, 0), (1 / 255,) * 3))
    out = tmp_path / "model.pt"
    argv = ["export", str(tiny_run), "--format", "torchscript", "--out", str(out), "--check-images", "20"]
    assert one_error_line(argv, capsys).startswith("error: the exported model disagrees with PyTorch: max |prob")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_torchscript_export_passes_the_same_check(tiny_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--format torchscript writes a file that torch.jit.load runs on uint8 NHWC images of the run's test set, in
    batches other than the traced one: softmax rows within 1e-5 of PyTorch's probabilities, the same top-1 class on
    every image, and the class names in the file's extra "classes.json"."""
    from cifarkit.inference import open_run

    out = tmp_path / "model.ts"
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(out), "--check-images", "20"]) == 0
    assert "TorchScript" in capsys.readouterr().out
    extra = {"classes.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["classes.json"]) == list(CLASSES)
    images = np.ascontiguousarray(open_run(tiny_run, device="cpu").test_data().test_images[:30])
    assert len(images) == 30 and len({im.tobytes() for im in images}) == 30
    expected = _torch_probs(tiny_run, images)
    for batch in (images[:1], images):
        with torch.no_grad():
            probs = loaded(torch.from_numpy(batch)).numpy()
        assert probs.shape == (len(batch), 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected[:len(batch)], atol=1e-5, rtol=0)
        assert (probs.argmax(1) == expected[:len(batch)].argmax(1)).all()


def test_without_onnx_export_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """With onnx not importable: exit 2, one line naming the install line that works (from the repository),
    nothing written, and the weights never read (the run's model.pt is an empty file)."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    run, out = unread_run(tmp_path), tmp_path / "out"
    out.mkdir()
    assert one_error_line(["export", str(run), "--out", str(out / "m.onnx"), "--check-images", "5"], capsys) == (
        'error: export needs ONNX: pip install "cifarkit[export] @ git+https://github.com/cifarkit/cifarkit"')
    assert list(out.iterdir()) == []
