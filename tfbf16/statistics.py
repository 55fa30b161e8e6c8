"""What BF16 rounding does to a tensor, as sums that add up across tensors.

`tensor_statistics` rounds a tensor with `tfbf16.round_bf16` and returns
the raw sums of `FIELDS` (value count, sum of squares of the values and of
their rounding errors, underflow, overflow and non-finite counts) and a
histogram of the float32 exponents. Sums, not ratios, so that the
statistics of many tensors (a layer's weights, the steps of an epoch) are
added first and turned into ratios once, by `summarize`.
`histogram_buckets` gives the histogram's bins as log2|x| intervals (what
TensorBoard's histogram plugin displays).

Example:

>>> sums, histogram = tensor_statistics(tf.constant([1.00390625, 1e-39]))
>>> summarize(sums.numpy())["underflow"]   # 1e-39 is subnormal in BF16
0.5
"""

import math

import numpy as np
import tensorflow as tf

from tfbf16.rounding import round_bf16, rounding_code

#: The fields of `tensor_statistics`' sums, in order.
FIELDS = ("count", "sum_sq", "sum_sq_err", "underflow", "overflow", "nonfinite")
_COUNT, _SUM_SQ, _SUM_SQ_ERR, _UNDERFLOW, _OVERFLOW, _NONFINITE = range(len(FIELDS))
#: Histogram bins: the float32 biased exponent of non-zero finite values
#: (bin 0: subnormal; bin k: magnitudes in [2**(k-127), 2**(k-126))).
HISTOGRAM_BINS = 256

_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_MIN_NORMAL_BITS = 0x00800000
# Bin k covers log2|x| in [k - 127, k - 126); the subnormal bin 0 covers
# [-149, -126).
_BIN_LEFT = np.array([-149.0] + [k - 127.0 for k in range(1, HISTOGRAM_BINS)])
_BIN_RIGHT = np.array([-126.0] + [k - 126.0 for k in range(1, HISTOGRAM_BINS)])


def _exact_float64(x):
    """float32 -> float64 exactly, subnormals included.

    Written with bit operations because TensorFlow's CPU cast flushes
    float32 subnormals to zero: the value is rebuilt as its significand (an
    integer) times a power of two. Only meaningful for finite x.
    """
    bits = tf.bitcast(x, tf.int32)
    field = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF)
    significand = tf.bitwise.bitwise_and(bits, 0x7FFFFF) + tf.where(field > 0, 0x800000, 0)
    exponent = tf.cast(tf.maximum(field, 1) - 150 + 1023, tf.int64)
    scale = tf.bitcast(tf.bitwise.left_shift(exponent, 52), tf.float64)
    value = tf.cast(significand, tf.float64) * scale
    return tf.where(bits < 0, -value, value)


def _rounded(x, rounding):
    """`x` (float32) rounded by a rounding name or an int32 runtime code."""
    if isinstance(rounding, str):
        return x if rounding == "fp32" else round_bf16(x, rounding)
    return round_bf16(x, tf.cast(tf.convert_to_tensor(rounding), tf.int32))


