"""Checkpoints that lose nothing: atomic writes, safe loads, every RNG state, and what may change on resume.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a file whose unpickling would run code is refused, not executed.
"""

from __future__ import annotations

import math
import pickle
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.atomic import atomic_write
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError, write_error
from cifarkit.run import CHECKPOINT, CONFIG, check_torch_file, read_config

FORMAT = "cifarkit-checkpoint-v2"  # v2: the partial epoch as named fields


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_write`; a failure (disk full, read-only folder) is one line, the old file intact."""
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except OSError as e:
        raise write_error(path, e) from e


def safe_torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CifarkitError(f"no checkpoint at {path}")
    check_torch_file(path)  # text, an image, empty: refused from its first bytes
    try:
        with warnings.catch_warnings():  # torch warns about a pickle's protocol before refusing it: keep one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with generic advice; the line that names the refused global or opcode comes later
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        first = next((s for s in lines[1:] if not s.startswith(("Please file", "Check the documentation"))),
                     lines[0] if lines else type(e).__name__)
        if "GLOBAL" in first or "global" in first:  # a class or function reference: what a code-running pickle needs
            raise CifarkitError(f"refused to load {path}: it holds objects other than tensors and plain data, "
                                f"which could run code ({first[:160]})") from e
        raise CifarkitError(f"cannot read {path}: not a PyTorch checkpoint ({first[:160]})") from e
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, IndexError...: what a torn file raises varies
        raise CifarkitError(f"cannot read {path}: truncated or not a PyTorch file ({type(e).__name__})") from e


def rng_state() -> dict[str, Any]:
    """Every global RNG: python, numpy, torch CPU and CUDA. (Data order and augmentation are derived from
    (seed, epoch, index) and need no state of their own.)"""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, **state, "rng": rng_state()}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check that it is a cifarkit checkpoint; RNG states are restored by the caller."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CifarkitError(f"{path} is not a cifarkit training checkpoint (no '{FORMAT}' marker)")
    return state


def restore_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """model.load_state_dict(state), a mismatch reported in one line that names the first offending keys."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:240]
        raise CifarkitError(f"{path} holds weights of another model ({detail})") from e


@dataclass
class PartialEpoch:
    """The sums of an epoch stopped mid-way (by a signal), so that the resumed epoch reports the same figures as an
    uninterrupted one. Summed over ranks; saved in the checkpoint under these names."""

    loss_sum: float  # sum of per-image losses
    correct: float  # images classified correctly
    seen: float  # images trained on
    seconds: float  # training time spent in the epoch so far
    skipped: int = 0  # steps the fp16 gradient scaler skipped (0 in checkpoints from before fp16)
    ce_sum: float = math.nan  # sum of per-image cross-entropies without label smoothing (unknown in older checkpoints)
    # Each rank's own (loss, cross-entropy, correct, seen), float32 values: each rank resumes from its own, so the sums
    # are added in the uninterrupted run's order and round alike (absent in older checkpoints: rank 0 takes the totals)
    per_rank: list[list[float]] | None = None

    @classmethod
    def from_dict(cls, values: dict[str, float] | None) -> "PartialEpoch | None":
        return None if values is None else cls(**values)


# What may change on --resume without changing what is trained; every other field must match the checkpoint.
RESUMABLE_FIELDS = frozenset({"data", "out", "device", "workers", "plots", "tensorboard", "eval_batch_size", "extra",
                              "compile"})


def resume_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved recipe, with only the fields that do not change what is trained taken from `given`. A field left at
    its "find it" or "auto" value (lr_min/lr_max None, precision or augment auto) keeps the saved one: a run keeps
    the augmentation pipeline that it recorded, whatever the device it resumes on."""
    merged = saved.to_dict()
    for key, value in given.to_dict().items():
        if key in RESUMABLE_FIELDS:
            merged[key] = value
        elif value != merged[key] and not (key in ("lr_min", "lr_max") and value is None) \
                and not (key in ("precision", "augment") and value == "auto"):
            raise CifarkitError(f"cannot resume: {key} is {value!r} here but {merged[key]!r} in the checkpoint; "
                                "a resumed run keeps its recipe (or start a new run with another --out)")
    return TrainConfig.from_dict(merged)


def saved_config(run: Path) -> TrainConfig:
    """The recipe of the run in `run`: its config.json or, when that is gone or damaged, the one in its checkpoint."""
    try:
        return read_config(run)
    except CifarkitError:  # missing or damaged: the checkpoint holds the same recipe
        pass
    if not (run / CHECKPOINT).is_file():
        raise CifarkitError(f"nothing to resume in {run}: no readable {CONFIG} and no checkpoint "
                            "(start the run without --resume)")
    return TrainConfig.from_dict(load_checkpoint(run / CHECKPOINT)["config"])
