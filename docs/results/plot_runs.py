"""Summary plots of runs.csv: final test accuracy by recipe change, one point per seed, the mean marked.

    python docs/results/plot_runs.py                  # rewrites runs_24_epochs.png and runs_5_epochs.png here

Reads only runs.csv (csv + matplotlib, no pandas), so it runs with any cifarkit environment.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
MACHINE_SHORT = {"1x H100 80GB HBM3, bf16": "H100", "2-core AMD EPYC, AVX512-BF16, bf16": "CPU bf16",
                 "2-core AMD EPYC, AVX2, fp32": "CPU fp32"}


def read_runs(path: Path) -> list[dict[str, str]]:
    """The rows of runs.csv as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def group_label(row: dict[str, str], with_machine: bool) -> str:
    """The y-axis label of a run's group: its recipe change (and machine, where machines are mixed).

    --compile is left out: it changes how the step is executed, not what is trained.
    """
    parts = [p for p in row["recipe_change"].split("; ") if p not in ("none", "--compile")]
    change = "; ".join(parts) or "the recipe as is"
    return f"{change}  [{MACHINE_SHORT.get(row['machine'], row['machine'])}]" if with_machine else change


def plot_accuracy_by_recipe(rows: Sequence[dict[str, str]], title: str, *, with_machine: bool = False) -> Figure:
    """One row of points per recipe change: final test accuracy of each seed (colour = seed), a bar at the mean of
    groups with several seeds, the mean's value above it.

    Groups are ordered by mean accuracy, best at the top.
    """
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        groups[group_label(row, with_machine)].append((int(row["seed"]), float(row["final"])))
    order = sorted(groups, key=lambda g: sum(a for _, a in groups[g]) / len(groups[g]))
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(order) + 1.6), layout="constrained")
    for y, name in enumerate(order):
        points = groups[name]
        mean = sum(a for _, a in points) / len(points)
        if len(points) > 1:
            ax.plot([mean, mean], [y - 0.3, y + 0.3], color="black", lw=2, zorder=2)
        for seed, acc in points:
            ax.scatter(acc, y, s=42, color=SEED_COLOURS[seed % len(SEED_COLOURS)], edgecolor="black", lw=0.5,
                       zorder=3)
        ax.annotate(f"{mean:.2f}", (mean, y + 0.33), ha="center", va="bottom", fontsize=7)
    ax.set_yticks(range(len(order)), [f"{name}  (n={len(groups[name])})" for name in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlabel("final test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    seeds = sorted({int(row["seed"]) for row in rows})
    handles = [plt.Line2D([], [], ls="", marker="o", markeredgecolor="black", markeredgewidth=0.5,
                          color=SEED_COLOURS[s % len(SEED_COLOURS)], label=f"seed {s}") for s in seeds]
    handles.append(plt.Line2D([], [], color="black", lw=2, label="mean"))
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return fig


def main() -> None:
    rows = read_runs(HERE / "runs.csv")
    long = [r for r in rows if r["epochs"] == "24"]
    short = [r for r in rows if r["epochs"] == "5"]
    figures = {
        "runs_24_epochs.png": plot_accuracy_by_recipe(
            long, "24 epochs (peak at epoch 5), 1x H100 80GB: final test accuracy by recipe change"),
        "runs_5_epochs.png": plot_accuracy_by_recipe(
            short, "5 epochs (peak at epoch 1.04): final test accuracy by recipe change [machine]",
            with_machine=True),
    }
    for name, fig in figures.items():
        fig.savefig(HERE / name, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
