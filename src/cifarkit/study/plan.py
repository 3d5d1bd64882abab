"""What a sweep runs: `--seeds`, `--grid FIELD=V1,V2` and `--search FIELD=LOW:HIGH[:log]` read against TrainConfig's
fields and types, and the name of each trial's run folder (its config, then its seed).

Every value is parsed and every resulting config validated here, before any run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarkit.config import TrainConfig
from cifarkit.errors import CifarkitError

NOT_SWEPT = ("out", "seed", "extra", "data_fingerprint")  # --out is the sweep's, --seeds sets the seed
BOOLS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def field_types() -> dict[str, tuple[type, bool]]:
    """TrainConfig field -> (its scalar type, whether it may be None)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        args = typing.get_args(hints[f.name])
        scalar = next((a for a in args if a is not type(None)), hints[f.name])
        out[f.name] = (scalar, type(None) in args)
    return out


def _field(name: str, option: str) -> tuple[type, bool]:
    types = field_types()
    if name not in types or name in NOT_SWEPT:
        if name == "seed":
            raise CifarkitError(f"{option}: give seeds with --seeds, not as a field")
        known = ", ".join(n for n in types if n not in NOT_SWEPT)
        raise CifarkitError(f"{option}: {name!r} is not a training field (fields: {known})")
    return types[name]


def parse_value(name: str, text: str, option: str = "--grid") -> Any:
    """`text` as a value of TrainConfig field `name`: "0.1" for a float, "3" for an int, "true" for a bool, "none"
    where the field may be None."""
    scalar, optional = _field(name, option)
    text = text.strip()
    if optional and text.lower() == "none":
        return None
    try:
        if scalar is bool:
            return BOOLS[text.lower()]
        if scalar is int:
            return int(text)
        if scalar is float:
            return float(text)
    except (KeyError, ValueError):
        kind = {bool: "true or false", int: "a whole number", float: "a number"}[scalar]
        raise CifarkitError(f"{option} {name}: expected {kind}, got {text!r}") from None
    if not text:
        raise CifarkitError(f"{option} {name}: an empty value")
    return text


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2", "0-9" or a mix ("0-2,7") as seeds, in order, each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CifarkitError(f"--seeds: expected whole numbers or ranges like 0-9, got {part!r}")
        low, high = int(m[1]), int(m[2] or m[1])
        if high < low:
            raise CifarkitError(f"--seeds: the range {part} runs backwards")
        seeds.extend(range(low, high + 1))
    if not seeds:
        raise CifarkitError(f"--seeds is empty ({text!r}): give seeds like 0,1,2 or 0-9")
    if len(set(seeds)) != len(seeds):
        raise CifarkitError(f"--seeds names a seed twice: {text}")
    return tuple(seeds)


def parse_grid(items: list[str]) -> dict[str, tuple[Any, ...]]:
    """["label_smoothing=0,0.1", ...] -> {"label_smoothing": (0.0, 0.1)}; each field once, values distinct."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise CifarkitError(f"--grid {item!r}: expected FIELD=V1,V2,... (e.g. label_smoothing=0,0.1)")
        parsed = tuple(parse_value(name, v) for v in values.split(","))
        if name in grid:
            raise CifarkitError(f"--grid names {name} twice: give its values in one --grid {name}=...")
        if len(set(parsed)) != len(parsed):
            raise CifarkitError(f"--grid {name} repeats a value: {values}")
        grid[name] = parsed
    return grid


@dataclass(frozen=True)
class SearchSpace:
    """One `--search FIELD=LOW:HIGH[:log]`: a float or int field, sampled by Optuna between low and high."""

    name: str
    low: float
    high: float
    log: bool
    integer: bool


def parse_search(items: list[str]) -> tuple[SearchSpace, ...]:
    spaces: dict[str, SearchSpace] = {}
    for item in items:
        name, sep, rng = item.partition("=")
        name = name.strip().replace("-", "_")
        parts = rng.split(":")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise CifarkitError(f"--search {item!r}: expected FIELD=LOW:HIGH or FIELD=LOW:HIGH:log")
        scalar, _ = _field(name, "--search")
        if scalar not in (int, float):
            raise CifarkitError(f"--search {name}: only number fields can be searched, {name} is a {scalar.__name__}")
        low, high = (parse_value(name, p, "--search") for p in parts[:2])
        log = len(parts) == 3
        if low is None or high is None or not low < high:
            raise CifarkitError(f"--search {name}: LOW must be below HIGH, got {parts[0]}:{parts[1]}")
        if log and low <= 0:
            raise CifarkitError(f"--search {name}: a log range needs LOW > 0, got {low}")
        if name in spaces:
            raise CifarkitError(f"--search names {name} twice")
        spaces[name] = SearchSpace(name, low, high, log, scalar is int)
    return tuple(spaces.values())


def fmt_value(value: Any) -> str:
    """A config value as it appears in names and labels: 0.1, 1e-05, true, none; a path by its file name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "none"
    return Path(value).name if "/" in str(value) else str(value)


