"""Confidence intervals for means and paired differences (Student's t).

The precisions of a study are compared on the same seeds (same initial
weights, same data order, same evaluation set), so the comparison of a
precision with FP32 is a paired one: the per-seed differences
`value_s - fp32_s` are analysed as one sample, which removes the
seed-to-seed variation that both runs share. Quantiles come from
`scipy.stats.t`.

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
from scipy import stats as scipy_stats

#: The default confidence level of every interval.
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """A sample mean with a two-sided t confidence interval.

    Attributes:
        mean: the sample mean.
        low, high: the interval bounds (NaN when n < 2).
        half_width: `(high - low) / 2` (NaN when n < 2).
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
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The `Interval` of an `as_dict()` dict."""
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def check_confidence(confidence):
    """Returns `confidence` if it is a level strictly between 0 and 1.

    Raises:
        ValueError: otherwise, saying what is allowed.
    """
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (
            0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a level strictly between 0 and 1 "
                         f"(e.g. 0.95); got {confidence!r}.")
    return float(confidence)


def t_quantile(p, df):
    """Inverse CDF of Student's t distribution (`scipy.stats.t.ppf`).

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, > 0.

    Returns:
        The t with `P(T <= t) = p`.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}.")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}.")
    return float(scipy_stats.t.ppf(p, df))


def mean_interval(values, confidence=CONFIDENCE):
    """Mean of a sample with its two-sided t confidence interval.

    Args:
        values: 1-D sequence of finite floats (at least one).
        confidence: level in (0, 1).

    Returns:
        An `Interval`; with a single value, the bounds, std and half-width
        are NaN (no variance can be estimated).

    Raises:
        ValueError: for an empty sample, a non-finite value or a bad level.
    """
    confidence = check_confidence(confidence)
    x = np.asarray(values, np.float64).ravel()
    if x.size == 0:
        raise ValueError("Cannot compute an interval of an empty sample.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"The sample has non-finite values: {x.tolist()}.")
    mean = float(np.mean(x))
    if x.size < 2:
        nan = float("nan")
        return Interval(mean, nan, nan, nan, nan, 1, confidence)
    std = float(np.std(x, ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * std / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, half, std, int(x.size), confidence)


def paired_difference(values, baseline, confidence=CONFIDENCE):
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
            f"Paired samples must have the same length, got {a.size} and {b.size}.")
    return mean_interval(a - b, confidence)


def verdict(difference, threshold, higher_is_better=False, baseline="FP32"):
    """A one-line reading of a paired-difference interval against a threshold.

    Args:
        difference: the `Interval` of `value - baseline`.
        threshold: the smallest difference that matters (> 0).
        higher_is_better: the metric's direction (log loss: False).
        baseline: the baseline's name in the sentence.

    Returns:
        A sentence such as "within 0.001 of FP32" or "worse than FP32 by
        >= 0.001".
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}.")
    if difference.n < 2:
        return "one seed: no interval"
    better, worse = ("better", "worse") if higher_is_better else ("worse", "better")
    # `better`/`worse` name what a positive / negative difference means.
    if difference.low >= threshold:
        return f"{better} than {baseline} by >= {threshold:g}"
    if difference.high <= -threshold:
        return f"{worse} than {baseline} by >= {threshold:g}"
    if -threshold < difference.low and difference.high < threshold:
        side = (better if difference.low > 0 else worse if difference.high < 0
                else "no difference")
        note = "" if side == "no difference" else f" (but {side} than {baseline})"
        return f"within {threshold:g} of {baseline}{note}"
    return f"inconclusive at {threshold:g}"
