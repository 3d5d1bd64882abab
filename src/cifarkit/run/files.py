"""The files of a run folder: the name of each (spelled here and nowhere else), how each is read back (missing,
truncated or damaged: one CifarkitError line naming the file and what to do), and which weights a path means."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from cifarkit.atomic import write_json, write_text
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError, one_line

# Every file of a run folder (docs/design.md, "Run folder"). No other module spells these names.
CONFIG = "config.json"  # TrainConfig.to_dict() of what ran
METRICS = "metrics.json"  # the run's figures, rewritten every epoch
HISTORY = "history.csv"  # one row per epoch
STEPS = "steps.csv"  # one row per optimiser step
SCHEDULE = "schedule.json"  # the LR of every step
LR_FINDER = "lr_finder.json"  # the range test's curve and picks
LR_FINDER_PLOT = "lr_finder.png"  # `cifarkit lr-find`'s figure
MODEL = "model.pt"  # the final model, a file that describes itself (cifarkit.inference)
CHECKPOINT_NAME = "last.pt"
CHECKPOINT = f"checkpoints/{CHECKPOINT_NAME}"  # the full training state, for --resume
PER_CLASS = "per_class.json"
CLASSIFICATION_REPORT = "classification_report.csv"
REPORT = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
FILE_NAMES = (CONFIG, METRICS, HISTORY, STEPS, SCHEDULE, LR_FINDER, LR_FINDER_PLOT, MODEL, CHECKPOINT_NAME, PER_CLASS,
              CLASSIFICATION_REPORT, REPORT, REPORT_HTML, LOCK)  # spelled in this file only (tests/test_layers.py)
TRAINING_FILES = (CONFIG, METRICS, MODEL, CHECKPOINT)  # any of them: a training run's folder
WEIGHTS_HELP = f"a run folder (its {MODEL}, else {CHECKPOINT}), or a weights file"

# The first bytes of what torch.save writes: a zip archive (the format since PyTorch 1.6) or a pickle (older files).
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
OTHER_FILES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"{": "JSON"}


# ------------------------------------------------------------------------------------------------------ readers

def read_json(path: Path, what_to_do: str) -> Any:
    """JSON from `path`; a missing, truncated or damaged file is one CifarkitError naming it and `what_to_do`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CifarkitError(f"{path} is missing: {what_to_do}") from None
    except OSError as e:
        raise CifarkitError(f"cannot read {path} ({e.strerror or one_line(e)}): {what_to_do}") from e
    try:
        return json.loads(text)
    except ValueError as e:
        state = "empty" if not text.strip() else f"truncated or damaged ({one_line(e)})"
        raise CifarkitError(f"cannot read {path}: {state}; {what_to_do}") from e


def read_config(run_or_file: str | os.PathLike[str]) -> TrainConfig:
    """The TrainConfig of a run folder (or of a config.json given itself)."""
    path = Path(run_or_file)
    path = path / CONFIG if path.is_dir() else path
    fix = "it records the run's settings: restore it from a copy"
    values = read_json(path, fix)
    try:
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object")
        return TrainConfig.from_dict(values)
    except CifarkitError as e:
        raise CifarkitError(f"cannot read {path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise CifarkitError(f"cannot read {path}: not a cifarkit config ({one_line(e)}); {fix}") from e


def read_metrics(run: Path) -> dict[str, Any]:
    """RUN/metrics.json, written at the end of every epoch."""
    path = Path(run) / METRICS
    metrics = read_json(path, f"it is written at the end of every epoch; finish the run with `cifarkit train "
                              f"--resume --out {run}`, or restore a copy")
    if not isinstance(metrics, dict):
        raise CifarkitError(f"cannot read {path}: not a cifarkit metrics file (a JSON {type(metrics).__name__})")
    return metrics


def read_optional_json(path: Path) -> dict[str, Any] | None:
    """A file a run may lack (lr_finder.json when the LRs were given, per_class.json before the plots): None when
    absent, one CifarkitError line when damaged."""
    if not Path(path).is_file():
        return None
    return read_json(path, "delete it, or restore a copy, and run the command again")


def is_finished(run: str | os.PathLike[str]) -> bool:
    """Whether a run folder holds a finished run: its final weights (model.pt), and metrics of every epoch."""
    run = Path(run)
    if not (run / MODEL).is_file() or not (run / METRICS).is_file():
        return False
    metrics = read_metrics(run)
    return metrics.get("epochs_completed") == metrics.get("epochs") and metrics.get("final_test_accuracy") is not None


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of RUN/history.csv or RUN/steps.csv ([] when the file is absent)."""
    if not Path(path).is_file():
        return []
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise CifarkitError(f"cannot read {path}: {one_line(e)}; it is rewritten at the end of every epoch") from e


def write_config(run: Path, config: TrainConfig) -> None:
    write_json(Path(run) / CONFIG, config.to_dict())


def write_metrics(run: Path, metrics: dict[str, Any]) -> None:
    write_json(Path(run) / METRICS, metrics)


def write_lr_finder(path: Path, values: dict[str, Any]) -> Path:
    """The range test's curve and picks as JSON: into FOLDER/lr_finder.json when `path` is a folder (or has no
    suffix), else into the file `path`; returns the file written."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / LR_FINDER
    write_text(path, json.dumps(values) + "\n")
    return path


