"""The random bits of stochastic rounding: uniform, independent, reproducible.

The 16 random bits that stochastic rounding adds to each element are
recovered exactly through the public op: with the same seed the bits are the
same at every call, and an element whose dropped fraction is f rounds up
exactly when bits >= 65536 - f, so 16 calls of a binary search give them.

Every statistical check is a SciPy test at the fixed significance level
ALPHA = 1e-4 per p-value, on fixed seeds, so the tests are deterministic: a
correct generator fails none of them with these seeds, and the same checks
run on deliberately weak generators (at the end of this file) show that
each check can fail.
"""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import tfbf16
from tfbf16 import rounding as rounding_lib
from tfbf16.rounding import ROUNDING_CODES

ALPHA = 1e-4
BASE_BITS = 0x3F810000  # 1.0078125: its low 16 bits hold the test fraction


def recover_bits(shape, seed, round_fn=None):
    """The 16-bit random values stochastic rounding uses, per element.

    Args:
        shape: the tensor shape (the bits depend on the row-major index).
        seed: the seed passed to `round_bf16`.
        round_fn: `fn(x, seed)` doing the stochastic rounding; by default
            `tfbf16.round_bf16(x, "stochastic", seed=seed)` eagerly.

    Returns:
        int64 array of `shape` with values in [0, 65536).
    """
    if round_fn is None:
        round_fn = lambda x, s: tfbf16.round_bf16(x, "stochastic", seed=s)  # noqa: E731
    low = np.zeros(shape, np.int64)  # known: bits >= low
    high = np.full(shape, 65535, np.int64)  # known: bits <= high
    for _ in range(16):
        mid = np.maximum((low + high + 1) // 2, 1)
        x = (BASE_BITS | (65536 - mid)).astype(np.uint32).view(np.float32)
        out = np.asarray(round_fn(tf.constant(x), seed)).view(np.uint32)
        assert np.isin(out, [BASE_BITS, BASE_BITS + 0x10000]).all()
        up = out == BASE_BITS + 0x10000
        open_ = low < high
        low = np.where(open_ & up, mid, low)
        high = np.where(open_ & ~up, mid - 1, high)
    assert (low == high).all()
    return low


# ------------------------------------------------------------ statistics


def uniformity_pvalues(bits):
    """p-values of uniformity: 16-bit values, high and low bytes, each bit."""
    bits = bits.ravel()
    p = {
        "16-bit values": scipy.stats.chisquare(np.bincount(bits, minlength=65536)).pvalue,
        "high byte": scipy.stats.chisquare(np.bincount(bits >> 8, minlength=256)).pvalue,
        "low byte": scipy.stats.chisquare(np.bincount(bits & 255, minlength=256)).pvalue,
    }
    for b in range(16):
        ones = int(((bits >> b) & 1).sum())
        p[f"bit {b}"] = scipy.stats.binomtest(ones, bits.size, 0.5).pvalue
    return p


def independence_pvalues(a, b):
    """p-values of independence of paired 16-bit values a[i], b[i]."""
    a, b = a.ravel(), b.ravel()

    def contingency(x, y, levels):
        table = np.bincount(x * levels + y, minlength=levels * levels).reshape(levels, levels)
        return scipy.stats.chi2_contingency(table).pvalue

    p = {
        "correlation": scipy.stats.pearsonr(a, b).pvalue,
        "high nibbles": contingency(a >> 12, b >> 12, 16),
        "low nibbles": contingency(a & 15, b & 15, 16),
    }
    if a.size >= 1 << 22:  # enough pairs for a 256 x 256 table
        p["high bytes"] = contingency(a >> 8, b >> 8, 256)
    same = ~(a ^ b)
    for bit in (0, 7, 15):
        p[f"bit {bit} agreement"] = scipy.stats.binomtest(
            int(((same >> bit) & 1).sum()), a.size, 0.5).pvalue
    return p


def shifted_match_pvalues(a, b, lags=range(-4, 5)):
    """p-values of "b is not a (slightly) shifted copy of a".

    Equal 16-bit values at a fixed offset happen with probability 2**-16 per
    pair in independent streams; a shifted copy matches everywhere.
    """
    a, b = a.ravel(), b.ravel()
    p = {}
    for lag in lags:
        x, y = (a[: a.size - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: b.size + lag])
        p[f"lag {lag}"] = scipy.stats.binomtest(
            int((x == y).sum()), x.size, 2.0**-16, alternative="greater").pvalue
    return p


def failures(pvalues):
    """The p-values below ALPHA (a NaN, e.g. of a constant sequence, fails too)."""
    return {name: p for name, p in pvalues.items() if not p >= ALPHA}


# --------------------------------------------------------- the generator


def test_bits_are_uniform():
    bits = recover_bits([1 << 22], seed=[5, 0])
    assert not failures(uniformity_pvalues(bits))


def _mix64(z):
    """SplitMix64's output function, in NumPy (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def splitmix64_reference(seed, n):
    """Outputs 1..n of SplitMix64 from the key the docstring describes."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    words = np.array(seed, np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        key = _mix64(np.array([_mix64(words[0] + gamma) + words[1]], np.uint64))[0]
        return _mix64(key + np.arange(1, n + 1, dtype=np.uint64) * gamma)


@pytest.mark.parametrize("seed", [[0, 0], [5, 0], [-1, 2**63 - 1], [-(2**63), 12345]])
def test_bits_are_the_top_bits_of_splitmix64(seed):
    expected = (splitmix64_reference(seed, 1 << 16) >> np.uint64(48)).astype(np.int64)
    np.testing.assert_array_equal(recover_bits([1 << 16], seed=seed), expected)


def test_bits_depend_on_the_row_major_index_only():
    flat = recover_bits([1 << 16], seed=9)
    square = recover_bits([256, 256], seed=9)
    np.testing.assert_array_equal(square.ravel(), flat)


def test_neighbouring_elements_are_independent():
    bits = recover_bits([2048, 2048], seed=[11, 3])
    along_last = independence_pvalues(bits[:, :-1], bits[:, 1:])
    along_first = independence_pvalues(bits[:-1, :], bits[1:, :])
    assert not failures(along_last), along_last
    assert not failures(along_first), along_first


def test_consecutive_steps_and_variables_are_independent():
    # BF16Weights seeds a weight's update with [base + index, iteration].
    step = recover_bits([1 << 20], seed=[100, 7])
    next_step = recover_bits([1 << 20], seed=[100, 8])
    next_variable = recover_bits([1 << 20], seed=[101, 7])
    for other in (next_step, next_variable):
        p = {**independence_pvalues(step, other), **shifted_match_pvalues(step, other)}
        assert not failures(p), p


@pytest.mark.parametrize("word,bit", [(0, 0), (0, 1), (0, 31), (0, 63), (1, 0), (1, 32), (1, 63)])
def test_seeds_one_bit_apart_give_unrelated_bits(word, bit):
    seed = np.array([0x0123456789ABCDEF, 42], dtype=np.int64)
    flipped = seed.copy()
    flipped.view(np.uint64)[word] ^= np.uint64(1) << np.uint64(bit)
    a = recover_bits([1 << 20], seed=tf.constant(seed))
    b = recover_bits([1 << 20], seed=tf.constant(flipped))
    p = {**independence_pvalues(a, b), **shifted_match_pvalues(a, b)}
    assert not failures(p), p


def test_quantize_backward_stream_differs_from_the_next_steps_forward():
    # The backward seed of step t must not be the forward seed of step t + 1.
    forward_next = rounding_lib._as_stateless_seed([3, 8])  # noqa: SLF001
    backward = rounding_lib._derive_seed([3, 7], 1)  # noqa: SLF001
    assert (forward_next.numpy() != backward.numpy()).any()
    a = recover_bits([1 << 18], seed=forward_next)
    b = recover_bits([1 << 18], seed=backward)
    assert not failures(independence_pvalues(a, b))


# ------------------------------------------------------- reproducibility


def test_same_seed_same_bits_in_every_execution_path():
    x = tf.random.stateless_normal([1000, 37], seed=[1, 2])
    expected = tfbf16.round_bf16(x, "stochastic", seed=[4, 5]).numpy()
    code = tf.Variable(ROUNDING_CODES["stochastic"], dtype=tf.int32)
    paths = {
        "eager again": lambda: tfbf16.round_bf16(x, "stochastic", seed=[4, 5]),
        "tf.function": tf.function(lambda: tfbf16.round_bf16(x, "stochastic", seed=[4, 5])),
        "jit_compile": tf.function(
            lambda: tfbf16.round_bf16(x, "stochastic", seed=[4, 5]), jit_compile=True),
        "runtime code": lambda: tfbf16.round_bf16(x, code, seed=[4, 5]),
        "tensor seed": lambda: tfbf16.round_bf16(
            x, "stochastic", seed=tf.constant([4, 5], tf.int32)),
        "numpy uint64 seed": lambda: tfbf16.round_bf16(
            x, "stochastic", seed=np.array([4, 5], np.uint64)),
    }
    for name, fn in paths.items():
        np.testing.assert_array_equal(fn().numpy(), expected, err_msg=name)
    rounding_lib.set_xla_rounding(False)
    try:
        without_xla = tf.function(lambda: tfbf16.round_bf16(x, "stochastic", seed=[4, 5]))()
    finally:
        rounding_lib.set_xla_rounding(True)
    np.testing.assert_array_equal(without_xla.numpy(), expected, err_msg="no XLA")


def test_int_seed_means_seed_and_zero():
    x = tf.random.stateless_normal([5000], seed=[1, 3])
    np.testing.assert_array_equal(
        tfbf16.round_bf16(x, "stochastic", seed=17),
        tfbf16.round_bf16(x, "stochastic", seed=[17, 0]),
    )


def test_seed_none_follows_the_global_seed_and_differs_per_call_in_eager_mode():
    x = tf.random.stateless_normal([10_000], seed=[1, 2])
    tf.random.set_seed(321)
    first = [tfbf16.round_bf16(x, "stochastic").numpy() for _ in range(2)]
    tf.random.set_seed(321)
    again = [tfbf16.round_bf16(x, "stochastic").numpy() for _ in range(2)]
    assert (first[0] != first[1]).any()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_seed_none_draws_fresh_bits_per_call_under_jit_compile():
    # Under XLA, TensorFlow ignores the global seed of the per-call draw:
    # calls differ (not reproducible; pass a seed for that).
    x = tf.random.stateless_normal([10_000], seed=[1, 2])
    fn = tf.function(lambda t: tfbf16.round_bf16(t, "stochastic"), jit_compile=True)
    a, b = fn(x).numpy(), fn(x).numpy()
    assert (a != b).any()


# ------------------------------------------------------------ other dtypes


def test_float16_uses_the_float32_bits():
    x16 = tf.random.stateless_normal([4096], seed=[6, 6], dtype=tf.float16)
    out = tfbf16.round_bf16(x16, "stochastic", seed=3)
    via32 = tfbf16.round_bf16(tf.cast(x16, tf.float32), "stochastic", seed=3)
    np.testing.assert_array_equal(out.numpy(), tf.cast(via32, tf.float16).numpy())


def test_float64_stochastic_is_unbiased_and_picks_a_neighbour():
    # x = 1 + 2**-8 + 2**-30: 0.5 + 2**-22 of the way from 1 to 1 + 2**-7.
    value = 1 + 2**-8 + 2**-30
    n = 1 << 20
    out = tfbf16.round_bf16(tf.fill([n], tf.constant(value, tf.float64)), "stochastic",
                            seed=12).numpy()
    assert np.isin(out, [1.0, 1 + 2**-7]).all()
    ups = int((out > 1.0).sum())
    p = (value - 1) / 2**-7
    assert scipy.stats.binomtest(ups, n, p).pvalue > ALPHA
    np.testing.assert_array_equal(
        out, tfbf16.round_bf16(tf.fill([n], tf.constant(value, tf.float64)), "stochastic",
                               seed=12).numpy())


# ------------------------------------------- power: weak generators fail


def _weak_weyl(n, key):
    """A Weyl sequence: uniform, but neighbours are strongly related."""
    i = np.arange(n, dtype=np.uint64)
    return (((i * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)) >> np.uint64(48))
            .astype(np.int64))


def _weak_offset_hash(n, key):
    """A good hash of index + key: streams of nearby keys are shifted copies."""
    z = _mix64(np.arange(n, dtype=np.uint64) + np.uint64(key))
    return (z >> np.uint64(48)).astype(np.int64)


def test_the_checks_catch_weak_generators():
    n = 1 << 20
    weyl = _weak_weyl(n, 5)
    assert failures(independence_pvalues(weyl[:-1], weyl[1:]))
    stuck_bit = _weak_offset_hash(n, 5) | 1
    assert failures(uniformity_pvalues(stuck_bit))
    step, next_step = _weak_offset_hash(n, 1000), _weak_offset_hash(n, 1001)
    assert not failures(independence_pvalues(step, next_step))  # lag 0 sees nothing
    assert failures(shifted_match_pvalues(step, next_step))  # the shift is found
