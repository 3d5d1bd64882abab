"""Runs as rows for `cifarkit compare`: read from run folders (a sweep's, or any), or from a runs.csv export.

A run folder gives its config (config.json), final and best test accuracy, epochs and train time (metrics.json) and
its accuracy curve (history.csv). Its group is its config without what does not change what is trained (the seed,
the folder, where the data lies, plots, loader workers, ...), and without the LRs that a range test found rather
than the user gave (they differ seed to seed); peak_epoch counts only where it is not the default for the run's
epochs. A group is named by the fields in which the runs differ: "label_smoothing=0.1".

runs.csv, one row per run, is what compare writes beside compare.csv and what it reads back: the columns `run`,
`config`, `seed`, `final` (%) and, optionally, `best` (%), `best_epoch`, `epochs`, `train_seconds`; other columns
are kept as they are.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarkit.atomic import atomic_write
from cifarkit.config import ASSIGNMENT_EPOCHS, ASSIGNMENT_PEAK_EPOCH
from cifarkit.errors import CifarkitError
from cifarkit.run import (CONFIG, HISTORY, LR_FINDER, is_finished, read_config, read_metrics, read_optional_json,
                          read_rows)
from cifarkit.study.plan import fmt_value

NOT_RECIPE = ("out", "seed", "data", "data_fingerprint", "extra", "workers", "plots", "tensorboard", "eval_batch_size",
              "device", "compile")  # data: its fingerprint stands for it, wherever it lies
CORE_COLUMNS = ("run", "config", "seed", "final", "best", "best_epoch", "epochs", "train_seconds")


@dataclass
class RunRow:
    """One run: accuracies in %, `curve` its test accuracy per epoch (empty from a runs.csv)."""

    run: str
    seed: int | None
    final: float
    best: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    config: str = ""
    curve: list[float] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def final_accuracy(run: Path) -> float:
    return float(read_metrics(run)["final_test_accuracy"])


def history_column(run: Path, column: str) -> list[float]:
    """One column of RUN/history.csv, a float per finished epoch (empty when there is no file yet, or it cannot be
    read now: a sweep reads it while the run writes it)."""
    try:
        return [float(row[column]) for row in read_rows(run / HISTORY) if row.get(column)]
    except CifarkitError:
        return []


def found_lrs(run: Path, config: dict[str, Any]) -> list[str]:
    """Which of lr_min and lr_max a range test found: as a sweep recorded it, else those equal to the suggestions in
    the run's own lr_finder.json (train's range test fills only the LRs not given)."""
    extra = config.get("extra") or {}
    if "lrs_found" in extra:
        return list(extra["lrs_found"])
    suggested = read_optional_json(run / LR_FINDER) or {}
    return [name for name in ("lr_min", "lr_max") if name in suggested and suggested[name] == config.get(name)]


def recipe_of(config: dict[str, Any], found: list[str]) -> dict[str, Any]:
    """What a run trained, for grouping: its config without NOT_RECIPE, without the LRs a range test `found`, and
    without a default peak_epoch."""
    recipe = {k: v for k, v in config.items() if k not in NOT_RECIPE}
    recipe["data"] = config.get("data_fingerprint") or config.get("data")
    for name in found:
        recipe[name] = "range test"
    epochs = config.get("epochs", ASSIGNMENT_EPOCHS)
    if recipe.get("peak_epoch") == ASSIGNMENT_PEAK_EPOCH * epochs / ASSIGNMENT_EPOCHS:
        recipe.pop("peak_epoch")
    return recipe


def read_run(run: Path) -> RunRow:
    """A finished run folder as a row (compare's inputs are finished runs)."""
    config = read_config(run).to_dict()
    metrics = read_metrics(run)
    curve = [100 * a for a in history_column(run, "test_acc")]
    best_epoch = max(range(len(curve)), key=curve.__getitem__) + 1 if curve else None
    return RunRow(run=run.name, seed=config.get("seed"), final=100 * metrics["final_test_accuracy"],
                  best=100 * metrics["best_test_accuracy"], best_epoch=best_epoch,
                  epochs=metrics.get("epochs_completed"), train_seconds=metrics.get("train_seconds"), curve=curve,
                  recipe=recipe_of(config, found_lrs(run, config)))


def _number(text: str | None, kind: type = float) -> Any:
    return kind(float(text)) if text not in (None, "") else None


def read_runs_csv(path: Path) -> list[RunRow]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("run", "config", "seed", "final") if c not in (reader.fieldnames or [])]
            if missing:
                raise CifarkitError(f"{path} has no column {missing[0]!r}: a runs.csv needs run, config, seed, "
                                    "final (see `cifarkit compare --help`)")
            rows = []
            for line, r in enumerate(reader, start=2):
                try:
                    rows.append(RunRow(run=r["run"], config=r["config"], seed=_number(r["seed"], int),
                                       final=float(r["final"]), best=_number(r.get("best")),
                                       best_epoch=_number(r.get("best_epoch"), int),
                                       epochs=_number(r.get("epochs"), int),
                                       train_seconds=_number(r.get("train_seconds")),
                                       extra={k: v for k, v in r.items() if k not in CORE_COLUMNS}))
                except (TypeError, ValueError) as e:
                    raise CifarkitError(f"{path}, line {line}: {e}") from e
            return rows
    except OSError as e:
        raise CifarkitError(f"cannot read {path}: {e}") from e


