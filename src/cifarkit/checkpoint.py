"""Checkpoints that lose nothing: atomic writes, safe loads, every RNG state, and a lock per run folder.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a file whose unpickling would run code is refused, not executed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.errors import CifarkitError

FORMAT = "cifarkit-checkpoint-v1"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a reader sees the old file or the new, never a torn
    one. On failure (disk full, read-only folder) the temp file is removed and the old file is left intact."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CifarkitError(f"cannot write {path}: {reason}; the previous file, if any, is intact") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        for orphan in (*self.path.parent.glob(".*.tmp-*"), *self.path.parent.glob("checkpoints/.*.tmp-*")):
            orphan.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
