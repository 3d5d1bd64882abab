"""Checkpoints that lose nothing: atomic writes, safe loads, every RNG state, and a lock per run folder.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a file whose unpickling would run code is refused, not executed.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import pickle
import random
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.atomic import TEMP_GLOB, atomic_write
from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError
from cifarkit.models import CustomResNet, build_model

FORMAT = "cifarkit-checkpoint-v2"  # v2: the partial epoch as named fields


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_write`; a failure (disk full, read-only folder) is one line, the old file intact."""
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except OSError as e:
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CifarkitError(f"cannot write {path}: {reason}; the previous file, if any, is intact") from e


def safe_torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CifarkitError(f"no checkpoint at {path}")
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
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
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
        return TrainConfig.load(run / "config.json")
    except (OSError, ValueError, TypeError):  # missing, unreadable, or not JSON of a config
        pass
    if not (run / "checkpoints" / "last.pt").is_file():
        raise CifarkitError(f"nothing to resume in {run}: no readable config.json and no checkpoint "
                            "(start the run without --resume)")
    return TrainConfig.from_dict(load_checkpoint(run / "checkpoints" / "last.pt")["config"])


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """Weights and the run's config from a run folder, its model.pt, or a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    state: Any = safe_torch_load(path)
    config = None
    if isinstance(state, dict) and "model" in state and "config" in state:  # a training checkpoint
        config, state = TrainConfig.from_dict(state["config"]), state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CifarkitError(f"{path} holds no model weights (expected a state dict or a cifarkit checkpoint)")
    if config is None:
        run_config = next((p / "config.json" for p in (path.parent, path.parent.parent)
                           if (p / "config.json").is_file()), None)
        config = TrainConfig.load(run_config) if run_config else TrainConfig()
    return state, config


def load_model(path: Path, device: torch.device) -> tuple[CustomResNet, TrainConfig]:
    """The trained network (eval mode, on `device`) and its run's config, from what `load_weights` reads."""
    state, config = load_weights(path)
    fc = state.get("fc.weight")
    model = build_model(int(fc.shape[0]) if fc is not None else 10)
    restore_weights(model, state, path)
    return model.to(device).eval(), config


class RunLock:
    """An exclusive flock on RUN/.lock: a second run on the same folder is refused; the kernel drops the lock when
    its holder dies, even by kill -9, so a crash never leaves the folder stuck."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only or full disk, no permission: say so before any work is done
            raise CifarkitError(f"cannot use {self.path.parent} as a run folder: {e.strerror or e}; "
                                "choose a writable --out") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CifarkitError(f"another cifarkit run (pid {holder}) is using {self.path.parent}; "
                                "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        # Temp files of a writer killed mid-write (kill -9, power loss): only a lock holder writes here, so any that
        # exist now are orphans, and each can be a checkpoint's size.
        for orphan in (*self.path.parent.glob(TEMP_GLOB), *self.path.parent.glob(f"checkpoints/{TEMP_GLOB}")):
            orphan.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