def collect(paths: list[Path]) -> tuple[list[RunRow], list[str]]:
    """The finished runs under `paths` (run folders, sweep folders, runs.csv files), named by config; and notes on
    the run folders left out (not finished: pruned, stopped or still going)."""
    folders: list[Path] = []
    rows: list[RunRow] = []
    notes: list[str] = []
    for path in paths:
        if path.is_file() and path.suffix == ".csv":
            rows.extend(read_runs_csv(path))
        elif (path / CONFIG).is_file():
            folders.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if (p / CONFIG).is_file())
            if not found:
                raise CifarkitError(f"{path} holds no run folders: give a sweep folder, run folders or a runs.csv")
            folders.extend(found)
        else:
            raise CifarkitError(f"no run folder, sweep folder or runs.csv at {path}")
    runs = []
    for folder in folders:
        if is_finished(folder):
            runs.append(read_run(folder))
        else:
            done = len(history_column(folder, "test_acc"))
            notes.append(f"left out {folder}: not finished ({done} epoch{'s' * (done != 1)} done: pruned, stopped or "
                         "still going)")
    name_groups(runs)
    rows.extend(runs)
    if not rows:
        raise CifarkitError("no finished runs to compare" + (f" ({len(notes)} unfinished)" if notes else ""))
    return rows, notes


def name_groups(rows: list[RunRow]) -> None:
    """Set each row's `config`: the recipe fields in which the rows differ, "k=v,k=v" ("all runs" when none do)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.recipe))
    varying = [k for k in keys if len({json.dumps(r.recipe.get(k), sort_keys=True) for r in rows}) > 1]
    for r in rows:
        shown = {k: r.recipe.get(k) for k in varying}
        if "data" in shown:  # a fingerprint says little to a reader: its first characters
            shown["data"] = str(shown["data"])[:8]
        r.config = ",".join(f"{k}={fmt_value(v)}" for k, v in shown.items()) or "all runs"


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_runs_csv(rows: list[RunRow], path: Path) -> None:
    """One row per run: CORE_COLUMNS (accuracies in %), then the other columns the inputs had."""
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    with atomic_write(path, text=True) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*CORE_COLUMNS, *extra])
        for r in rows:
            w.writerow([r.run, r.config, _cell(r.seed, 0), _cell(r.final, 2), _cell(r.best, 2), _cell(r.best_epoch, 0),
                        _cell(r.epochs, 0), _cell(r.train_seconds, 1), *(r.extra.get(k, "") for k in extra)])
