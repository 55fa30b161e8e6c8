"""tfbf16.statistics: sums against a NumPy/ml_dtypes reference, every rounding."""

import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from tests import bf16_bits
from tfbf16 import statistics
from tfbf16.rounding import ROUNDING_CODES, set_xla_rounding


def _values(seed=0, size=4000):
    """float32 values over the whole range: log-uniform magnitudes from the
    subnormals to near FLT_MAX, both signs, zeros, Inf and NaN."""
    rng = np.random.default_rng(seed)
    magnitudes = 2.0 ** rng.uniform(-140, 127.9, size)
    values = (magnitudes * rng.choice([-1.0, 1.0], size)).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38,
                        np.finfo(np.float32).max, 1e-45, 1.0, 1.00390625, 1.005859375],
                       np.float32)
    return np.concatenate([values, special])


def _reference(values, rounded):
    """The sums and histogram of `tensor_statistics`, in float64 NumPy."""
    v = values.astype(np.float64)  # exact, subnormals included
    r = rounded.astype(np.float64)
    finite, rounded_finite = np.isfinite(v), np.isfinite(r)
    both = finite & rounded_finite
    nonzero = finite & (v != 0)
    sums = np.array([
        v.size,
        np.sum(v[both] ** 2),
        np.sum((r[both] - v[both]) ** 2),
        np.sum(nonzero & (np.abs(r) < 2.0 ** -126)),
        np.sum(finite & ~rounded_finite),
        np.sum(~finite),
    ])
    exponents = (bf16_bits.bits(values[nonzero]) >> 23) & 0xFF
    histogram = np.bincount(exponents, minlength=statistics.HISTOGRAM_BINS)
    return sums, histogram


def _assert_statistics(actual, expected):
    sums, histogram = (np.asarray(a) for a in actual)
    expected_sums, expected_histogram = expected
    # Counts exactly; float64 sums up to their summation order.
    np.testing.assert_array_equal(sums[[0, 3, 4, 5]], expected_sums[[0, 3, 4, 5]])
    np.testing.assert_allclose(sums[[1, 2]], expected_sums[[1, 2]], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(histogram, expected_histogram)


REFERENCE_ROUNDINGS = {"rne": bf16_bits.rnd, "trunc": bf16_bits.trunc}


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "unfused"])
@pytest.mark.parametrize("rounding", sorted(REFERENCE_ROUNDINGS))
def test_statistics_match_the_reference_rounding(rounding, xla):
    values = _values()
    expected = _reference(values, REFERENCE_ROUNDINGS[rounding](values))
    assert expected[0][3] > 0 and expected[0][5] == 3  # the data has underflow, NaN/Inf
    if rounding == "rne":
        assert expected[0][4] > 0  # and overflow (RNE only: truncation never overflows)
    set_xla_rounding(xla)
    try:
        by_name = statistics.tensor_statistics(tf.constant(values), rounding)
        by_code = statistics.tensor_statistics(
            tf.constant(values), tf.constant(ROUNDING_CODES[rounding]))
    finally:
        set_xla_rounding(True)
    _assert_statistics(by_name, expected)
    _assert_statistics(by_code, expected)


def test_fp32_measures_no_rounding_but_counts_nonfinite():
    values = _values(seed=1)
    subnormal = np.sum((values != 0) & (np.abs(values) < 2.0 ** -126))
    assert subnormal > 0
    for rounding in ("fp32", tf.constant(ROUNDING_CODES["fp32"])):
        sums, histogram = statistics.tensor_statistics(tf.constant(values), rounding)
        _assert_statistics((sums, histogram), _reference(values, values))
        # No error, no overflow; "underflow" counts the float32 subnormals
        # (subnormal after rounding); the NaN and the two Infs are non-finite.
        assert sums.numpy()[2] == 0.0 and sums.numpy()[4] == 0
        assert sums.numpy()[3] == subnormal and sums.numpy()[5] == 3


def test_stochastic_rounding_errors_stay_below_one_bf16_step():
    rng = np.random.default_rng(2)
    values = (rng.standard_normal(10_000) * 3.0).astype(np.float32)
    tf.random.set_seed(11)
    sums = statistics.tensor_statistics(tf.constant(values), "stochastic")[0].numpy()
    rne = statistics.tensor_statistics(tf.constant(values), "rne")[0].numpy()
    # Stochastic rounding picks one of the two neighbours: each error is below
    # one BF16 step (2**-7 relative); its mean square is about twice RNE's
    # (g**2 / 6 vs g**2 / 12 for a gap g and uniformly spread values).
    assert 0 < sums[2] < sums[1] * 2.0 ** -14
    assert sums[2] > rne[2]
    assert sums[3] == sums[4] == sums[5] == 0


