"""The `sweep` and `compare` subcommands: their flags and what they run. optuna and scipy load only when they run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cifarkit.cli_flags import add_config_flags, count, given_config
from cifarkit.errors import pip_install

SWEEP_DESCRIPTION = f"""Run many trainings: the same recipe under several seeds, a grid of configs, or an Optuna search.

Each trial is a run folder SWEEP/<config>-seed<seed>, as `cifarkit train` writes it. The study lives in SWEEP/study.db
(sqlite, no server) or in --storage; the same command resumes a sweep after a crash or kill -9: finished trials are
kept, a trial with a checkpoint resumes exactly, and nothing runs twice. Several machines share one study by giving
the same --out name and --storage (a PostgreSQL URL). Every train flag applies to every trial (the DataLoader's
workers are --loader-workers here). Needs: {pip_install('sweep')}.

  cifarkit sweep --out sweeps/ls --grid label_smoothing=0,0.1 --seeds 0-2 --epochs 5
  cifarkit sweep --out sweeps/lr --search lr_max=1e-3:3e-2:log --trials 20 --lr-min 1e-5
  cifarkit sweep --out ls --grid label_smoothing=0,0.1 --seeds 0-9 --storage postgresql+psycopg://user:pw@db/cifar"""

COMPARE_DESCRIPTION = f"""Group runs by config (everything but the seed) and compare their final test accuracy.

Inputs: sweep folders, run folders, or runs.csv files (columns run, config, seed, final in %, and optionally best,
best_epoch, epochs, train_seconds: what compare writes). Writes compare.csv (config, n, mean, std, ci_low, ci_high,
min, max, best_epoch, train_seconds, p_value), runs.csv (one row per run), compare.png and compare.md into --out,
or into the sweep folder when one sweep folder is all it is given. Needs: {pip_install('sweep')}."""


def add_study_parsers(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train many runs (seeds, a grid, an Optuna search), resumable, several at once",
                       description=SWEEP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", dest="sweep_out", type=Path, required=True, metavar="SWEEP",
                   help="the sweep's folder; its name is the study's name")
    p.add_argument("--seeds", default=None, help="seeds of every config: 0,1,2 or 0-9 (default: 0)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a field's values (any training field, e.g. label_smoothing=0,0.1); repeat for the cross "
                   "product")
    p.add_argument("--search", action="append", default=[], metavar="FIELD=LOW:HIGH[:log]",
                   help="a number field for Optuna's TPE sampler to search; with --trials; median pruning at epoch "
                   "ends")
    p.add_argument("--trials", type=count(1), default=None, metavar="N", help="trials of a --search")
    p.add_argument("--workers", dest="sweep_workers", type=count(1), default=1, metavar="N",
                   help="runs at once on this machine, the CPUs split between them; on a GPU they share it "
                   "(default: 1)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="database URL of the study, shared by several machines (default: sqlite in SWEEP)")
    add_config_flags(p, [n for n in _train_fields() if n not in ("out", "seed", "workers")])
    p.add_argument("--loader-workers", dest="workers", type=count(0), default=argparse.SUPPRESS, metavar="N",
                   help="DataLoader workers of each run (train's --workers); default: fitted to the run's CPUs")

    p = sub.add_parser("compare", help="group runs by config: n, mean, std, 95%% interval, Welch's test",
                       description=COMPARE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="SWEEP_OR_RUN", help="sweep folders, run folders, runs.csv")
    p.add_argument("--out", type=Path, default=None, help="where to write; needed unless a single sweep folder is given, which is the default")
    p.add_argument("--baseline", default=None, metavar="CONFIG", help="the config every other is tested against "
                   "(Welch's t-test), as the table names it")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write the tables only")


def _train_fields() -> list[str]:
    import dataclasses

    from cifarkit.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def cmd_sweep(args: argparse.Namespace) -> int:
    from cifarkit.study.plan import make_plan

    plan = make_plan(given_config(args), seeds=args.seeds, grid=args.grid, search=args.search, trials=args.trials)
    try:
        from cifarkit.study.sweep import sweep_command
    except ModuleNotFoundError as e:
        from cifarkit.errors import CifarkitError

        raise CifarkitError(f"cifarkit sweep needs {e.name}: {pip_install('sweep')}") from e
    return sweep_command(plan, out=args.sweep_out, storage=args.storage, workers=args.sweep_workers)


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        import scipy  # noqa: F401 - the statistics
    except ModuleNotFoundError as e:
        from cifarkit.errors import CifarkitError

        raise CifarkitError(f"cifarkit compare needs scipy: {pip_install('sweep')}") from e
    from cifarkit.study.compare import compare_command

    print(compare_command(args.paths, out=args.out, baseline=args.baseline, plots=args.plots))
    return 0


STUDY_COMMANDS = {"sweep": cmd_sweep, "compare": cmd_compare}
