"""Saving and reloading wrapped models keeps the emulation, bit for bit.

A reloaded model must still contain `BF16Wrapper` layers with the same
settings (same `tfbf16.summary`), give bit-identical outputs, and differ
from the FP32 model (so a silent FP32 reload, the failure of other BF16
emulation libraries, is caught).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tfbf16.summary import summary_rows
from tests.bf16_bits import assert_bits_equal


def _inputs(seed=0, n=3):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    ids = rng.integers(1, 20, (n, 5)).astype(np.int32)
    return [image, ids]


def _model(K, extra=None):
    """Dense, Conv2D, LSTM and Embedding in one functional model."""
    K.utils.set_random_seed(0)
    image = K.Input((6, 6, 1), name="image")
    ids = K.Input((5,), dtype="int32", name="ids")
    x = K.layers.Conv2D(3, 3, activation="relu", name="conv")(image)
    x = K.layers.Flatten(name="flat")(x)
    e = K.layers.Embedding(20, 4, name="embed")(ids)
    e = K.layers.LSTM(4, name="lstm")(e)
    x = K.layers.Concatenate(name="concat")([x, e])
    if extra is not None:
        x = extra(x)
    x = K.layers.Dense(5, activation="relu", name="hidden")(x)
    return K.Model([image, ids], K.layers.Dense(2, name="out")(x), name="net")


# A non-default set-up, so that the settings themselves must survive.
POLICY = dict(layer_roundings={"hidden": "trunc"}, round_weight_gradients=True)


def _wrapped(K, extra=None):
    model = _model(K, extra)
    wrapped = tfbf16.wrap(model, "rne", policy=tfbf16.BF16Policy(**POLICY))
    wrapped.compile(optimizer=K.optimizers.SGD(0.01), loss="mse")
    x = _inputs()
    wrapped.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0)  # non-initial weights
    return model, wrapped, x


def _rows(model):
    return [(r["layer"].split("/", 1)[-1], r["class"], r["emulated"], r["rounding"])
            for r in summary_rows(model)]


def check_reloaded(reloaded, wrapped, fp32, x):
    wrappers = [l for l in reloaded.layers if isinstance(l, tfbf16.BF16Wrapper)]
    assert {l.name for l in wrappers} >= {"conv", "embed", "lstm", "hidden", "out"}
    assert _rows(reloaded) == _rows(wrapped)
    settings = {l.name: l.settings for l in wrappers}
    assert settings["hidden"].rounding == "trunc" and settings["conv"].rounding == "rne"
    assert settings["out"].weight_gradients is True
    out = np.asarray(reloaded(x))
    assert_bits_equal(out, wrapped(x), "reloaded output")
    assert not np.array_equal(out, np.asarray(fp32(x))), "the reloaded model runs FP32"


def check_gradients_equal(reloaded, wrapped, x):
    """The backward pass of the reloaded model is the emulated one too."""
    grads = []
    for model in (wrapped, reloaded):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) * 1.1)
        grads.append(tape.gradient(loss, model.trainable_weights))
    for a, b in zip(*grads):
        assert_bits_equal(tf.convert_to_tensor(b), tf.convert_to_tensor(a), "gradient")


# ---------------------------------------------------------------- Keras 3


def test_keras3_dot_keras_round_trip(tmp_path):
    fp32, wrapped, x = _wrapped(keras)
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    reloaded = keras.models.load_model(path)
    check_reloaded(reloaded, wrapped, fp32, x)
    check_gradients_equal(reloaded, wrapped, x)
    # Unwrapping the reloaded model gives the FP32 model back.
    assert_bits_equal(tfbf16.unwrap(reloaded)(x), fp32(x), "unwrapped after reload")
    # The reloaded model keeps training (compiled state restored).
    history = reloaded.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_keras3_weights_file_round_trip(tmp_path):
    fp32, wrapped, x = _wrapped(keras)
    path = str(tmp_path / "w.weights.h5")
    wrapped.save_weights(path)
    fresh = tfbf16.wrap(_model(keras), policy=tfbf16.BF16Policy(**POLICY))  # untrained
    assert not np.array_equal(np.asarray(fresh(x)), np.asarray(wrapped(x)))
    fresh.load_weights(path)
    assert_bits_equal(fresh(x), wrapped(x), "weights reloaded into a wrapped model")


# ---------------------------------------------------------------- tf_keras


def _cross():
    import tensorflow_recommenders as tfrs

    return tfrs.layers.dcn.Cross(projection_dim=2, name="cross")




@pytest.mark.parametrize(
    "fmt, with_cross",
    [
        ("keras", False),
        ("keras", True),
        ("h5", False),
        ("h5", True),
    ],
)
def test_tf_keras_round_trip(tmp_path, fmt, with_cross):
    fp32, wrapped, x = _wrapped(tf_keras, extra=(lambda t: _cross()(t)) if with_cross else None)
    if with_cross:
        assert "cross" in {l.name for l in wrapped.layers if isinstance(l, tfbf16.BF16Wrapper)}
    path = str(tmp_path / f"wrapped.{fmt}")
    wrapped.save(path)
    if with_cross:
        # The FP32 model with Cross reloads from this format without help.
        fp32.save(str(tmp_path / f"fp32.{fmt}"))
        tf_keras.models.load_model(str(tmp_path / f"fp32.{fmt}"))
    reloaded = tf_keras.models.load_model(path)
    check_reloaded(reloaded, wrapped, fp32, x)
    check_gradients_equal(reloaded, wrapped, x)
    assert_bits_equal(tfbf16.unwrap(reloaded)(x), fp32(x), "unwrapped after reload")
    history = reloaded.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_tf_keras_saved_model_round_trip_and_serving_signature(tmp_path):
    """One SavedModel (tracing it is the slow part), loaded back two ways."""
    fp32, wrapped, x = _wrapped(tf_keras, extra=lambda t: _cross()(t))
    path = str(tmp_path / "saved")
    wrapped.save(path, save_format="tf")
    # 1. As a Keras model: the wrappers come back, settings and all.
    reloaded = tf_keras.models.load_model(path)
    check_reloaded(reloaded, wrapped, fp32, x)
    check_gradients_equal(reloaded, wrapped, x)
    assert_bits_equal(tfbf16.unwrap(reloaded)(x), fp32(x), "unwrapped after reload")
    history = reloaded.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    # 2. As a plain TensorFlow SavedModel: the traced serving graph emulates.
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (out,) = serve(image=tf.constant(x[0]), ids=tf.constant(x[1])).values()
    assert_bits_equal(out, wrapped(x), "served output")
    assert not np.array_equal(out.numpy(), fp32(x).numpy())
