"""Confidence intervals for means and paired differences (Student's t).

The study compares precisions on the same seeds (same initial weights, same
data order, same evaluation set), so the comparison of precision A with FP32
is a paired one: the per-seed differences `A_s - FP32_s` are analysed as one
sample, which removes the seed-to-seed variation that both runs share.

The t quantile is computed here (regularized incomplete beta function by
continued fraction, then bisection) so the package needs no SciPy; the tests
check it against `scipy.stats.t` when SciPy is installed.

Example:

>>> interval = mean_interval([0.4401, 0.4405, 0.4398])
>>> round(interval.mean, 4), interval.n
(0.4401, 3)
>>> round(paired_difference([0.4412, 0.4415], [0.4401, 0.4405]).mean, 5)
0.00105
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """A sample mean with a two-sided t confidence interval.

    Attributes:
        mean: the sample mean.
        low, high: the interval bounds (NaN when n < 2).
        half_width: `(high - low) / 2`.
        std: the sample standard deviation (ddof=1; NaN when n < 2).
        n: the sample size.
        confidence: the confidence level, e.g. 0.95.
    """
    mean: float
    low: float
    high: float
    half_width: float
    std: float
    n: int
    confidence: float

    def as_dict(self):
        return dataclasses.asdict(self)


def _betacf(a, b, x, max_iter=300, eps=1e-15):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a, b, x):
    """Regularized incomplete beta function I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """CDF of Student's t distribution with `df` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}.")
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """Inverse CDF of Student's t distribution.

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, > 0.

    Returns:
        The t with `t_cdf(t, df) == p` (to ~1e-12 relative).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}.")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_interval(values, confidence=0.95):
    """Mean of a sample with its two-sided t confidence interval.

    Args:
        values: 1-D sequence of floats (at least one).
        confidence: level in (0, 1).

    Returns:
        An `Interval`; with a single value, the bounds, std and half-width
        are NaN (no variance can be estimated).
    """
    x = np.asarray(values, np.float64).ravel()
    if x.size == 0:
        raise ValueError("Cannot compute an interval of an empty sample.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    mean = float(np.mean(x))
    if x.size < 2:
        nan = float("nan")
        return Interval(mean, nan, nan, nan, nan, 1, confidence)
    std = float(np.std(x, ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * std / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, half, std, int(x.size),
                    confidence)


def paired_difference(values, baseline, confidence=0.95):
    """Mean of the paired differences `values[i] - baseline[i]` with its CI.

    Args:
        values: per-seed results of the compared run.
        baseline: per-seed results of the baseline, in the same seed order.
        confidence: level in (0, 1).

    Returns:
        The `Interval` of the differences.

    Raises:
        ValueError: if the two samples differ in length.
    """
    a = np.asarray(values, np.float64).ravel()
    b = np.asarray(baseline, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"Paired samples must have the same length, got {a.size} and "
            f"{b.size}.")
    return mean_interval(a - b, confidence)