def test_input_dtypes():
    values = _values(seed=3)
    finite = values[np.isfinite(values) & (np.abs(values) < 6e4) & (np.abs(values) > 1e-4)]
    as_bf16 = statistics.tensor_statistics(tf.constant(finite, tf.bfloat16))[0].numpy()
    assert as_bf16[2] == 0.0  # bfloat16 values round to themselves
    half = tf.constant(finite, tf.float16)
    np.testing.assert_array_equal(
        statistics.tensor_statistics(half)[0].numpy(),
        statistics.tensor_statistics(tf.cast(half, tf.float32))[0].numpy())
    double = tf.constant(finite.astype(np.float64) * (1 + 2.0 ** -30))
    np.testing.assert_array_equal(  # float64 is measured as its float32 cast
        statistics.tensor_statistics(double)[0].numpy(),
        statistics.tensor_statistics(tf.cast(double, tf.float32))[0].numpy())
    cheap, histogram = statistics.tensor_statistics(tf.constant(values), full=False)
    assert histogram is None
    np.testing.assert_array_equal(cheap.numpy(), [values.size, 0, 0, 0, 0, 3])


def test_runtime_code_switches_the_rounding_without_retracing():
    values = _values(seed=4)
    code = tf.Variable(ROUNDING_CODES["rne"], dtype=tf.int32)
    traces = []

    @tf.function
    def measure(x):
        traces.append(1)
        return statistics.tensor_statistics(x, code)

    x = tf.constant(values)
    _assert_statistics(measure(x), _reference(values, bf16_bits.rnd(values)))
    code.assign(ROUNDING_CODES["trunc"])
    _assert_statistics(measure(x), _reference(values, bf16_bits.trunc(values)))
    assert len(traces) == 1


def test_unknown_rounding_is_refused():
    with pytest.raises(ValueError, match="Valid roundings"):
        statistics.tensor_statistics(tf.constant([1.0]), "bf16")


def test_summarize():
    summary = statistics.summarize([4, 8.0, 2.0, 1, 0, 2])
    assert summary == {"rel_error": 0.5, "underflow": 0.25, "overflow": 0.0, "nonfinite": 0.5}
    assert statistics.summarize([3, 0.0, 0.0, 0, 0, 0])["rel_error"] == 0.0
    assert statistics.summarize(np.zeros(len(statistics.FIELDS))) is None


def test_histogram_buckets():
    _, histogram = statistics.tensor_statistics(
        tf.constant([1e-39, 0.75, 1.0, 3.0, -3.5, 0.0, np.inf], tf.float32))
    buckets = statistics.histogram_buckets(histogram.numpy())
    # From the subnormal bin (0) to 3.0's and -3.5's bin (128), ends trimmed.
    assert buckets.shape == (129, 3)
    assert buckets[0].tolist() == [-149.0, -126.0, 1.0]
    assert buckets[126].tolist() == [-1.0, 0.0, 1.0]  # 0.75
    assert buckets[127].tolist() == [0.0, 1.0, 1.0]  # 1.0
    assert buckets[128].tolist() == [1.0, 2.0, 2.0]  # 3.0, -3.5
    assert buckets[1:126, 2].sum() == 0
    np.testing.assert_array_equal(buckets[1:, 0], buckets[:-1, 1])  # contiguous
    assert statistics.histogram_buckets(np.zeros(statistics.HISTOGRAM_BINS)).shape == (0, 3)
    with pytest.raises(ValueError, match="256 exponent counts"):
        statistics.histogram_buckets(np.zeros(10))


def test_callbacks_reexport_the_statistics():
    assert tfbf16.callbacks.tensor_statistics is statistics.tensor_statistics
    assert tfbf16.callbacks.FIELDS == statistics.FIELDS == (
        "count", "sum_sq", "sum_sq_err", "underflow", "overflow", "nonfinite")
    assert tfbf16.callbacks.HISTOGRAM_BINS == statistics.HISTOGRAM_BINS == 256
