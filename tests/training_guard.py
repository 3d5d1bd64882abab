"""The guard that keeps `pytest -m "not slow"` from training: conftest.py runs the set-up and the call of every test
not marked slow under `training_refused`, where reaching the training fails with UnmarkedTestTrains."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

# Where training goes through: in a test not marked slow, a call of one of these with a network (a module of more than
# NETWORK_PARAMETERS parameters, or none passed: it builds its own) raises UnmarkedTestTrains, as does any optimizer
# step over a network and a Python interpreter started by the test, so `-m "not slow"` provably trains nothing.
# Each is "module.attribute"; modules that imported the attribute by name are patched too.
TRAINING_ENTRY_POINTS = ("cifarkit.train.train_step", "cifarkit.lr_finder.find_lr", "cifarkit.bench.run_bench")
NETWORK_PARAMETERS = 10_000  # the network has 6.57M; a test's toy model (a Linear layer, a tiny conv) far fewer
TESTS = Path(__file__).resolve().parent


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


class _NoPythonFromTests(subprocess.Popen):  # type: ignore[type-arg]
    """Popen that refuses a Python interpreter started by test code (the product's own helper processes pass)."""

    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        program = args[0] if isinstance(args, (list, tuple)) and args else args
        if isinstance(program, (str, Path)) and (Path(program).name.startswith("python") or program == sys.executable):
            frame = sys._getframe(1)
            while frame and frame.f_code.co_filename in (subprocess.__file__, __file__):
                frame = frame.f_back
            if frame and Path(frame.f_code.co_filename).resolve().is_relative_to(TESTS):
                _refuse(f"started {program}")
        super().__init__(args, *rest, **kwargs)


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
        mp.setattr(subprocess, "Popen", _NoPythonFromTests)

        def step_hook(optimizer: torch.optim.Optimizer, *_: object) -> None:
            n = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
            if n > NETWORK_PARAMETERS:
                _refuse(f"an optimizer step over {n:,} parameters")

        handle = register_optimizer_step_pre_hook(step_hook)
        try:
            yield
        finally:
            handle.remove()
