"""The statistics of a group of runs' final test accuracies, from scipy.

For n runs: the mean, the sample standard deviation (n - 1 in the denominator), the 95% t-interval of the mean
(mean +- t(0.975, n - 1) * std / sqrt(n)), min and max; the median epoch of the best test accuracy and the mean train
time. Against a baseline: Welch's two-sided p-value (scipy.stats.ttest_ind, equal_var=False), which does not assume
equal spreads. A group of one run has no spread, interval or p-value.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass
class Group:
    """The statistics of one config's runs (accuracies in %)."""

    config: str
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    min: float
    max: float
    best_epoch: float
    train_seconds: float
    p_value: float = math.nan


def group_stats(config: str, finals: list[float], best_epochs: list[int] | None = None,
                train_seconds: list[float] | None = None) -> Group:
    from scipy import stats

    n = len(finals)
    mean = statistics.fmean(finals)
    std = statistics.stdev(finals) if n > 1 else math.nan
    low, high = (stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n)) if n > 1 and std > 0
                 else (mean, mean) if n > 1 else (math.nan, math.nan))
    return Group(config, n, mean, std, float(low), float(high), min(finals), max(finals),
                 statistics.median(best_epochs) if best_epochs else math.nan,
                 statistics.fmean(train_seconds) if train_seconds else math.nan)


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p-value for equal means of a and b; NaN when either has fewer than two runs."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
