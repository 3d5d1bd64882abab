"""`cifarkit export RUN --format onnx --out model.onnx`: the run's model as one file for other runtimes, checked.

The exported graph takes what an image file holds and returns what a user wants:

    input  "images": uint8 [B, 32, 32, 3], RGB, channels last (as PIL and numpy hold images), batch size B free
    output "probs":  float32 [B, classes], softmax probabilities

The run's normalisation ((x / 255 - mean) / std with the run's mean and std) is inside the graph, so a caller only
resizes to 32x32; no caller can forget it or use another std, which is the usual way an exported vision model goes
quietly wrong. Probabilities rather than logits, because every caller wants them and softmax costs nothing. The
class names are stored in the ONNX metadata ("classes", a JSON list).

The file is checked before it is written: onnxruntime (CPU) runs it on the run's test images (or N of them) and
every probability must lie within 1e-3 of PyTorch's (the model in eval mode on `inference.preprocess` input) with
the same top-1 class on every image; otherwise it is an error and nothing is written. Needs the optional extra
`export` (INSTALL says how):

    >>> from cifarkit.export import export_command
    >>> export_command(Path("runs/baseline"), fmt="onnx", out=Path("model.onnx"), check_images=1000)

`--format torchscript` writes the same graph as a traced TorchScript file, checked the same way with torch.jit.load;
PyTorch deprecates torch.jit, so it is for runtimes that still load TorchScript (LibTorch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cifarkit.atomic import atomic_write
from cifarkit.errors import CifarkitError, pip_install, write_error
from cifarkit.inference import Preprocess, open_run, predict_proba
from cifarkit.run import check_out_file, find_weights

PROB_BOUND = 1e-3  # max |probability difference| allowed between the exported file and PyTorch
BATCH = 256  # images per call in the check and the speed figures
INSTALL = f"export needs ONNX: {pip_install('export')}"
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}  # the modules each format imports


class ImagesToProbs(nn.Module):
    """uint8 [B, 32, 32, 3] RGB images -> softmax probabilities [B, classes], normalisation included."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model, self.preprocess = model, Preprocess(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.preprocess(images)), dim=1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter logs a warning for each torchvision op it cannot register and a FutureWarning from its
    own internals: noise for a model without torchvision ops, silenced for the export call only."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)


def _export_onnx(graph: nn.Module, path: Path, classes: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Write `graph` as ONNX (one file, batch dimension dynamic); returns an onnxruntime CPU runner of the file."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise CifarkitError(INSTALL) from None
    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter():
            torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["probs"],
                              dynamic_shapes={"images": {0: batch}}, external_data=False, dynamo=True,
                              verbose=False)
    except ImportError:  # onnxscript missing
        raise CifarkitError(INSTALL) from None
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"classes": json.dumps(list(classes)),
                                        "input": "images: uint8 [B, 32, 32, 3] RGB",
                                        "output": "probs: float32 [B, classes], softmax"})
    onnx.save(proto, str(path))
    runner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: runner.run(["probs"], {"images": images})[0]


def _export_torchscript(graph: nn.Module, path: Path, classes: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Write `graph` traced as TorchScript (class names in the file's extra "classes.json"); returns its runner."""
    with torch.no_grad():
        traced = torch.jit.trace(graph, torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    torch.jit.save(traced, str(path), _extra_files={"classes.json": json.dumps(list(classes))})
    loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(images)).numpy()

    return run


EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript}


@dataclass(frozen=True)
class Parity:
    """How the exported file agrees with PyTorch on `images` test images, and both speeds (images/s, CPU)."""

    images: int
    max_prob_diff: float
    top1_mismatches: int
    exported_images_per_s: float
    torch_images_per_s: float

    @property
    def ok(self) -> bool:
        return self.max_prob_diff <= PROB_BOUND and self.top1_mismatches == 0


def _timed(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> tuple[np.ndarray, float]:
    """run() over BATCH-image slices after one warm-up call; returns the outputs and images per second."""
    run(images[:BATCH])
    start = time.perf_counter()
    out = np.concatenate([run(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    return out, len(images) / (time.perf_counter() - start)


def check_parity(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, images: np.ndarray,
                 mean: Sequence[float], std: Sequence[float]) -> Parity:
    """Compare the exported runner with the PyTorch model (CPU, eval, preprocessed input) on uint8 NHWC images."""
    def reference(batch: np.ndarray) -> np.ndarray:
        return predict_proba(model, batch, mean, std)

    exported, exported_rate = _timed(run, images)
    expected, torch_rate = _timed(reference, images)
    return Parity(len(images), float(np.abs(exported - expected).max()),
                  int((exported.argmax(1) != expected.argmax(1)).sum()), exported_rate, torch_rate)


def _installed(name: str) -> bool:
    """Whether `import name` can work, without importing it (onnx and its exporter take seconds to import)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a __spec__: imported, so there
        return sys.modules.get(name) is not None


def export_command(weights: Path, *, fmt: str, out: Path, check_images: int = 1000,
                   data: str | None = None) -> list[str]:
    """Export, check against PyTorch on the run's test images, then write `out`; returns the result's lines (what
    was written, the parity figures, the speeds), which the command line prints."""
    if fmt not in EXPORTERS:
        raise CifarkitError(f"--format must be one of {sorted(EXPORTERS)}, got {fmt!r}")
    if check_images < 0:
        raise CifarkitError(f"--check-images must be 0 (all) or positive, got {check_images}")
    out = check_out_file(out, suffix=fmt)
    find_weights(weights)  # a missing run, then a missing extra, before the run and its data load
    if not all(_installed(name) for name in NEEDS[fmt]):
        raise CifarkitError(INSTALL)
    run = open_run(Path(weights), data=data, device="cpu", precision="fp32")
    test = run.test_data()
    images = np.ascontiguousarray(test.test_images[:check_images or None])
    if not len(images):
        raise CifarkitError(f"no test images with the model's {len(run.classes)} classes to check the export on: "
                            "pass the run's own data with --data")
    graph = ImagesToProbs(run.model, run.mean, run.std).eval()
    with tempfile.TemporaryDirectory(prefix="cifarkit-export-") as folder:
        staged = Path(folder) / out.name
        parity = check_parity(EXPORTERS[fmt](graph, staged, run.classes), run.model, images, run.mean, run.std)
        name = "onnxruntime" if fmt == "onnx" else "TorchScript"
        figures = (f"max |prob difference| {parity.max_prob_diff:.2e} (bound {PROB_BOUND:g}), top-1 differs on "
                   f"{parity.top1_mismatches} of {parity.images} test images")
        if not parity.ok:
            raise CifarkitError(f"the exported model disagrees with PyTorch: {figures}; nothing written")
        try:
            with atomic_write(out) as f, open(staged, "rb") as src:
                shutil.copyfileobj(src, f)  # a reader never sees half a file
        except OSError as e:
            raise write_error(out, e) from e
    return [f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): input images uint8 [B, 32, 32, 3] RGB, "
            f"output probs float32 [B, {len(run.classes)}] (softmax), normalisation inside",
            f"parity: {figures}",
            f"CPU images/s at batch {BATCH} on {parity.images} images: {name} {parity.exported_images_per_s:.0f}, "
            f"PyTorch eval {parity.torch_images_per_s:.0f}"]
