"""`cifarkit compare`: runs grouped by config (everything but the seed), each group's statistics (study.stats), a
p-value against a baseline, and the files: compare.csv, runs.csv, compare.png, compare.md."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from cifarkit.atomic import atomic_write
from cifarkit.console import say
from cifarkit.errors import CifarkitError, one_line
from cifarkit.run import CONFIG
from cifarkit.run.claim import check_out_folder
from cifarkit.study.runs import RunRow, collect, write_runs_csv
from cifarkit.study.stats import Group, group_stats, welch_p

COLUMNS = ("config", "n", "mean", "std", "ci_low", "ci_high", "min", "max", "best_epoch", "train_seconds", "p_value")


def compare(rows: list[RunRow], baseline: str | None = None) -> list[Group]:
    """One Group per config: the baseline first, then the others in the order they first appear; p-values against
    `baseline` when given."""
    by_config: dict[str, list[RunRow]] = {}
    for r in rows:
        by_config.setdefault(r.config, []).append(r)
    if baseline is not None and baseline not in by_config:
        raise CifarkitError(f"--baseline {baseline!r} is none of the configs: {', '.join(map(repr, by_config))}")
    groups = []
    order = [baseline] * (baseline is not None) + [c for c in by_config if c != baseline]
    for config in order:
        runs = by_config[config]
        g = group_stats(config, [r.final for r in runs], [r.best_epoch for r in runs if r.best_epoch is not None],
                        [r.train_seconds for r in runs if r.train_seconds is not None])
        if baseline is not None and config != baseline:
            g.p_value = welch_p([r.final for r in runs], [r.final for r in by_config[baseline]])
        groups.append(g)
    return groups


def _fmt(value: float | int, digits: int = 2) -> str:
    if isinstance(value, int):
        return str(value)
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def table_rows(groups: list[Group]) -> list[list[str]]:
    """compare.csv's rows as text: accuracies with 2 decimals, p with 3 significant digits."""
    return [[g.config, str(g.n), _fmt(g.mean), _fmt(g.std), _fmt(g.ci_low), _fmt(g.ci_high), _fmt(g.min), _fmt(g.max),
             _fmt(g.best_epoch, 1), _fmt(g.train_seconds, 1), "" if math.isnan(g.p_value) else f"{g.p_value:.3g}"]
            for g in groups]


def format_table(groups: list[Group], baseline: str | None) -> str:
    """The table as aligned text for the terminal."""
    header = list(COLUMNS if baseline is not None else COLUMNS[:-1])
    body = [row[:len(header)] for row in table_rows(groups)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    return "\n".join(lines)


def write_csv(groups: list[Group], path: Path) -> None:
    with atomic_write(path, text=True) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(table_rows(groups))


def compare_command(paths: list[Path], *, out: Path | None, baseline: str | None, plots: bool = True) -> str:
    """Read the runs, write OUT/compare.csv, OUT/runs.csv, OUT/compare.png and OUT/compare.md; return the table.

    OUT is --out; without it, a sweep folder given alone (run folders and runs.csv files need --out)."""
    if out is None:
        if len(paths) != 1 or not paths[0].is_dir() or (paths[0] / CONFIG).is_file():
            raise CifarkitError("give --out: compare writes into the sweep folder when that is all it is given, and "
                                "needs --out for run folders, runs.csv files or several folders")
        out = paths[0]
    check_out_folder(out, what="compare's files")
    rows, notes = collect(paths)
    groups = compare(rows, baseline)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarkitError(f"cannot make --out {out}: {e.strerror or one_line(e)}; choose another --out") from None
    write_csv(groups, out / "compare.csv")
    write_runs_csv(rows, out / "runs.csv")
    if plots:
        from cifarkit.study.figures import write_compare_md, write_compare_png

        header = list(COLUMNS if baseline is not None else COLUMNS[:-1])
        write_compare_png(rows, groups, out / "compare.png")
        write_compare_md(header, [r[:len(header)] for r in table_rows(groups)], baseline, out / "compare.md", notes,
                         image="compare.png", curves=any(r.curve for r in rows))
    for note in notes:
        say(note)
    written = "compare.csv, runs.csv" + (", compare.png, compare.md" if plots else "")
    return format_table(groups, baseline) + f"\n\nfinal test accuracy in %, 95% t-interval; wrote {written} in {out}"
