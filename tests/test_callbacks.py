"""tfbf16.callbacks: numbers on layers with known values, no retrace, recovery."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tfbf16 import callbacks as cb
from tfbf16.utils.tensorboard import read_events

FLAVOURS = pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])


def _bf16(values):
    """The ml_dtypes RNE reference, as float64."""
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def _relative_error(values):
    exact = np.asarray(values, np.float32).astype(np.float64)
    return np.linalg.norm(_bf16(values) - exact) / np.linalg.norm(exact)


def _sum_product_loss(y_true, y_pred):
    """Per-sample sum(y_pred * y_true): the gradient at y_pred is y_true / batch."""
    return tf.reduce_sum(y_pred * y_true, axis=-1)


class _Recorder:
    """A plain (duck-typed) callback: calls `fn(model)` before each batch."""

    def __init__(self, K, fn):
        class Recording(K.callbacks.Callback):
            def on_train_batch_begin(inner, batch, logs=None):
                self.values.append(fn(inner.model))

        self.values = []
        self.callback = Recording()


def test_callbacks_are_callbacks_of_both_keras_versions():
    for callback in [cb.PrecisionMonitor(), cb.PrecisionSchedule({0: "rne"}),
                     cb.SensitivityProbe((np.zeros((1, 1)), np.zeros((1, 1)))),
                     cb.NonFiniteGuard()]:
        assert isinstance(callback, keras.callbacks.Callback)
        assert isinstance(callback, tf_keras.callbacks.Callback)


def test_get_config_rebuilds_each_callback():
    callbacks = [
        cb.PrecisionMonitor(every_n_steps=7, log_dir="logs", rounding="trunc"),
        cb.PrecisionSchedule({3: {"dense.*": "trunc"}, 0: "fp32"}, unit="step",
                             grad_rounding="rne", verbose=1),
        cb.SensitivityProbe((np.zeros((1, 1)), np.zeros((1, 1))), roundings=("rne", "trunc"),
                            layers=["first"], every_n_steps=5, batch_size=32),
        cb.NonFiniteGuard(switch_to_fp32=True, snapshot_every=4, raise_error=True, verbose=0),
    ]
    for callback in callbacks:
        config = callback.get_config()
        if isinstance(callback, cb.SensitivityProbe):  # the data is not configuration
            rebuilt = type(callback)(callback.validation_data, **config)
        else:
            rebuilt = type(callback)(**config)
        assert rebuilt.get_config() == config, type(callback).__name__
    assert callbacks[1].get_config()["schedule"] == {0: "fp32", 3: {"dense.*": "trunc"}}
    assert callbacks[2].get_config()["roundings"] == ["rne", "trunc"]


@FLAVOURS
def test_callbacks_take_their_model_from_either_callback_list(K):
    wrapped = _guard_model(K)
    callbacks = [cb.PrecisionMonitor(), cb.PrecisionSchedule({0: "rne"}),
                 cb.SensitivityProbe((np.zeros((1, 4)), np.zeros((1, 1)))),
                 cb.NonFiniteGuard()]
    assert all(callback.model is None for callback in callbacks)
    K.callbacks.CallbackList(callbacks, model=wrapped)
    assert all(callback.model is wrapped for callback in callbacks)
    # tf_keras' Callback constructor resets validation_data; the probe keeps its data.
    assert callbacks[2].validation_data[0].shape == (1, 4)


def test_tensor_statistics_of_known_values():
    values = np.array([1.0, 1.00390625, 1e-39, -2.0, 3.4e38, np.inf, np.nan, 0.0, 3.14159],
                      np.float32)
    sums, histogram = cb.tensor_statistics(tf.constant(values))
    sums, histogram = sums.numpy(), histogram.numpy()
    count, sum_sq, sum_sq_err, underflow, overflow, nonfinite = sums
    assert (count, underflow, overflow, nonfinite) == (9, 1, 1, 2)
    # Values finite before and after rounding (3.4e38 rounds to Inf).
    kept = values[[0, 1, 2, 3, 7, 8]]
    exact = np.array([float.fromhex(v.hex()) for v in kept.astype(np.float64)])
    assert math.sqrt(sum_sq_err / sum_sq) == pytest.approx(
        np.linalg.norm(_bf16(kept) - exact) / np.linalg.norm(exact), rel=1e-12)
    # The subnormal's own error (1e-39 -> 1.0010069e-39) is counted exactly,
    # although TensorFlow's CPU arithmetic would flush it to zero.
    only_subnormal = cb.tensor_statistics(tf.constant([1e-39], tf.float32))[0].numpy()
    assert only_subnormal[2] > 0
    assert math.sqrt(only_subnormal[2] / only_subnormal[1]) == pytest.approx(
        _relative_error([1e-39]), rel=1e-9)
    # Exponent histogram of the 6 non-zero finite values: 1.0 and 1.0039 in
    # bin 127, -2.0 and 3.14 in bin 128, 1e-39 in bin 0, 3.4e38 in bin 254.
    assert histogram.sum() == 6
    assert histogram[127] == 2 and histogram[128] == 2 and histogram[0] == 1
    assert histogram[254] == 1
    cheap, none = cb.tensor_statistics(tf.constant(values), full=False)
    assert none is None and cheap.numpy()[0] == 9 and cheap.numpy()[5] == 2


def _known_model(K):
    """first (exact kernel) -> tiny (kernel 1e-39, subnormal), no biases."""
    model = K.Sequential([
        K.Input((4,)),
        K.layers.Dense(2, use_bias=False, name="first"),
        K.layers.Dense(2, use_bias=False, name="tiny"),
    ])
    exact_kernel = np.array([[0.5, 1.0], [-2.0, 0.75], [1.0, 1.0], [0.25, -1.0]], np.float32)
    model.get_layer("first").set_weights([exact_kernel])
    model.get_layer("tiny").set_weights([np.full((2, 2), 1e-39, np.float32)])
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(K.optimizers.SGD(0.0), loss=_sum_product_loss)
    return wrapped


@FLAVOURS
def test_precision_monitor_numbers_history_and_tensorboard(K, tmp_path):
    wrapped = _known_model(K)
    x = np.array([[1.00390625, 1.0, -2.0, 1e-39]], np.float32)
    y = np.array([[1.00390625, 3.0]], np.float32)  # = the gradient at tiny's outputs
    monitor = cb.PrecisionMonitor(every_n_steps=1, log_dir=str(tmp_path))
    history = wrapped.fit(x, y, epochs=2, verbose=0, callbacks=[monitor]).history
    expected = {
        # The first layer's kernel is exactly representable.
        "bf16/first/weights_rel_error": 0.0, "bf16/first/weights_underflow": 0.0,
        "bf16/first/inputs_rel_error": _relative_error(x),
        "bf16/first/inputs_underflow": 0.25,  # 1e-39 becomes a BF16 subnormal
        "bf16/first/inputs_overflow": 0.0, "bf16/first/inputs_nonfinite": 0.0,
        # Every weight of `tiny` is 1e-39: subnormal in BF16.
        "bf16/tiny/weights_underflow": 1.0,
        "bf16/tiny/weights_rel_error": _relative_error([1e-39]),
        "bf16/tiny/grads_rel_error": _relative_error(y),
        "bf16/tiny/grads_underflow": 0.0, "bf16/tiny/grads_nonfinite": 0.0,
    }
    for key, value in expected.items():
        assert history[key][0] == pytest.approx(value, rel=1e-9, abs=1e-15), key
        if "tiny/weights" not in key:  # the SGD step flushes subnormal weights to 0
            assert history[key][1] == pytest.approx(value, rel=1e-9, abs=1e-15), key
    assert [r["step"] for r in monitor.records] == [0, 1]
    # The instrumented training function is gone; the plain one is back.
    assert not getattr(wrapped.train_function, "tfbf16_instrumented", False)
    assert wrapped.train_function is not None
    events = read_events(tmp_path)
    assert [s for s, _, _ in events["bf16/tiny/grads_rel_error"]] == [0, 1]
    step, plugin, value = events["bf16/tiny/grads_rel_error"][0]
    assert plugin == "scalars" and value == pytest.approx(_relative_error(y), rel=1e-6)
    step, plugin, histogram = events["bf16/first/inputs_log2_magnitude"][0]
    assert plugin == "histograms" and histogram.shape[1] == 3
    assert histogram[:, 2].sum() == 4  # four non-zero finite inputs
    assert histogram[0, :2].tolist() == [-149.0, -126.0]  # the subnormal bin


def test_precision_monitor_overflow_nonfinite_and_interval():
    K = keras
    model = K.Sequential([K.Input((4,)), K.layers.Dense(1, use_bias=False, name="dense")])
    model.get_layer("dense").set_weights([np.array([[3.4e38], [1.0], [1.0], [1.0]], np.float32)])
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(K.optimizers.SGD(0.0), loss="mse")
    x = np.array([[3.4e38, np.inf, 1.0, np.nan]] * 3, np.float32)
    monitor = cb.PrecisionMonitor(every_n_steps=2)
    history = wrapped.fit(x, np.zeros((3, 1), np.float32), batch_size=1, epochs=1,
                          verbose=0, callbacks=[monitor]).history
    assert [r["step"] for r in monitor.records] == [0, 2]
    assert history["bf16/dense/inputs_overflow"] == [0.25]  # 3.4e38 -> Inf in BF16
    assert history["bf16/dense/inputs_nonfinite"] == [0.5]  # Inf and NaN
    first = monitor.records[0]
    assert first["bf16/dense/weights_overflow"] == 0.25
    assert first["bf16/dense/weights_rel_error"] == 0.0  # 1.0 is exact; Inf is excluded
    # The NaN loss made the weights NaN by step 2; the epoch logs are means.
    assert monitor.records[1]["bf16/dense/weights_nonfinite"] == 1.0
    assert history["bf16/dense/weights_nonfinite"] == [0.5]


def test_precision_monitor_numbers_do_not_depend_on_jit_compile():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    records = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="a"),
                                  keras.layers.Dense(1, name="b")])
        wrapped = tfbf16.wrap(model, "rne")
        wrapped.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=jit_compile)
        monitor = cb.PrecisionMonitor(every_n_steps=1)
        wrapped.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[monitor])
        records.append(monitor.records)
    assert [r["step"] for r in records[1]] == [0, 1]
    assert records[0] == records[1]
    assert records[1][1]["bf16/b/grads_rel_error"] > 0


def test_precision_monitor_requires_a_wrapped_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no tfbf16.BF16Wrapper"):
        model.fit(np.zeros((2, 2)), np.zeros((2, 1)), verbose=0,
                  callbacks=[cb.PrecisionMonitor()])
    with pytest.raises(ValueError, match="every_n_steps"):
        cb.PrecisionMonitor(every_n_steps=0)


class _CountTraces:
    """A layer that counts how often Python runs its call (i.e. traces)."""

    def __init__(self, K):
        counter = self

        class TraceCounter(K.layers.Layer):
            def call(self, inputs):
                counter.count += 1
                return inputs

        self.count = 0
        self.layer = TraceCounter()


def _schedule_model(K, seed=0):
    K.utils.set_random_seed(seed)
    counter = _CountTraces(K)
    inputs = K.Input((8,))
    hidden = K.layers.Dense(8, name="first")(counter.layer(inputs))
    model = K.Model(inputs, K.layers.Dense(1, name="last")(hidden))
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(K.optimizers.SGD(0.05), "mse")
    return wrapped, counter


@FLAVOURS
def test_schedule_changes_results_without_retracing(K):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    y = rng.normal(size=(16, 1)).astype(np.float32)
    fit = dict(batch_size=8, shuffle=False, verbose=0)

    scheduled, counter = _schedule_model(K)
    traces = _Recorder(K, lambda model: counter.count)
    history = scheduled.fit(x, y, epochs=3, callbacks=[
        cb.PrecisionSchedule({0: "fp32", 2: "rne"}), traces.callback], **fit).history
    # Traced once, before the first step's end; never again, across the switch.
    assert traces.values[1] == traces.values[-1] == counter.count

    manual, _ = _schedule_model(K)
    tfbf16.set_rounding(manual, "fp32")
    manual_loss = manual.fit(x, y, epochs=2, **fit).history["loss"]
    tfbf16.set_rounding(manual, "rne")
    manual_loss += manual.fit(x, y, epochs=1, **fit).history["loss"]
    np.testing.assert_array_equal(history["loss"], manual_loss)
    for a, b in zip(scheduled.get_weights(), manual.get_weights()):
        np.testing.assert_array_equal(a, b)

    fp32, _ = _schedule_model(K)
    tfbf16.set_rounding(fp32, "fp32")
    fp32_loss = fp32.fit(x, y, epochs=3, **fit).history["loss"]
    assert fp32_loss[:2] == history["loss"][:2]
    assert fp32_loss[2] != history["loss"][2]  # RNE from epoch 2 on changes the result


def test_schedule_by_step_and_named_layers():
    K = keras
    wrapped, _ = _schedule_model(K)
    roundings = _Recorder(K, lambda model: tuple(
        model.get_layer(name).current_rounding()[0] for name in ("first", "last")))
    schedule = cb.PrecisionSchedule({0: {"first": "trunc"}, 3: "fp32", 4: {"l.st": "rne"}},
                                    unit="step")
    x = np.zeros((6, 8), np.float32)
    wrapped.fit(x, np.zeros((6, 1), np.float32), batch_size=1, verbose=0,
                callbacks=[schedule, roundings.callback])
    assert roundings.values == [("trunc", "rne")] * 3 + [("fp32", "fp32")] + [("fp32", "rne")] * 2
    # Resumed training replays the entries up to the optimizer's step count.
    resumed, _ = _schedule_model(K)
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.optimizer.iterations.assign(4)
    roundings.values.clear()
    resumed.fit(x[:1], np.zeros((1, 1), np.float32), verbose=0,
                callbacks=[cb.PrecisionSchedule(schedule.schedule, unit="step"),
                           roundings.callback])
    assert roundings.values == [("fp32", "rne")]


def test_schedule_validation():
    with pytest.raises(ValueError, match="Valid roundings"):
        cb.PrecisionSchedule({0: "bf16"})
    with pytest.raises(ValueError, match="keys must be ints"):
        cb.PrecisionSchedule({-1: "rne"})
    with pytest.raises(ValueError, match="unit"):
        cb.PrecisionSchedule({0: "rne"}, unit="batch")
    assert cb.PrecisionSchedule({2: "rne", 0: "fp32"}).get_config()["schedule"] == {
        0: "fp32", 2: "rne"}


@FLAVOURS
def test_sensitivity_probe_logs_each_rounding_and_restores(K):
    wrapped, _ = _schedule_model(K)
    tfbf16.set_rounding(wrapped, "trunc", layers=["first"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    y = rng.normal(size=(16, 1)).astype(np.float32)
    probe = cb.SensitivityProbe((x, y), roundings=("fp32", "rne", "trunc"))
    history = wrapped.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[probe]).history
    assert len(history["sensitivity/trunc/loss"]) == 2
    # The previous, mixed roundings are back.
    assert wrapped.get_layer("first").current_rounding() == ("trunc", "trunc")
    assert wrapped.get_layer("last").current_rounding() == ("rne", "rne")
    # The last epoch's numbers are those of the final weights.
    measured = {}
    for rounding in ("fp32", "rne", "trunc"):
        tfbf16.set_rounding(wrapped, rounding)
        measured[rounding] = wrapped.evaluate(x, y, verbose=0)
        assert history[f"sensitivity/{rounding}/loss"][-1] == pytest.approx(
            measured[rounding], rel=1e-6)
    assert history["sensitivity/trunc/loss_delta"][-1] == pytest.approx(
        measured["trunc"] - measured["fp32"], rel=1e-5, abs=1e-9)
    assert measured["trunc"] != measured["fp32"]
    assert "sensitivity/fp32/loss_delta" not in history


def _guard_data():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 1.0, size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    return x, y


def _guard_model(K):
    K.utils.set_random_seed(3)
    model = K.Sequential([K.Input((4,)), K.layers.Dense(4, name="first"),
                          K.layers.Dense(1, name="last")])
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(K.optimizers.Adam(0.01), "mse")
    return wrapped


@FLAVOURS
def test_guard_names_layer_restores_weights_and_stops_on_nan_input(K):
    x, y = _guard_data()
    x[4, 2] = np.nan  # in the third batch of 2
    wrapped = _guard_model(K)

    class AfterEachStep(K.callbacks.Callback):  # runs before the guard
        states = []

        def on_train_batch_end(self, batch, logs=None):
            self.states.append((self.model.get_weights(),
                                [np.array(v) for v in self.model.optimizer.variables]))

    guard = cb.NonFiniteGuard(verbose=0)
    wrapped.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
                callbacks=[AfterEachStep(), guard])
    assert len(guard.events) == 1
    event = guard.events[0]
    assert (event["step"], event["layer"], event["stage"], event["action"]) == (
        2, "first", "inputs", "stop")
    assert len(AfterEachStep.states) == 3  # stopped after the bad step
    # The weights and optimizer state are those after the two good batches.
    good_weights, good_optimizer = AfterEachStep.states[1]
    bad_weights, _ = AfterEachStep.states[2]
    assert not all(np.isfinite(w).all() for w in bad_weights)
    for a, b in zip(wrapped.get_weights(), good_weights):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(wrapped.optimizer.variables, good_optimizer):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(wrapped.optimizer.iterations) == 2


def test_guard_refuses_an_optimizer_it_cannot_build_before_the_first_step():
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(1, name="d")])
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(tf_keras.optimizers.legacy.Adam(0.01), "mse")
    x, y = _guard_data()
    with pytest.raises(TypeError, match="legacy optimizers create theirs in the first step"):
        wrapped.fit(x, y, verbose=0, callbacks=[cb.NonFiniteGuard(verbose=0)])


def _overflow_model(K):
    """big (kernel 3.4e38: Inf in BF16, finite in FP32) -> x1e-38 -> head."""
    K.utils.set_random_seed(4)
    model = K.Sequential([
        K.Input((2,)),
        K.layers.Dense(1, use_bias=False, name="big"),
        K.layers.Rescaling(1e-38),
        K.layers.Dense(1, name="head"),
    ])
    model.get_layer("big").set_weights([np.full((2, 1), 3.4e38, np.float32)])
    wrapped = tfbf16.wrap(model, "rne")
    wrapped.compile(K.optimizers.SGD(0.01), "mse")
    return wrapped


@FLAVOURS
def test_guard_switches_the_overflowing_layer_to_fp32_and_goes_on(K):
    wrapped = _overflow_model(K)
    x = np.full((8, 2), 0.25, np.float32)
    y = np.ones((8, 1), np.float32)
    guard = cb.NonFiniteGuard(switch_to_fp32=True, verbose=0)
    history = wrapped.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[guard]).history
    assert [(e["step"], e["layer"], e["stage"], e["action"]) for e in guard.events] == [
        (0, "big", "forward", "fp32")]
    assert wrapped.get_layer("big").current_rounding() == ("fp32", "fp32")
    assert wrapped.get_layer("head").current_rounding() == ("rne", "rne")
    # Training went on: 8 steps, the bad one undone.
    assert int(wrapped.optimizer.iterations) == 7
    assert np.isfinite(history["loss"]).all()
    assert all(np.isfinite(w).all() for w in wrapped.get_weights())


def test_instrumented_custom_loop_monitor_and_guard_raise():
    """The recsys-style loop: a tape step, CallbackList, instrument()."""
    K = tf_keras
    x, y = _guard_data()
    wrapped = _guard_model(K)
    optimizer = K.optimizers.Adam(0.01)
    optimizer.build(wrapped.trainable_variables)
    loss_fn = K.losses.MeanSquaredError()

    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, wrapped(features, training=True))
        grads = tape.gradient(loss, wrapped.trainable_variables)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_variables))
        return loss

    step = cb.instrument(step, wrapped)
    monitor = cb.PrecisionMonitor(every_n_steps=1)
    guard = cb.NonFiniteGuard(optimizer=optimizer, raise_error=True, verbose=0)
    callbacks = K.callbacks.CallbackList([monitor, guard], model=wrapped)
    callbacks.on_train_begin()
    bad = x.copy()
    bad[6:] = np.inf
    with pytest.raises(cb.NonFiniteError, match="'first' received non-finite inputs") as error:
        for i in range(4):
            callbacks.on_train_batch_begin(i + 1)
            loss = step(bad[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
            callbacks.on_train_batch_end(i + 1, {"loss": loss})
    assert error.value.event["step"] == 3
    assert [r["step"] for r in monitor.records] == [0, 1, 2, 3]
    assert monitor.records[3]["bf16/first/inputs_nonfinite"] == 1.0
    assert monitor.records[0]["bf16/first/inputs_nonfinite"] == 0.0
    assert all(np.isfinite(w).all() for w in wrapped.get_weights())
    assert int(optimizer.iterations) == 3