def label(overrides: dict[str, Any]) -> str:
    """The config part of a trial's name and of compare's groups: "label_smoothing=0.1,weight_decay=0.0005"."""
    return ",".join(f"{k}={fmt_value(v)}" for k, v in overrides.items())


def run_name(config_label: str, seed: int) -> str:
    """The run folder's name: its config (with characters that do not belong in a file name replaced), its seed."""
    safe = re.sub(r"[^\w.=,+-]", "_", config_label)
    return f"{safe}-seed{seed}" if safe else f"seed{seed}"


@dataclass(frozen=True)
class Ticket:
    """One trial of a grid: the run folder's name, the config's label and overrides, and the seed."""

    run: str
    recipe: str
    overrides: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class Plan:
    """A sweep's runs: the train flags given (`base`), the seeds, and either a grid or a search of `trials` trials."""

    base: dict[str, Any]
    seeds: tuple[int, ...]
    grid: dict[str, tuple[Any, ...]]
    search: tuple[SearchSpace, ...] = ()
    trials: int | None = None

    def tickets(self) -> list[Ticket]:
        """Every (config, seed) of the grid, configs in the grid's order, seeds innermost."""
        names = list(self.grid)
        out = []
        for values in itertools.product(*self.grid.values()):
            overrides = dict(zip(names, values))
            recipe = label(overrides)
            out.extend(Ticket(run_name(recipe, s), recipe, overrides, s) for s in self.seeds)
        return out

    def config(self, overrides: dict[str, Any], seed: int, out: Path) -> TrainConfig:
        return TrainConfig(**(self.base | overrides | {"seed": seed, "out": str(out)}))

    def devices(self) -> list[str]:
        """The --device of each trial's config, each once."""
        return list(dict.fromkeys(self.config(t.overrides, t.seed, Path(".")).device for t in self.tickets()))

    def signature(self) -> dict[str, Any]:
        """What two sweep commands must agree on to share a study (where the data lies and which device runs may
        differ between machines)."""
        base = {k: v for k, v in self.base.items() if k not in ("data", "device", "workers", "plots", "tensorboard")}
        return {"base": base, "seeds": list(self.seeds), "grid": {k: list(v) for k, v in self.grid.items()},
                "search": [dataclasses.asdict(s) for s in self.search], "trials": self.trials}


def make_plan(base: dict[str, Any], *, seeds: str | None, grid: list[str], search: list[str],
              trials: int | None) -> Plan:
    """The plan from the command's flags, every config checked (TrainConfig.validate) before anything runs."""
    seed_list = parse_seeds(seeds) if seeds is not None else (TrainConfig.seed,)
    grid_fields = parse_grid(grid)
    spaces = parse_search(search)
    both = sorted(set(base) & (set(grid_fields) | {s.name for s in spaces}))
    if both:
        raise CifarkitError(f"{both[0]} is given both as a flag and in --grid/--search: give it in one place")
    if spaces and grid_fields:
        raise CifarkitError("give --grid or --search, not both")
    if spaces and trials is None:
        raise CifarkitError("--search needs --trials N: how many configs to try")
    if trials is not None and not spaces:
        raise CifarkitError("--trials counts the trials of a --search; a grid runs every config")
    if spaces and len(seed_list) > 1:
        raise CifarkitError("--search runs one seed per trial: give one --seeds value, then compare the best "
                            "configs over several seeds with --grid")
    plan = Plan(base, seed_list, grid_fields, spaces, trials)
    corners = [plan.config({s.name: v for s, v in zip(spaces, values)}, seed_list[0], Path("."))
               for values in itertools.product(*[(s.low, s.high) for s in spaces])] if spaces else \
        [plan.config(t.overrides, t.seed, Path(".")) for t in plan.tickets()]
    for config in corners:
        config.validate()
    return plan


def plural(n: int, word: str) -> str:
    """`n word` or `n words`."""
    return f"{n} {word}{'s' * (n != 1)}"


def trials_said(plan: Plan) -> str:
    """The sweep's size as its first line says it: "4 trials (2 configs x 2 seeds)", "1 trial (1 config x 1 seed)",
    "20 search trials"."""
    if plan.search:
        return plural(plan.trials or 0, "search trial")
    total, seeds = len(plan.tickets()), len(plan.seeds)
    return f"{plural(total, 'trial')} ({plural(total // seeds, 'config')} x {plural(seeds, 'seed')})"
