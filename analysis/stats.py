"""Statistics over seeds: the mean with a t-distribution confidence interval, and a paired test between two arms.

Seeds are few (3 by default), so intervals use Student's t with n - 1 degrees of freedom rather than a normal
or a bootstrap: half width = t_{(1 + c) / 2, n - 1} * s / sqrt(n), s the sample standard deviation (ddof 1).

The power of the paired test: with n pairs whose differences have standard deviation sd, a true mean difference
delta gives T ~ noncentral t(df = n - 1, nc = delta * sqrt(n) / sd), and the two-sided test at level alpha rejects
when |T| > t_{1 - alpha / 2, n - 1}. The detectable difference is the delta whose power is 80 %.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


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
    detectable: float = math.nan  # the smallest true difference this many pairs detect with 80 % power (alpha 0.05)


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
    sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
    return PairedDiff(ci.mean, ci.half_width, p, len(d), detectable_difference(sd, len(d)))


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test: P(|T| > t_{1-alpha/2, n-1}), T ~ nct(n - 1, delta * sqrt(n) / sd)."""
    if n < 2 or not sd > 0:
        raise ValueError(f"paired_power needs n >= 2 pairs and sd > 0, got n={n}, sd={sd}")
    df, noncentrality = n - 1, delta * math.sqrt(n) / sd
    critical = stats.t.ppf(1 - alpha / 2, df)
    # P(T < -c | nc) = P(T > c | -nc): scipy's lower tail is nan far out, its upper tail is not
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true mean difference the paired t-test over n pairs detects with probability ``power``: the root in
    delta of paired_power(delta, sd, n, alpha) = power. 0 when sd = 0 (every pair differs by the same amount);
    nan when n < 2 or sd is nan. For large n it tends to (z_{1-alpha/2} + z_{power}) * sd / sqrt(n)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while paired_power(high, sd, n, alpha) < power:  # power rises with delta; bracket the root
        high *= 2
    return float(optimize.brentq(lambda delta: paired_power(delta, sd, n, alpha) - power, 0.0, high, xtol=1e-12))
