"""Switching a wrapped model's rounding at run time, without retracing."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16


def _models(K):
    K.utils.set_random_seed(0)
    model = K.Sequential([K.Input((8,)), K.layers.Dense(8, name="first"), K.layers.Dense(1, name="last")])
    return model, tfbf16.wrap(model, "rne")


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_set_rounding_changes_results_without_retracing(K):
    model, wrapped = _models(K)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    traces = []

    @tf.function
    def forward(t):
        traces.append(1)
        return wrapped(t)

    results = {}
    for rounding in ["rne", "trunc", "fp32", "rne"]:
        tfbf16.set_rounding(wrapped, rounding)
        results.setdefault(rounding, []).append(forward(x).numpy())
    assert len(traces) == 1
    np.testing.assert_array_equal(results["rne"][0], results["rne"][1])
    # Compared in graph mode on both sides: grappler fuses MatMul+BiasAdd in
    # graphs, which can differ from eager execution in the last bit.
    np.testing.assert_array_equal(results["fp32"][0], tf.function(model)(x).numpy())
    assert not np.array_equal(results["trunc"][0], results["rne"][0])


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_switching_traced_layers_to_stochastic_retraces_the_keras_functions(K):
    # Layers created with "rne" are traced without stochastic rounding (its
    # random bits would slow every rounding). Switching them to "stochastic"
    # after fit traced them rebuilds the model's train/test/predict
    # functions, so fit rounds stochastically; a stale trace of one's own
    # gives NaN, and the wrapper alone refuses.
    model, wrapped = _models(K)
    # Building the model symbolically traces nothing that runs: no warning.
    fresh = tfbf16.wrap(K.Model(model.inputs, model.outputs), "rne")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfbf16.set_rounding(fresh, "stochastic")
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 1)).astype("float32")
    wrapped.compile(optimizer=K.optimizers.SGD(0.01), loss="mse")
    wrapped.fit(x, y, epochs=1, verbose=0)
    wrapped.predict(x, verbose=0)
    own = tf.function(lambda t: wrapped(t))
    before_switch = own(x).numpy()
    old_train_function = wrapped.train_function
    first = next(l for l in wrapped.layers if isinstance(l, tfbf16.BF16Wrapper))
    # A refused switch changes nothing (the switch below must still retrace).
    with pytest.raises(ValueError, match="Unknown rounding 'bogus'"):
        tfbf16.set_rounding(wrapped, "bogus", grad_rounding="stochastic")
    with pytest.raises(ValueError, match="traced without stochastic rounding"):
        first.set_rounding("stochastic")
    with pytest.warns(UserWarning, match="retraced"):
        tfbf16.set_rounding(wrapped, "stochastic")
    assert wrapped.train_function is not old_train_function
    assert np.isnan(own(x).numpy()).all()  # the stale trace says so
    # Rebuilt functions round stochastically: two predictions differ, both
    # are BF16 values near the RNE ones.
    first_run, second_run = (wrapped.predict(x, verbose=0) for _ in range(2))
    assert not np.array_equal(first_run, second_run)
    np.testing.assert_allclose(first_run, before_switch, rtol=0.05, atol=0.05)
    history = wrapped.fit(x, y, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    # Switching back and forth needs no retrace from now on.
    train_function = wrapped.train_function
    for rounding in ("rne", "stochastic", "trunc"):
        tfbf16.set_rounding(wrapped, rounding)
    assert wrapped.train_function is train_function


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_set_rounding_of_named_layers_and_summary(K):
    _, wrapped = _models(K)
    changed = tfbf16.set_rounding(wrapped, "fp32", layers=["last"])
    assert changed == ["last"]
    from tfbf16.summary import summary_rows

    rows = {row["layer"].split("/")[-1]: row["rounding"] for row in summary_rows(wrapped)}
    assert rows == {"first": "rne (grad: rne)", "last": "fp32 (grad: fp32)"}
    with pytest.raises(ValueError, match="No wrapped layer"):
        tfbf16.set_rounding(wrapped, "rne", layers=["nothing_here"])
    with pytest.raises(ValueError, match="Valid roundings"):
        tfbf16.set_rounding(wrapped, "round_up")


@pytest.mark.parametrize(
    "K, fmt",
    [(keras, "keras"), (tf_keras, "keras"), (tf_keras, "h5"), (tf_keras, "tf")],
    ids=["keras3-keras", "tf_keras-keras", "tf_keras-h5", "tf_keras-savedmodel"],
)
def test_rounding_in_force_survives_save_and_reload(tmp_path, K, fmt):
    _, wrapped = _models(K)
    tfbf16.set_rounding(wrapped, "trunc", layers=["first"])
    tfbf16.set_rounding(wrapped, "fp32", grad_rounding="rne", layers=["last"])
    x = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    expected = wrapped(x).numpy()
    path = str(tmp_path / ("m" if fmt == "tf" else f"m.{fmt}"))
    if fmt == "tf":
        wrapped.save(path, save_format="tf")
    else:
        wrapped.save(path)
    reloaded = K.models.load_model(path)
    np.testing.assert_array_equal(reloaded(x).numpy(), expected)
    from tfbf16.summary import summary_rows

    assert [r["rounding"] for r in summary_rows(reloaded)] == [
        "trunc (grad: trunc)", "fp32 (grad: rne)"]
    # The rounding is no weight of the model (nor of the reloaded one).
    assert len(reloaded.weights) == len(wrapped.weights) == 4
    # And it still switches without retracing after the reload.
    tfbf16.set_rounding(reloaded, "rne")
    assert not np.array_equal(reloaded(x).numpy(), expected)


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_rounding_state_is_no_weight(K):
    model, wrapped = _models(K)
    assert [id(v) for v in wrapped.weights] == [id(v) for v in model.weights]
    layer = wrapped.layers[0]
    assert isinstance(layer.rounding_code, tf.Variable)
    assert layer.rounding_code.dtype == tf.int32
    backend = tfbf16.backends.backend_of(wrapped)
    held = {id(backend.tf_variable(v)) for v in wrapped.variables}
    assert id(layer.rounding_code) not in held and id(layer.grad_rounding_code) not in held
    assert layer.current_rounding() == ("rne", "rne")