def tensor_statistics(x, rounding="rne", *, full=True):
    """BF16 rounding statistics of a tensor, as sums (so they can be added up).

    The rounding is `tfbf16.round_bf16` itself, so the numbers describe
    exactly what an emulated layer does to the values.

    Args:
        x: a floating-point tensor (float16/bfloat16/float32; float64 is
            first cast to float32).
        rounding: the rounding to measure: "rne", "trunc", "stochastic",
            "fp32" (nothing changes) or an int32 rounding-code tensor (see
            `tfbf16.rounding.ROUNDING_CODES`), e.g. a variable that changes
            between calls of a traced function.
        full: False computes only the count and the non-finite count (the
            other sums are 0, the histogram is None).

    Returns:
        `(sums, histogram)`: `sums` is a float64 vector of `FIELDS`: the
        number of values; the sum of squares of the values and of their
        rounding errors (over values that are finite before and after
        rounding, computed exactly in float64); the number of non-zero finite
        values that round to zero or to a subnormal ("underflow"); the number
        of finite values that round to +-Inf ("overflow"); the number of
        NaN/Inf values. `histogram` is a float64 vector of `HISTOGRAM_BINS`
        counts of the float32 exponent of the non-zero finite values (None
        unless `full`).

    Raises:
        ValueError: for an unknown rounding name.

    Example:

    >>> sums, _ = tensor_statistics(tf.constant([1.00390625, 1e-39]))
    >>> relative_error = math.sqrt(sums[2] / sums[1])
    """
    if isinstance(rounding, str):
        rounding_code(rounding)  # an unknown name is an error, also when not full
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    if full:
        # Rounded in its own shape: in a training step, the emulation has
        # already compiled the XLA rounding kernel for that shape.
        rounded = tf.reshape(_rounded(x, rounding), [-1])
    x = tf.reshape(x, [-1])
    bits = tf.bitcast(x, tf.int32)
    magnitude = tf.bitwise.bitwise_and(bits, _ABS_MASK)
    finite = magnitude < _INF_BITS
    count = tf.cast(tf.size(x), tf.float64)
    nonfinite = count - tf.reduce_sum(tf.cast(finite, tf.float64))
    zero = tf.constant(0.0, tf.float64)
    if not full:
        return tf.stack([count, zero, zero, zero, zero, nonfinite]), None
    rounded_magnitude = tf.bitwise.bitwise_and(tf.bitcast(rounded, tf.int32), _ABS_MASK)
    rounded_finite = rounded_magnitude < _INF_BITS
    overflow = tf.logical_and(finite, tf.logical_not(rounded_finite))
    nonzero_finite = tf.logical_and(finite, magnitude > 0)
    underflow = tf.logical_and(nonzero_finite, rounded_magnitude < _MIN_NORMAL_BITS)
    both = tf.logical_and(finite, rounded_finite)
    x64 = tf.where(both, _exact_float64(x), zero)
    r64 = tf.where(both, _exact_float64(rounded), zero)
    sums = tf.stack([
        count,
        tf.reduce_sum(tf.square(x64)),
        tf.reduce_sum(tf.square(r64 - x64)),
        tf.reduce_sum(tf.cast(underflow, tf.float64)),
        tf.reduce_sum(tf.cast(overflow, tf.float64)),
        nonfinite,
    ])
    field = tf.bitwise.right_shift(magnitude, 23)
    segment = tf.where(nonzero_finite, field, HISTOGRAM_BINS)  # the extra bin is dropped
    histogram = tf.math.unsorted_segment_sum(
        tf.ones_like(x, tf.float64), segment, HISTOGRAM_BINS + 1
    )[:HISTOGRAM_BINS]
    return sums, histogram


def summarize(sums):
    """The ratios of a vector of `FIELDS` sums (of one or many tensors).

    Args:
        sums: a sequence of `len(FIELDS)` numbers, e.g. `tensor_statistics`'
            sums, or the sum of several.

    Returns:
        None if the count is 0, else a dict: "rel_error", the relative
        rounding error `sqrt(sum_sq_err / sum_sq)` (0.0 when every value is
        zero), and "underflow", "overflow", "nonfinite": the fractions of the
        values that underflow, overflow or are NaN/Inf.

    Example:

    >>> summarize([4, 2.0, 0.0, 1, 0, 0])["underflow"]
    0.25
    """
    count = sums[_COUNT]
    if count <= 0:
        return None
    sum_sq, sum_sq_err = sums[_SUM_SQ], sums[_SUM_SQ_ERR]
    return {
        "rel_error": math.sqrt(sum_sq_err / sum_sq) if sum_sq > 0 else 0.0,
        "underflow": sums[_UNDERFLOW] / count,
        "overflow": sums[_OVERFLOW] / count,
        "nonfinite": sums[_NONFINITE] / count,
    }


def histogram_buckets(histogram):
    """The exponent histogram as buckets of log2|x|, empty ends trimmed.

    Args:
        histogram: `HISTOGRAM_BINS` counts, as `tensor_statistics` returns
            them (or a sum of several).

    Returns:
        A float64 array of shape [k, 3]: (left edge, right edge, count) of
        the bins from the first to the last non-empty one, in log2 of the
        magnitude (the subnormal bin spans [-149, -126)); shape [0, 3] if
        every count is 0. This is the layout of TensorBoard's histograms
        (see `tfbf16.utils.tensorboard.write_histograms`).

    Raises:
        ValueError: if `histogram` does not hold `HISTOGRAM_BINS` counts.

    Example:

    >>> _, histogram = tensor_statistics(tf.constant([1.0, 3.0]))
    >>> histogram_buckets(histogram.numpy())
    array([[  0.,   1.,   1.],
           [  1.,   2.,   1.]])
    """
    counts = np.asarray(histogram, np.float64)
    if counts.shape != (HISTOGRAM_BINS,):
        raise ValueError(
            f"histogram must hold {HISTOGRAM_BINS} exponent counts; got shape {counts.shape}."
        )
    used = np.nonzero(counts)[0]
    if used.size == 0:
        return np.zeros((0, 3))
    keep = slice(used[0], used[-1] + 1)
    return np.stack([_BIN_LEFT[keep], _BIN_RIGHT[keep], counts[keep]], axis=1)
