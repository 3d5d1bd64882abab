"""`cifarkit app` without a browser: the Blocks it builds, its example files, and its one-line refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import one_error_line, unread_run


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_import_cifarkit_and_its_cli_loads_no_optional_extra() -> None:
    """`import cifarkit`, `import cifarkit.cli` and building the parser import neither gradio nor onnx(runtime)."""
    code = ("import sys, cifarkit, cifarkit.cli; cifarkit.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'onnx', 'onnxruntime', 'onnxscript'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_without_gradio_app_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With gradio not importable: exit 2 and one `error:` line naming the install line that works (from the
    repository: cifarkit is on no package index), before the weights are read: its model.pt is an empty file."""
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert one_error_line(["app", str(unread_run(tmp_path))], capsys) == (
        'error: the app needs Gradio: pip install "cifarkit[app] @ git+https://github.com/cifarkit/cifarkit"')


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be in 1..65535"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or mps"),
])
def test_bad_app_arguments_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad port or device is refused in one `error:` line before Gradio is imported (with `import gradio` made to
    fail, the line is still the argument's) and before the weights are read (the run's model.pt is an empty file)."""
    monkeypatch.setitem(sys.modules, "gradio", None)
    one_error_line(["app", str(unread_run(tmp_path)), *argv], capsys, message)


def test_app_on_a_missing_run_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A path with no run and a folder without weights are each refused in one line naming the path, before Gradio
    is imported (`import gradio` made to fail)."""
    monkeypatch.setitem(sys.modules, "gradio", None)
    (tmp_path / "empty").mkdir()
    for path, words in ((tmp_path / "nothing", "no run folder or weights file at"),
                        (tmp_path / "empty", "is a folder without model.pt")):
        one_error_line(["app", str(path)], capsys, str(path), words)


# The elements tests/test_app_browser.py finds by id, and the Gradio component each must be.
BROWSER_IDS = {"run-header": "Markdown", "examples": "Gallery", "uploads": "File", "top-k": "Slider",
               "upload-notes": "Markdown", "prediction-0": "Label", "gradcam-on": "Checkbox", "gradcam-layer": "Radio",
               "gradcam-opacity": "Slider", "gradcam-gallery": "Gallery", "mis-on": "Checkbox", "mis-count": "Slider",
               "mis-gallery": "Gallery"}


def test_build_app_returns_blocks_with_the_examples(tiny_run: Path, tmp_path: Path) -> None:
    """build_app gives a gr.Blocks (not launched) holding every element the browser test finds by id, each the
    component it expects (the run's header; a top-k slider from 1 to 10 at 5; a layer choice offering layer2; a
    multi-file upload), and write_examples one PNG per class, named for it."""
    gr = pytest.importorskip("gradio")
    from cifarkit.app.server import build_app, write_examples
    from cifarkit.app.views import load_explainer

    ex = load_explainer(tiny_run, device="cpu")
    examples = write_examples(ex, tmp_path)
    assert [name for _, name in examples] == list(ex.classes)
    for path, name in examples:
        assert path.name == f"example-{name}.png"
        with Image.open(path) as image:
            assert image.size == (32, 32)
    demo = build_app(ex, examples)
    assert isinstance(demo, gr.Blocks) and not getattr(demo, "is_running", False)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id, kind in BROWSER_IDS.items():
        assert isinstance(by_id.get(elem_id), getattr(gr, kind)), (elem_id, kind, type(by_id.get(elem_id)))
    assert by_id["run-header"].value == ex.header and "NOT CIFAR-10" in ex.header
    assert (by_id["top-k"].minimum, by_id["top-k"].maximum, by_id["top-k"].value) == (1, 10, 5)
    assert "layer2" in [value for _, value in by_id["gradcam-layer"].choices]
    assert by_id["uploads"].file_count == "multiple"

