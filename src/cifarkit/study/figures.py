"""compare.png and compare.md: what `cifarkit compare` shows besides its table.

compare.png has two panels: the test accuracy per epoch of each config (the mean over its runs, with a band from the
lowest to the highest run), and the final test accuracy of every run by config (one point per run, the mean with its
95% t-interval as a bar). Inputs without per-epoch history (a runs.csv) get the second panel only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifarkit.atomic import write_text
from cifarkit.report.plots import save_figure
from cifarkit.report.render import to_markdown
from cifarkit.study.runs import RunRow
from cifarkit.study.stats import Group

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


def compare_figure(rows: list[RunRow], groups: list[Group]) -> Figure:
    curves = any(r.curve for r in rows)
    height = max(3.5, 0.32 * len(groups) + 1.8)
    fig = Figure(figsize=(13 if curves else 8, height), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(1, 1.1)) if curves else [None, fig.subplots()]
    colour = {g.config: COLOURS[i % len(COLOURS)] for i, g in enumerate(groups)}
    if curves:
        ax = axes[0]
        for g in groups:
            runs = [r.curve for r in rows if r.config == g.config and r.curve]
            if not runs:
                continue
            length = min(len(c) for c in runs)
            values = np.array([c[:length] for c in runs])
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, values.mean(axis=0), color=colour[g.config], marker="o", ms=3,
                    label=f"{g.config} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colour[g.config], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("test accuracy per epoch:\nmean over runs, band from min to max", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[1]
    order = sorted(groups, key=lambda g: g.mean)
    for y, g in enumerate(order):
        finals = [r.final for r in rows if r.config == g.config]
        jitter = np.linspace(-0.15, 0.15, len(finals)) if len(finals) > 1 else [0.0]
        ax.scatter(finals, y + np.asarray(jitter), s=28, color=colour[g.config], edgecolor="black", lw=0.5, zorder=3)
        if not math.isnan(g.ci_low):
            ax.plot([g.ci_low, g.ci_high], [y, y], color="black", lw=1.5, zorder=2)
        ax.plot([g.mean, g.mean], [y - 0.3, y + 0.3], color="black", lw=2, zorder=2)
    ax.set_yticks(range(len(order)), [f"{g.config}  (n={g.n})" for g in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlabel("final test accuracy (%)")
    ax.set_title("final test accuracy per run;\nmean (tick), 95% t-interval (bar)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_compare_png(rows: list[RunRow], groups: list[Group], path: Path) -> Path:
    return save_figure(compare_figure(rows, groups), path)


def write_compare_md(header: list[str], rows: list[list[str]], baseline: str | None, path: Path, notes: list[str], *,
                     image: str, curves: bool) -> Path:
    """compare.md: what the columns mean, compare.csv's table, the figure, and the runs left out."""
    n_runs = sum(int(r[header.index("n")]) for r in rows)
    caption = ("Left: test accuracy per epoch (mean over runs, band from min to max). Right: " if curves else "") + \
        "final test accuracy of every run, with each config's mean and 95% t-interval."
    blocks = [("h1", "Comparison of runs"),
              ("p", f"{n_runs} runs in {len(rows)} configs. Final test accuracy in %: n runs, their mean and sample "
                    "standard deviation, the 95% t-interval of the mean (`ci_low`, `ci_high`), min and max; "
                    "`best_epoch` is the median epoch of the best test accuracy, `train_seconds` the mean training "
                    "time. A config of one run has no spread or interval."
                    + (f" `p_value`: Welch's t-test of each config's final accuracies against `{baseline}` "
                       "(two-sided, unequal variances)." if baseline is not None else "")),
              ("table", header, rows),
              ("img", image, "accuracy by config", caption)]
    if notes:
        blocks.append(("p", "Left out: " + "; ".join(notes)))
    write_text(path, to_markdown(blocks))
    return path