# --------------------------------------------------------------------------------------------- which weights

def find_weights(run_or_path: str | os.PathLike[str]) -> Path:
    """The weights a path means: a run folder's model.pt, else its checkpoints/last.pt (a run not finished; also
    found in the checkpoints folder itself), else the path itself when it is a file."""
    path = Path(run_or_path)
    if path.is_dir():
        for weights in (path / MODEL, path / CHECKPOINT, path / CHECKPOINT_NAME):
            if weights.is_file():
                return weights
        raise CifarkitError(f"{path} is a folder without {MODEL} or {CHECKPOINT}: not a cifarkit run folder")
    if not path.is_file():
        raise CifarkitError(f"no run folder or weights file at {path}")
    return path


def run_file(weights: Path, name: str) -> Path | None:
    """RUN/name for weights given as a run folder, RUN/model.pt or RUN/checkpoints/last.pt: the nearest of the path,
    its folder and that folder's parent that holds `name`; None when none does."""
    weights = Path(weights)
    folders = (weights,) if weights.is_dir() else (weights.parent, weights.parent.parent)
    return next((f / name for f in folders if (f / name).is_file()), None)


def run_of(weights: Path) -> Path | None:
    """The run folder that weights belong to (the one holding config.json); None for a file on its own."""
    found = run_file(weights, CONFIG)
    return found.parent if found is not None else None


def report_folder(path: Path) -> Path:
    """The run folder `cifarkit report PATH` writes into: PATH itself, or the run a weights file inside it belongs
    to; it must hold config.json and metrics.json (one finished epoch)."""
    path = Path(path)
    if path.is_file():
        check_torch_file(path)
        run_dir = run_of(path)
        if run_dir is None:
            raise CifarkitError(f"{path} is not inside a run folder (no {CONFIG} beside it); give the run folder")
    elif path.is_dir():
        run_dir = path
    else:
        raise CifarkitError(f"no run folder at {path}: give the --out folder of a `cifarkit train` run")
    for name in (CONFIG, METRICS):
        if not (run_dir / name).is_file():
            raise CifarkitError(f"{run_dir} has no {name}: give the folder of a `cifarkit train` run that "
                                "completed at least one epoch")
    read_config(run_dir), read_metrics(run_dir)  # damaged: refused before any work
    return run_dir


def is_checkpoint(weights: Path) -> bool:
    return weights.name == CHECKPOINT_NAME


def weights_note(weights: Path) -> str:
    """One line that says which weights of a run are used: a run's last checkpoint says where its final weights are,
    or will be once the run finishes."""
    if is_checkpoint(weights) and weights.parent.name == Path(CHECKPOINT).parent.name:
        model = weights.parent.parent / MODEL
        if model.is_file():
            return f"weights: {weights} (the last checkpoint; the finished run's weights are {model})"
        return f"weights: {weights} (the last checkpoint: {model} is written when the run finishes)"
    return f"weights: {weights}"


def check_torch_file(path: Path) -> None:
    """Refuse, from its first bytes, a file that cannot be a PyTorch file (text, CSV, JSON, an image, empty), so that
    torch.load never parses it."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CifarkitError(f"cannot read {path}: {e.strerror or one_line(e)}") from e
    if head.startswith(TORCH_MAGIC):
        return
    raise CifarkitError(f"cannot read {path}: truncated or not a PyTorch file (it is {_file_kind(head)}); give a run "
                        f"folder, its {MODEL} or {CHECKPOINT}")


def _file_kind(head: bytes) -> str:
    if not head:
        return "empty"
    kind = next((name for magic, name in OTHER_FILES.items() if head.lstrip().startswith(magic)), None)
    if kind is None and b"\0" not in head:
        try:
            head.decode("utf-8")
            kind = "text"
        except UnicodeDecodeError:
            pass
    return kind or "neither a zip archive nor a pickle"
