"""examples/colab.ipynb runs end to end (smoke mode, synthetic data) and leaves a complete run folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cifarkit.data import CLASSES

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "colab.ipynb"
PLOTS = ("samples", "lr_finder", "loss", "accuracy", "lr_schedule", "misclassified", "confusion_matrix", "gradcam")


def test_notebook_is_a_thin_client() -> None:
    """The notebook is valid nbformat v4, explains itself in markdown, and never edits sys.path."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "sys.path" not in code
    assert "CIFARKIT_PIP_SPEC" in code and 'REPO = "https://github.com/cifarkit/cifarkit"' in code
    assert code.count("github.com/cifarkit") == 1, "the install URL is one variable"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


def test_notebook_uses_only_the_public_api() -> None:
    """Every cifarkit name the notebook uses comes from the package's top level: no `cifarkit.<module>` import."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    deep = re.findall(r"^\s*(?:from|import)\s+cifarkit\.[\w.]+.*$", code, re.M)
    assert not deep, deep
    assert re.search(r"^from cifarkit import \(?", code, re.M)


@pytest.mark.slow
@pytest.mark.xdist_group("kernel")
def test_notebook_runs_in_smoke_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executed in a fresh python3 kernel (cwd: an empty folder, CIFARKIT_SMOKE=1, CIFARKIT_DATA=synthetic), no cell
    errors, the run folder it creates holds every plot, the report and the metrics, and the last cell classifies one
    test image of each class."""
    monkeypatch.setenv("CIFARKIT_SMOKE", "1")
    monkeypatch.setenv("CIFARKIT_DATA", "synthetic")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, like the rest of the suite
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    runs = sorted((tmp_path / "runs").glob("colab-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    for name in PLOTS:
        assert (run / "plots" / f"{name}.png").is_file(), name
    for name in ("report.md", "metrics.json", "history.csv", "lr_finder.json", "model.pt"):
        assert (run / name).is_file(), name
    shown = [line.split()[1].rstrip(":") for o in nb.cells[-1].outputs if o.output_type == "stream"
             for line in o.text.splitlines() if line.startswith("true ")]
    assert sorted(shown) == sorted(CLASSES), f"the last cell shows {shown}, not one test image per class"
    shown = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert shown >= 8, f"only {shown} images displayed"
