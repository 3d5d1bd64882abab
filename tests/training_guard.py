"""The guard that keeps `pytest -m "not slow"` from training: conftest.py runs the set-up and the call of every test
not marked slow under `training_refused`, where reaching the training fails with UnmarkedTestTrains."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import cifarkit

# Where training goes through: in a test not marked slow, a call of one of these with a network (a module of more than
# NETWORK_PARAMETERS parameters, or none passed: it builds its own) raises UnmarkedTestTrains, as does any optimizer
# step over a network and a Python interpreter started by the test, so `-m "not slow"` provably trains nothing.
# Each is "module.attribute"; modules that imported the attribute by name are patched too.
TRAINING_ENTRY_POINTS = ("cifarkit.train.train_step", "cifarkit.lr_finder.range_test", "cifarkit.bench.run_bench")
NETWORK_PARAMETERS = 10_000  # the network has 6.57M; a test's toy model (a Linear layer, a tiny conv) far fewer
TESTS = Path(__file__).resolve().parent
PRODUCT = Path(cifarkit.__file__).resolve().parent


class UnmarkedTestTrains(RuntimeError):
    """A test that is not marked slow trained a network, or started a Python interpreter."""


def _refuse(what: str) -> None:
    raise UnmarkedTestTrains(f"{what} in a test not marked slow: mark it pytest.mark.slow, or make the fixture that "
                             "trains with helpers.slow_fixture")


def _parameters(values: Iterator[object]) -> int | None:
    """The parameters of the biggest torch module among `values` (None: no module among them)."""
    sizes = [sum(p.numel() for p in v.parameters()) for v in values if isinstance(v, torch.nn.Module)]
    return max(sizes) if sizes else None


def _guarded(target: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: object, **kwargs: object) -> Any:
        n = _parameters(iter([*args, *kwargs.values()]))
        if n is None or n > NETWORK_PARAMETERS:
            _refuse(f"{target} ({'its own network' if n is None else f'{n:,} parameters'})")
        return function(*args, **kwargs)
    return guarded


def _no_python_from_tests(execute_child: Callable[..., Any]) -> Callable[..., Any]:
    """Popen's process start, refusing a Python interpreter started on a test's behalf (by test code, directly or
    through a library: a notebook kernel from jupyter_client, torchrun from subprocess, however the library imported
    Popen) and one the product starts that runs the product or torch (`-m cifarkit...`: a training worker). The
    product's other helpers (an isolated image decoder) pass."""

    def start(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> Any:  # type: ignore[type-arg]
        argv = [os.fsdecode(a) for a in args] if isinstance(args, (list, tuple)) else [os.fsdecode(args)]
        if argv and (Path(argv[0]).name.startswith("python") or argv[0] == sys.executable):
            module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
            frame = sys._getframe(1)
            while frame:  # the nearest caller that is the product's or a test's decides
                path = Path(frame.f_code.co_filename).resolve()
                if path.is_relative_to(PRODUCT):
                    if module.split(".")[0] in ("cifarkit", "torch"):
                        _refuse(f"the product started {argv[0]} -m {module}")
                    break
                if path.is_relative_to(TESTS) and path != Path(__file__).resolve():
                    _refuse(f"started {argv[0]}")
                frame = frame.f_back
        return execute_child(self, args, *rest, **kwargs)

    return start


@contextlib.contextmanager
def training_refused(test_module: object) -> Iterator[None]:
    """The guard, for one phase of one test (`test_module`: the test's module, whose imported names are patched too)."""
    with pytest.MonkeyPatch.context() as mp:
        holders = [m for name, m in list(sys.modules.items()) if name.startswith("cifarkit") or m is test_module]
        for target in TRAINING_ENTRY_POINTS:
            module_name, _, attribute = target.rpartition(".")
            original = getattr(importlib.import_module(module_name), attribute)
            for module in holders:
                for name, value in list(vars(module).items()):
                    if value is original:
                        mp.setattr(module, name, _guarded(target, original))
        mp.setattr(subprocess.Popen, "_execute_child", _no_python_from_tests(subprocess.Popen._execute_child))

        def step_hook(optimizer: torch.optim.Optimizer, *_: object) -> None:
            n = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
            if n > NETWORK_PARAMETERS:
                _refuse(f"an optimizer step over {n:,} parameters")

        handle = register_optimizer_step_pre_hook(step_hook)
        try:
            yield
        finally:
            handle.remove()
