"""The start of a run: the data it trains on, checked against what a resumed run recorded (the run folder itself is
claimed by cifarkit.run.claim_run_folder)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cifarkit.checkpoint import load_checkpoint, resume_config
from cifarkit.config import TrainConfig
from cifarkit.data import Cifar10, check_same_data, data_fingerprint, recorded_data, resolve_data
from cifarkit.errors import CifarkitError
from cifarkit.run import CHECKPOINT, MODEL, is_finished, read_metrics


def run_data(config: TrainConfig, data: Cifar10 | str | os.PathLike[str] | None, resume: bool,
             run: Path) -> tuple[TrainConfig, Cifar10]:
    """The data a run trains on, and `config` recording it: `data` its absolute path ("synthetic"; None for data made
    or cut down in memory, which its path would not give back), `data_fingerprint` its arrays' sha256.

    A new run: `data` (a Cifar10, a path or "synthetic"), else config.data, else $CIFARKIT_DATA, the cache, a
    download. A resumed run: exactly the data it recorded, never what $CIFARKIT_DATA or the cache hold now; data given
    anyway (`data`, or a config.data other than the recorded path) must have the recorded fingerprint. A resume is
    refused, before the data loads, in this order: no checkpoint, a damaged one, a changed recipe, a finished run (a
    run stopped after its last checkpoint but before its final weights resumes, and writes them).
    """
    if not resume:
        source = data if isinstance(data, Cifar10) else resolve_data(data if data is not None else config.data)
        path = source.path if source.fingerprint else None  # a loader's whole set: its path gives these arrays back
        return replace(config, data=path, data_fingerprint=data_fingerprint(source)), source
    checkpoint = run / CHECKPOINT
    if not checkpoint.is_file():  # stopped before its first epoch ended: nothing to lose
        if _finished(run):  # a finished run copied without its checkpoints
            raise _finished_error(run, read_metrics(run)["epochs"])
        hint = "it is written at the end of the first epoch"
        raise CifarkitError(f"nothing to resume in {run}: no checkpoint yet ({hint}); start the run again without "
                            "resume=True", cli=f"nothing to resume in {run}: no checkpoint yet ({hint}); start the run "
                            "again without --resume")
    state = load_checkpoint(checkpoint)  # a damaged checkpoint: refused first
    saved = TrainConfig.from_dict(state["config"])
    resume_config(saved, replace(config, data_fingerprint=saved.data_fingerprint))  # then a changed recipe
    if state["epoch"] >= saved.epochs and _finished(run):  # then a run with nothing left to train or write
        raise _finished_error(run, saved.epochs)
    owner = f"run {run}"
    given = data if data is not None else config.data if config.data not in (None, saved.data) else None
    if given is None:
        source = recorded_data(saved.data, saved.data_fingerprint, owner=owner)
    else:
        source = given if isinstance(given, Cifar10) else resolve_data(given)
        check_same_data(source, saved.data_fingerprint, owner=owner)
    path = source.path if source.fingerprint else saved.data  # the same data, perhaps moved: where it is now
    return replace(config, data=path, data_fingerprint=saved.data_fingerprint), source


def _finished(run: Path) -> bool:
    """Whether `run` holds a finished run; a damaged metrics.json is a finish to write again (resume rewrites it)."""
    try:
        return is_finished(run)
    except CifarkitError:
        return False


def _finished_error(run: Path, epochs: int) -> CifarkitError:
    what = f"nothing to resume in {run}: its {epochs}-epoch run is finished ({MODEL} is written)"
    return CifarkitError(f"{what}; more epochs are a new run with another out (cifarkit.report.write_report(run) "
                         "redraws its report)", cli=f"{what}; `cifarkit report {run}` redraws its report, and more epochs are a new run in "
                             "another --out")
