"""What the rounding op accepts and what it refuses, with clear messages."""

import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from tests.bf16_bits import assert_bits_equal, rnd
from tfbf16 import rounding as rounding_lib
from tfbf16.rounding import ROUNDING_CODES, ROUNDINGS


# ----------------------------------------------------------- rounding names


def test_rounding_names_have_one_source_of_truth():
    assert ROUNDINGS == ("rne", "trunc", "stochastic")
    assert set(ROUNDING_CODES) == {"fp32", *ROUNDINGS}
    assert ROUNDING_CODES["fp32"] == 0
    assert sorted(ROUNDING_CODES.values()) == list(range(len(ROUNDING_CODES)))


def test_round_gradient_rejects_an_unknown_rounding():
    with pytest.raises(ValueError, match="Unknown rounding 'bogus'. Valid roundings are: "
                                         "'rne', 'trunc', 'stochastic'"):
        tfbf16.round_gradient(tf.constant([1.0]), "bogus")
    with pytest.raises(ValueError, match="Unknown rounding 'bogus'"):
        tfbf16.round_gradient(None, "bogus")  # checked even without a gradient
    gradient = tf.constant([1.00390625])
    assert tfbf16.round_gradient(gradient, None) is gradient
    assert tfbf16.round_gradient(None, "rne") is None


def test_rounding_code_rejects_unknown_names_and_tensors():
    assert rounding_lib.rounding_code("fp32") == 0
    with pytest.raises(ValueError, match="Unknown rounding 'nearest'.*'fp32', 'rne'"):
        rounding_lib.rounding_code("nearest")
    with pytest.raises(ValueError, match="Unknown rounding"):
        rounding_lib.rounding_code(tf.constant(1))


@pytest.mark.parametrize("exec_mode", ["eager", "xla"])
def test_out_of_range_runtime_code_gives_nan_everywhere(exec_mode):
    code = tf.Variable(7, dtype=tf.int32)
    x = tf.constant([1.0, -2.5, 3.0])
    fn = lambda t: tfbf16.round_bf16(t, code)  # noqa: E731
    if exec_mode == "xla":
        fn = tf.function(fn, jit_compile=True)
    assert np.isnan(fn(x).numpy()).all()
    assert np.isnan(tfbf16.round_bf16(tf.cast(x, tf.float64), code).numpy()).all()


# ------------------------------------------------------ ragged and sparse


def test_ragged_tensor_is_rounded_in_its_values_and_keeps_its_rows():
    values = np.array([1.00390625, 3.14159, -2.71828, 1e-40, 7.0], np.float32)
    ragged = tf.RaggedTensor.from_row_splits(values, [0, 2, 2, 5])
    for fn in (tfbf16.round_bf16, tfbf16.quantize,
               lambda t: tfbf16.round_gradient(t, "rne")):
        out = fn(ragged)
        assert isinstance(out, tf.RaggedTensor)
        np.testing.assert_array_equal(out.row_splits, ragged.row_splits)
        assert_bits_equal(out.flat_values, rnd(values), "ragged values")


def test_quantize_of_ragged_rounds_the_gradient_of_its_values():
    values = tf.Variable([0.5, 0.25, 2.0])
    upstream = tf.constant([1.0009765625, 1.0048828125, -1.0009765625])
    with tf.GradientTape() as tape:
        ragged = tf.RaggedTensor.from_row_lengths(values, [1, 2])
        y = tf.reduce_sum(tfbf16.quantize(ragged, "rne", "trunc").flat_values * upstream)
    np.testing.assert_array_equal(tape.gradient(y, values), [1.0, 1.0, -1.0])


def test_sparse_tensor_is_rounded_in_its_values_and_keeps_its_indices():
    sparse = tf.SparseTensor([[0, 1], [2, 3]], [1.00390625, -3.14159], dense_shape=[4, 5])
    for fn in (tfbf16.round_bf16, tfbf16.quantize,
               lambda t: tfbf16.round_gradient(t, "trunc")):
        out = fn(sparse)
        assert isinstance(out, tf.SparseTensor)
        np.testing.assert_array_equal(out.indices, sparse.indices)
        np.testing.assert_array_equal(out.dense_shape, sparse.dense_shape)
    assert_bits_equal(tfbf16.round_bf16(sparse).values, rnd([1.00390625, -3.14159]), "sparse")


def test_ragged_of_integers_is_refused_like_a_dense_integer_tensor():
    with pytest.raises(TypeError, match="got dtype int32"):
        tfbf16.round_bf16(tf.ragged.constant([[1, 2], [3]]))


def test_indexed_slices_go_through_round_gradient():
    slices = tf.IndexedSlices(tf.constant([[1.00390625]]), tf.constant([3]), tf.constant([5, 1]))
    with pytest.raises(TypeError, match="round_gradient"):
        tfbf16.round_bf16(slices)
    assert isinstance(tfbf16.round_gradient(slices, "rne"), tf.IndexedSlices)


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, [1, 2**64], [-(2**63) - 1, 0]])
def test_seed_outside_int64_is_refused(seed):
    with pytest.raises(ValueError, match=r"seed must fit in int64"):
        tfbf16.round_bf16([1.0], "stochastic", seed=seed)


@pytest.mark.parametrize("seed,fragment", [
    (True, "got bool True"),
    (np.bool_(False), "got bool"),
    (1.5, "got float 1.5"),
    ([1, 2, 3], "two ints"),
    ([1.0, 2.0], "two ints"),
    ("7", "got str"),
    (tf.constant([1.0, 2.0]), "dtype float32"),
])
def test_seed_of_the_wrong_type_is_refused(seed, fragment):
    with pytest.raises(TypeError, match=f"seed.*{fragment}"):
        tfbf16.round_bf16([1.0], "stochastic", seed=seed)


@pytest.mark.parametrize("seed", [tf.constant([1, 2, 3]), tf.constant(5), np.zeros([1, 2], np.int64)])
def test_seed_tensor_of_the_wrong_shape_is_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer tensor of shape \[2\]; got shape"):
        tfbf16.round_bf16([1.0], "stochastic", seed=seed)


def test_seeds_are_checked_by_every_entry_point_and_for_every_rounding():
    for fn in (
        lambda: tfbf16.round_bf16([1.0], "rne", seed=2**63),
        lambda: tfbf16.quantize([1.0], "rne", "stochastic", seed=2**63),
        lambda: tfbf16.round_gradient(tf.constant([1.0]), "stochastic", seed=2**63),
    ):
        with pytest.raises(ValueError, match="seed must fit in int64"):
            fn()


def test_valid_seeds_are_accepted():
    x = tf.constant([1.00390625, 3.14159])
    for seed in (0, 2**63 - 1, -(2**63), np.int64(5), [3, -4], (3, 4),
                 tf.constant([3, 4], tf.int32), tf.Variable([3, 4], dtype=tf.int64)):
        out = tfbf16.round_bf16(x, "stochastic", seed=seed).numpy()
        assert not (out.view(np.uint32) & 0xFFFF).any(), seed
