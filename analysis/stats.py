"""Statistics over seeds: the mean with a t-distribution confidence interval, and a paired test between two arms.

Seeds are few (3 by default), so intervals use Student's t with n - 1 degrees of freedom rather than a normal
or a bootstrap: half width = t_{(1 + c) / 2, n - 1} * s / sqrt(n), s the sample standard deviation (ddof 1).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds and the half width of its confidence interval (nan when n < 2)."""

    mean: float
    half_width: float
    n: int


@dataclass(frozen=True)
class PairedDiff:
    """Arm minus baseline over seeds present in both: mean difference, its CI half width, paired t-test p-value."""

    mean: float
    half_width: float
    p_value: float
    n: int


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and t-interval half width: t_{(1+c)/2, n-1} * std(ddof=1) / sqrt(n); nan half width for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    if n == 1:
        return MeanCI(float(x[0]), math.nan, 1)
    t = stats.t.ppf((1 + confidence) / 2, df=n - 1)
    return MeanCI(float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(n)), n)


def paired_diff(arm: dict[int, float], baseline: dict[int, float], confidence: float = 0.95) -> PairedDiff:
    """Paired difference over the seeds both arms have: d_s = arm_s - baseline_s, mean_ci(d), ttest_rel p-value.

    The p-value is two-sided (Student's paired t-test, scipy.stats.ttest_rel); nan with fewer than two pairs or
    when every difference is identical (the test statistic is undefined then).
    """
    seeds = sorted(set(arm) & set(baseline))
    d = np.array([arm[s] - baseline[s] for s in seeds], dtype=float)
    ci = mean_ci(d, confidence)
    p = math.nan
    if len(d) >= 2 and np.ptp(d) > 0:
        p = float(stats.ttest_rel([arm[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    return PairedDiff(ci.mean, ci.half_width, p, len(d))
