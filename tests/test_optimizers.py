"""tfbf16.optimizers.BF16Weights: BF16 storage, small updates, checkpoints."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tfbf16.optimizers import UPDATE_ROUNDINGS, BF16Weights

FLAVOURS = pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])


def _is_bf16(values):
    bits = np.ascontiguousarray(np.asarray(values, np.float32)).view(np.uint32)
    return bool(np.all(bits & 0xFFFF == 0))


def _variable(K, values):
    values = np.asarray(values, np.float32)
    return keras.Variable(values) if K is keras else tf.Variable(values)


@FLAVOURS
@pytest.mark.parametrize("update_rounding", UPDATE_ROUNDINGS)
def test_weights_and_slots_are_bf16_after_every_step(K, update_rounding):
    rng = np.random.default_rng(0)
    for inner in (K.optimizers.Adam(1e-3), K.optimizers.SGD(0.1, momentum=0.9)):
        weights = [_variable(K, rng.normal(size=(5, 3))), _variable(K, rng.normal(size=(3,)))]
        assert not any(_is_bf16(w.numpy()) for w in weights)
        optimizer = BF16Weights(inner, update_rounding, round_slots=True)
        assert isinstance(optimizer, BF16Weights) and isinstance(optimizer, K.optimizers.Optimizer)
        optimizer.build(weights)
        assert all(_is_bf16(w.numpy()) for w in weights)  # stored in BF16 from the start
        for _ in range(3):
            before = [w.numpy() for w in weights]
            grads = [tf.constant(rng.normal(size=w.shape), tf.float32) for w in weights]
            optimizer.apply_gradients(zip(grads, weights))
            assert all(_is_bf16(w.numpy()) for w in weights)
            slots = optimizer._inner_slot_variables()
            assert slots and all(_is_bf16(np.asarray(s)) for s in slots)
            assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, weights))
        if update_rounding == "kahan":
            assert len(optimizer.compensations) == 2
            assert all(_is_bf16(np.asarray(c)) for c in optimizer.compensations)
            assert any(np.any(np.asarray(c)) for c in optimizer.compensations)
        else:
            assert optimizer.compensations == []
        assert int(optimizer.iterations) == 3


def test_small_updates_cancelled_by_rne_recovered_by_stochastic_and_kahan():
    """Weight 1.0, 1000 updates of +1e-4 (half a BF16 ulp at 1.0 is 3.9e-3)."""
    K = keras  # the rounding logic is shared by both implementations
    steps, size = 1000, 4096
    final = {}
    for name in ("fp32",) + UPDATE_ROUNDINGS:
        tf.random.set_seed(0)
        weight = _variable(K, np.ones(size))
        inner = K.optimizers.SGD(1.0)
        optimizer = inner if name == "fp32" else BF16Weights(inner, name)
        grad = tf.fill([size], -1e-4)

        @tf.function
        def train():
            for _ in tf.range(steps):
                optimizer.apply_gradients([(grad, weight)])

        train()
        assert int(optimizer.iterations) == steps
        final[name] = weight.numpy()
    target = 1.0 + steps * 1e-4
    assert final["fp32"].mean() == pytest.approx(target, abs=1e-4)
    assert np.all(final["rne"] == 1.0) and np.all(final["trunc"] == 1.0)
    # Stochastic rounding is unbiased: each weight ends on a BF16 value
    # (std ~0.03), their mean on the target.
    assert _is_bf16(final["stochastic"])
    assert final["stochastic"].mean() == pytest.approx(target, abs=3e-3)
    assert final["stochastic"].std() > 0.005
    # Kahan carries what rounding drops: within half an ulp (2**-8) of the target.
    assert _is_bf16(final["kahan"])
    assert np.all(np.abs(final["kahan"] - target) <= 2.0**-8)


def test_seeded_stochastic_rounding_is_reproducible_and_varies_per_step():
    def run(seed):
        weight = keras.Variable(np.ones(256, np.float32))
        optimizer = BF16Weights(keras.optimizers.SGD(1.0), "stochastic", seed=seed)
        history = []
        for _ in range(3):
            optimizer.apply_gradients([(tf.fill([256], -1e-3), weight)])
            history.append(weight.numpy())
        return history

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    steps_up = [np.sum(b > a) for a, b in zip([np.ones(256)] + first[:-1], first)]
    assert all(0 < n < 256 for n in steps_up)  # each step draws fresh bits


def _fit_model(K, optimizer, seed=0):
    K.utils.set_random_seed(seed)
    model = K.Sequential([K.Input((4,)), K.layers.Dense(3, name="dense"),
                          K.layers.Dense(1, name="out")])
    model = tfbf16.wrap(model, "rne")
    model.compile(optimizer, "mse")
    return model


def _data():
    rng = np.random.default_rng(1)
    return (rng.normal(size=(32, 4)).astype(np.float32),
            rng.normal(size=(32, 1)).astype(np.float32))


@FLAVOURS
def test_checkpoint_saves_and_restores_compensation_buffers(K, tmp_path):
    x, y = _data()

    def make():
        optimizer = BF16Weights(K.optimizers.Adam(1e-3), "kahan", round_slots=True)
        return _fit_model(K, optimizer), optimizer

    model, optimizer = make()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(_is_bf16(w) for w in model.get_weights())
    assert any(np.any(c.numpy()) for c in optimizer.compensations)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert sum("kahan" in n or "_variables" in n for n in saved) >= len(optimizer.compensations)

    restored_model, restored = make()
    restored.build(restored_model.trainable_variables)
    status = tf.train.Checkpoint(model=restored_model, optimizer=restored).restore(path)
    status.assert_existing_objects_matched()
    assert len(restored.variables) == len(optimizer.variables)
    for a, b in zip(optimizer.variables, restored.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(optimizer.compensations, restored.compensations):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training goes on identically from the restored state.
    grads = [tf.constant(np.random.default_rng(2).normal(size=v.shape), tf.float32)
             for v in model.trainable_variables]
    for m, o in ((model, optimizer), (restored_model, restored)):
        for _ in range(2):
            o.apply_gradients(zip(grads, m.trainable_variables))
    for a, b in zip(model.get_weights(), restored_model.get_weights()):
        np.testing.assert_array_equal(a, b)


@FLAVOURS
def test_model_save_keeps_optimizer_config_and_buffers(K, tmp_path):
    x, y = _data()
    optimizer = BF16Weights(K.optimizers.SGD(0.05, momentum=0.9), "kahan", seed=3)
    model = _fit_model(K, optimizer)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = K.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, BF16Weights)
    assert loaded.optimizer.update_rounding == "kahan" and loaded.optimizer.seed == 3
    assert type(loaded.optimizer.inner_optimizer) is type(optimizer.inner_optimizer)
    assert len(loaded.optimizer.compensations) == len(optimizer.compensations)
    for a, b in zip(optimizer.compensations, loaded.optimizer.compensations):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.05)


def test_config_round_trip_learning_rate_delegation_and_errors():
    optimizer = BF16Weights(keras.optimizers.Adam(2e-3), "stochastic", round_slots=True, seed=5)
    config = optimizer.get_config()
    assert config["update_rounding"] == "stochastic" and config["round_slots"] is True
    clone = type(optimizer).from_config(config)
    assert (clone.update_rounding, clone.round_slots, clone.seed) == ("stochastic", True, 5)
    assert float(clone.learning_rate) == pytest.approx(2e-3)
    optimizer.learning_rate = 1e-4  # e.g. from a LearningRateScheduler callback
    assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(1e-4)
    tf_optimizer = BF16Weights(tf_keras.optimizers.SGD(0.5), "trunc")
    assert tf_optimizer.get_config()["update_rounding"] == "trunc"
    assert type(tf_optimizer).from_config(tf_optimizer.get_config()).inner_optimizer.get_config()[
        "learning_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Valid values are"):
        BF16Weights(keras.optimizers.SGD(), "nearest")
    with pytest.raises(TypeError, match="legacy"):
        BF16Weights(tf_keras.optimizers.legacy.SGD())
    with pytest.raises(TypeError, match="optimizer instance"):
        BF16Weights("adam")
    with pytest.raises(TypeError, match="cannot wrap another"):
        BF16Weights(BF16Weights(keras.optimizers.SGD()))
    for K in (keras, tf_keras):
        inner = K.optimizers.Adagrad()
        BF16Weights(inner)
        with pytest.raises(TypeError, match="already wrapped by a BF16Weights"):
            BF16Weights(inner)
    with pytest.raises(TypeError, match="must be a Keras 3 optimizer"):
        BF16Weights(keras.layers.Dense(2))


_LOAD_SCRIPT = """
import sys
import keras, tf_keras
import tfbf16
for path, K in zip(sys.argv[1:], (keras, tf_keras)):
    model = K.models.load_model(path)
    assert isinstance(model.optimizer, tfbf16.optimizers.BF16Weights), type(model.optimizer)
    print("LOADED", K.__name__, model.optimizer.update_rounding, len(model.optimizer.compensations))
"""


@pytest.mark.slow
def test_a_fresh_process_loads_saved_models_with_their_optimizer(tmp_path):
    x, y = _data()
    paths = []
    for K in (keras, tf_keras):
        model = _fit_model(K, BF16Weights(K.optimizers.Adagrad(0.05), "kahan"))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        paths.append(str(tmp_path / f"{K.__name__}.keras"))
        model.save(paths[-1])
    done = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, *paths],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # (A buffer per kernel and bias of the 2 layers.)
    assert "LOADED keras kahan 4" in done.stdout and "LOADED tf_keras kahan 4" in done.stdout
