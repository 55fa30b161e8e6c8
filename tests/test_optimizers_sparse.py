"""BF16Weights on embedding tables: only the rows a sparse update changed are rounded."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tests.bf16_bits import assert_bits_equal, is_bf16
import tfbf16
from tfbf16.optimizers import UPDATE_ROUNDINGS, BF16Weights

FLAVOURS = pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
ROWS, DIM, BATCH = 40, 4, 8
# The optimizers that change only the rows of a sparse gradient.
LAZY = {
    "sgd": lambda K: K.optimizers.SGD(0.5),
    "adagrad": lambda K: K.optimizers.Adagrad(0.5),
    "rmsprop": lambda K: K.optimizers.RMSprop(0.05),
    "adadelta": lambda K: K.optimizers.Adadelta(50.0),
}
# The optimizers that change every row of a table on every step.
EAGER = {
    "adam": lambda K: K.optimizers.Adam(0.05),
    "sgd_momentum": lambda K: K.optimizers.SGD(0.5, momentum=0.9),
    "ftrl": lambda K: K.optimizers.Ftrl(0.5),
}


def _model(K, seed=0, constraint=None):
    """An embedding table (sparse gradient) feeding a dense layer."""
    K.utils.set_random_seed(seed)
    ids = K.Input((3,), dtype="int32")
    embedded = K.layers.Embedding(ROWS, DIM, embeddings_constraint=constraint,
                                  name="table")(ids)
    output = K.layers.Dense(1, name="out")(K.layers.Flatten()(embedded))
    return K.Model(ids, output)


def _batches(steps, seed=1):
    rng = np.random.default_rng(seed)
    # Rows 0..ROWS-2 only (the last row is never updated), with duplicates
    # inside every batch.
    for _ in range(steps):
        ids = rng.integers(0, ROWS // 4, size=(BATCH, 3)).astype(np.int32)
        yield ids, rng.normal(size=(BATCH, 1)).astype(np.float32)


def _train(K, model, optimizer, steps, function=False):
    def step(ids, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(ids) - labels))
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)  # the table's gradient
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(step) if function else step
    for ids, labels in _batches(steps):
        step(tf.constant(ids), tf.constant(labels))
    return [np.asarray(w) for w in model.get_weights()]


def _table(model):
    return model.get_layer("table").embeddings


@FLAVOURS
@pytest.mark.parametrize("name", sorted(LAZY))
def test_sparse_rounding_is_bit_identical_to_rounding_whole_variables(K, name):
    for rounding in UPDATE_ROUNDINGS:
        results = {}
        for sparse in (True, False):
            model = _model(K)
            optimizer = BF16Weights(LAZY[name](K), rounding, round_slots=True, seed=11,
                                    sparse_updates=sparse)
            optimizer.build(model.trainable_variables)
            assert optimizer.rounds_rows(_table(model)) is sparse
            results[sparse] = (_train(K, model, optimizer, steps=4, function=True),
                               [np.asarray(s) for s in optimizer._inner_slot_variables()],
                               [np.asarray(c) for c in optimizer.compensations])
        (weights, slots, compensations), (dense_weights, dense_slots, dense_compensations) = (
            results[True], results[False])
        for what, got, expected in (("weights", weights, dense_weights),
                                    ("slots", slots, dense_slots),
                                    ("compensations", compensations, dense_compensations)):
            for a, b in zip(got, expected):
                assert_bits_equal(a, b, f"{name} {rounding} {what}")
        assert all(is_bf16(w) for w in weights)


@FLAVOURS
@pytest.mark.parametrize("name", sorted(LAZY))
def test_only_updated_rows_are_rounded(K, name):
    """A row no batch touches keeps an FP32 value that is not BF16."""
    for rounding in UPDATE_ROUNDINGS:
        model = _model(K)
        optimizer = BF16Weights(LAZY[name](K), rounding, seed=3)
        optimizer.build(model.trainable_variables)
        table = _table(model)
        untouched = np.float32(1.0 + 2.0**-20)  # not a BF16 value
        table.assign(tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(table), [[ROWS - 1]], [[untouched] * DIM]))
        before = np.asarray(table).copy()
        weights = _train(K, model, optimizer, steps=3, function=rounding == "kahan")
        assert np.all(weights[0][ROWS - 1] == untouched), (name, rounding)
        assert_bits_equal(weights[0][ROWS // 4:], before[ROWS // 4:], f"{name} {rounding}")
        assert is_bf16(weights[0][:ROWS // 4]) and is_bf16(weights[1])
        assert np.any(weights[0][:ROWS // 4] != before[:ROWS // 4])


@FLAVOURS
@pytest.mark.parametrize("name", sorted(EAGER))
def test_optimizers_that_change_every_row_round_the_whole_table(K, name):
    model = _model(K)
    optimizer = BF16Weights(EAGER[name](K), "rne")
    optimizer.build(model.trainable_variables)
    assert not optimizer.rounds_rows(_table(model))
    table = _table(model)
    table.assign(tf.tensor_scatter_nd_update(
        tf.convert_to_tensor(table), [[ROWS - 1]], [[1.0 + 2.0**-20] * DIM]))
    weights = _train(K, model, optimizer, steps=2)
    assert all(is_bf16(w) for w in weights)


@FLAVOURS
def test_whatever_touches_the_whole_table_turns_row_rounding_off(K):
    def rounds_rows(inner, constraint=None):
        model = _model(K, constraint=constraint)
        optimizer = BF16Weights(inner, "kahan")
        optimizer.build(model.trainable_variables)
        return optimizer.rounds_rows(_table(model))

    assert rounds_rows(K.optimizers.Adagrad(0.1))
    assert not rounds_rows(K.optimizers.Adagrad(0.1), constraint=K.constraints.MaxNorm(1.0))
    assert not rounds_rows(K.optimizers.Adagrad(0.1, weight_decay=1e-3))
    assert not rounds_rows(K.optimizers.Adagrad(0.1, use_ema=True))
    assert not rounds_rows(K.optimizers.RMSprop(0.1, momentum=0.5))
    if K is keras:
        assert not rounds_rows(K.optimizers.SGD(0.1, gradient_accumulation_steps=2))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("xla", [True, False])
def test_rounding_rows_equals_rounding_the_whole_tensor(dtype, xla):
    from tfbf16.rounding import round_rows_bf16, set_xla_rounding

    rng = np.random.default_rng(12)
    table = tf.constant(rng.normal(size=(300, 3, 5)), dtype)
    rows = tf.constant([299, 0, 17, 17, 150], tf.int32)  # repeated rows too
    set_xla_rounding(xla)
    try:
        for rounding in ("rne", "trunc", "stochastic"):
            whole = tf.gather(tfbf16.round_bf16(table, rounding, seed=[4, 9]), rows)
            got = round_rows_bf16(tf.gather(table, rows), rows, rounding, seed=[4, 9])
            assert_bits_equal(got.numpy(), whole.numpy(), f"{dtype} {rounding}")
    finally:
        set_xla_rounding(True)
    with pytest.raises(ValueError, match="Unknown rounding"):
        round_rows_bf16(table, rows, "fp32")


def test_sparse_stochastic_rounding():
    """Seeded, reproducible, BF16, and only the updated rows."""
    def run(seed):
        model = _model(keras)
        optimizer = BF16Weights(keras.optimizers.SGD(0.5), "stochastic", seed=seed)
        return _train(keras, model, optimizer, steps=3, function=True)

    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again):
        assert_bits_equal(a, b, "same seed")
    assert not np.array_equal(first[0], other[0])
    assert is_bf16(first[0])


def test_kahan_keeps_weights_a_zero_update_does_not_change():
    """A BF16 compensation of exactly half an ulp must not move a weight with no update."""
    rng = np.random.default_rng(0)
    size = 200_000
    weight = keras.Variable(rng.normal(size=size).astype(np.float32))
    optimizer = BF16Weights(keras.optimizers.SGD(1.0), "kahan")
    optimizer.apply_gradients([(tf.constant(rng.normal(size=size).astype(np.float32) * 1e-3),
                                weight)])
    before, compensation = weight.numpy(), optimizer.compensations[0].numpy()
    assert np.any(compensation)
    optimizer.apply_gradients([(tf.zeros([size]), weight)])
    assert_bits_equal(weight.numpy(), before, "weights")
    assert_bits_equal(optimizer.compensations[0].numpy(), compensation, "compensations")
