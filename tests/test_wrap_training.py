"""Training wrapped models: custom loops, XLA, MirroredStrategy, concurrent
calls from several threads, masks, `training=` flags, native bfloat16 mode and
the hardware probe."""

import threading
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tfbf16.summary import summary_rows
from tests.bf16_bits import assert_bits_equal, is_bf16, not_bf16, rnd

FLAVOURS = {"keras3": keras, "tf_keras": tf_keras}



def mlp(K, seed=0, hidden=8):
    K.utils.set_random_seed(seed)
    return K.Sequential([
        K.Input((4,)),
        K.layers.Dense(hidden, activation="tanh", name="hidden"),
        K.layers.Dense(1, name="out"),
    ])


def regression_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x @ np.array([[0.5], [-1.0], [2.0], [0.25]], np.float32)).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- custom loop


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_gradient_tape_loop_gradients_are_emulated_and_loss_decreases(flavour):
    K = FLAVOURS[flavour]
    model = mlp(K)
    wrapped = tfbf16.wrap(model)
    x, y = regression_data()
    hidden, out = model.get_layer("hidden"), model.get_layer("out")

    # First step: the gradients equal a manual BF16 emulation of the MLP.
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(wrapped(x) - y))
    grads = tape.gradient(loss, wrapped.trainable_weights)
    xv, yv = tf.constant(x), tf.constant(y)
    wv = [tf.constant(rnd(v.numpy())) for v in (hidden.kernel, hidden.bias, out.kernel, out.bias)]
    q = lambda t: tfbf16.quantize(t, "rne", "rne")  # noqa: E731
    with tf.GradientTape() as tape:
        tape.watch(wv)
        # Each layer: rounded inputs and weights; the gradient arriving at its
        # output and the one leaving through its input are rounded.
        h = _round_gradient_only(tf.tanh(tf.nn.bias_add(tf.matmul(q(xv), wv[0]), wv[1])))
        pred = _round_gradient_only(tf.nn.bias_add(tf.matmul(q(h), wv[2]), wv[3]))
        ref_loss = tf.reduce_mean(tf.square(pred - yv))
    ref_grads = tape.gradient(ref_loss, wv)
    assert_bits_equal(loss, ref_loss, "loss")
    # Keras orders the weights hidden.kernel, hidden.bias, out.kernel, out.bias.
    for g, r, what in zip(grads, ref_grads, ("hidden kernel", "hidden bias", "out kernel", "out bias")):
        assert_bits_equal(g, r, what)

    optimizer = K.optimizers.SGD(0.05)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(wrapped(x, training=True) - y))
        grads = tape.gradient(loss, wrapped.trainable_weights)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_weights))
        return loss

    losses = [float(step()) for _ in range(30)]
    assert losses[-1] < 0.3 * losses[0], losses
    # Master weights stay FP32 (not snapped to bfloat16 values).
    for variable in model.trainable_weights:
        assert tf.as_dtype(variable.dtype) == tf.float32
    assert not is_bf16(hidden.kernel.numpy())


def _round_gradient_only(t):
    @tf.custom_gradient
    def identity(v):
        return tf.identity(v), lambda g: tfbf16.round_bf16(g)

    return identity(t)


# ---------------------------------------------------------------- fit / evaluate / predict


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_fit_evaluate_predict(flavour):
    K = FLAVOURS[flavour]
    wrapped = tfbf16.wrap(mlp(K))
    x, y = regression_data()
    wrapped.compile(optimizer=K.optimizers.Adam(0.05), loss="mse")
    history = wrapped.fit(x, y, batch_size=8, epochs=5, verbose=0).history["loss"]
    assert history[-1] < history[0]
    evaluated = wrapped.evaluate(x, y, batch_size=32, verbose=0)
    direct = float(np.mean((wrapped(x).numpy() - y) ** 2))
    np.testing.assert_allclose(evaluated, direct, rtol=1e-5)
    np.testing.assert_allclose(wrapped.predict(x, batch_size=32, verbose=0), wrapped(x), rtol=1e-6)


# ---------------------------------------------------------------- XLA


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_jit_compiled_fit_matches_non_jit_fit(flavour):
    K = FLAVOURS[flavour]
    x, y = regression_data()
    results = {}
    for jit in (False, True):
        model = mlp(K, seed=3)
        wrapped = tfbf16.wrap(model)
        wrapped.compile(optimizer=K.optimizers.SGD(0.05), loss="mse", jit_compile=jit)
        history = wrapped.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
        results[jit] = (history["loss"], [v.numpy() for v in model.trainable_weights], wrapped(x).numpy())
    (loss0, w0, y0), (loss1, w1, y1) = results[False], results[True]
    np.testing.assert_allclose(loss1, loss0, rtol=1e-3)
    for a, b in zip(w1, w0):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(y1, y0, rtol=1e-3, atol=1e-4)
    # The jit-trained model still emulates: FP32 would give different outputs.
    unwrapped = tfbf16.unwrap(tfbf16.wrap(mlp(K, seed=3)))
    assert not np.allclose(y1, unwrapped(x).numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_xla_forward_is_bit_exact_emulation(flavour):
    K = FLAVOURS[flavour]
    model = mlp(K, seed=4)
    wrapped = tfbf16.wrap(model)
    x = not_bf16(np.random.default_rng(5), (3, 4))
    y_eager = wrapped(x).numpy()
    y_xla = tf.function(lambda t: wrapped(t), jit_compile=True)(tf.constant(x)).numpy()
    hidden = model.get_layer("hidden")
    # The first layer under XLA against an XLA reference (same kernels).
    first = tfbf16.wrap(K.Sequential([K.Input((4,)), hidden]))
    kernel, bias = tf.constant(rnd(hidden.kernel.numpy())), tf.constant(rnd(hidden.bias.numpy()))
    ref = tf.function(
        lambda t: tf.tanh(tf.nn.bias_add(tf.matmul(t, kernel), bias)), jit_compile=True
    )(tf.constant(rnd(x))).numpy()
    got = tf.function(lambda t: first(t), jit_compile=True)(tf.constant(x)).numpy()
    assert_bits_equal(got, ref, "XLA-compiled wrapped layer")
    np.testing.assert_allclose(y_xla, y_eager, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- MirroredStrategy


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_mirrored_strategy_fit(flavour):
    K = FLAVOURS[flavour]
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest splits the CPU into 2 logical devices"
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    assert strategy.num_replicas_in_sync == 2
    x, y = regression_data()
    with strategy.scope():
        model = mlp(K, seed=6)
        wrapped = tfbf16.wrap(model)
        wrapped.compile(optimizer=K.optimizers.SGD(0.05), loss="mse")
    history = wrapped.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    # Same training on one device: same result up to the all-reduce order.
    single = mlp(K, seed=6)
    single_wrapped = tfbf16.wrap(single)
    single_wrapped.compile(optimizer=K.optimizers.SGD(0.05), loss="mse")
    single_history = single_wrapped.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(history, single_history.history["loss"], rtol=1e-3)
    for a, b in zip(model.trainable_weights, single.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- concurrency

# name -> (factory(K), input shapes): layers whose emulation reaches inside
# (GRU: tfbf16's step and the bypass of the fused kernel; MultiHeadAttention:
# projections, attention einsums and softmax; tf_keras: weight attributes).
CONCURRENT_LAYERS = {
    "GRU": (lambda K: K.layers.GRU(3, return_sequences=True), [(2, 4, 5)]),
    "MultiHeadAttention": (lambda K: K.layers.MultiHeadAttention(2, 4), [(2, 3, 8), (2, 5, 8)]),
}


def _concurrent_layer(K, name):
    factory, shapes = CONCURRENT_LAYERS[name]
    K.utils.set_random_seed(zlib.crc32(name.encode()))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    inputs = [tf.constant(not_bf16(rng, shape)) for shape in shapes]
    layer = factory(K)
    layer(*inputs)
    return layer, inputs


def _run_together(jobs):
    """Runs the callables in threads released at once; returns their results."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(index, job):
        try:
            barrier.wait()
            results[index] = np.asarray(job())
        except Exception as error:  # noqa: BLE001  re-raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("name", sorted(CONCURRENT_LAYERS))
def test_concurrent_calls_of_one_wrapper_equal_single_threaded_ones(flavour, name):
    """Threads tracing and running one wrapper, and its FP32 layer, at once."""
    K = FLAVOURS[flavour]
    layer, inputs = _concurrent_layer(K, name)
    wrapper = tfbf16.BF16Wrapper(layer)
    expected = {
        "emulated eager": np.asarray(wrapper(*inputs)),
        "fp32 eager": np.asarray(layer(*inputs)),
        "emulated graph": np.asarray(tf.function(lambda *t: wrapper(*t))(*inputs)),
        "fp32 graph": np.asarray(tf.function(lambda *t: layer(*t))(*inputs)),
    }
    assert not np.array_equal(expected["emulated eager"], expected["fp32 eager"])

    def job(kind):
        if kind.endswith("graph"):  # a fresh function: traced in the thread
            target = wrapper if kind.startswith("emulated") else layer
            return lambda: tf.function(lambda *t: target(*t))(*inputs)
        return lambda: (wrapper if kind.startswith("emulated") else layer)(*inputs)

    kinds = ["emulated graph", "emulated graph", "fp32 graph", "emulated eager",
             "fp32 eager", "emulated eager"]
    for _ in range(2):
        for kind, result in zip(kinds, _run_together([job(k) for k in kinds])):
            assert_bits_equal(result, expected[kind], f"{kind} in a thread")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_mirrored_replicas_run_one_wrapper_like_a_single_device(flavour):
    K = FLAVOURS[flavour]
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        layer, _ = _concurrent_layer(K, "GRU")
        wrapper = tfbf16.BF16Wrapper(layer)
    x = tf.constant(not_bf16(np.random.default_rng(17), (4, 4, 5)))

    def step(t):
        return wrapper(t), layer(t)

    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: x[2 * context.replica_id_in_sync_group:][:2]
    )
    emulated, fp32 = tf.function(lambda v: strategy.run(step, args=(v,)))(per_replica)
    single = tf.function(step)
    for replica, (e, f) in enumerate(zip(strategy.experimental_local_results(emulated),
                                         strategy.experimental_local_results(fp32))):
        expected_e, expected_f = single(x[2 * replica:][:2])
        assert_bits_equal(e, expected_e, f"replica {replica}, emulated")
        assert_bits_equal(f, expected_f, f"replica {replica}, FP32")
        assert not np.array_equal(np.asarray(e), np.asarray(f))


# ---------------------------------------------------------------- masks, training=


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_mask_from_embedding_reaches_wrapped_lstm(flavour):
    K = FLAVOURS[flavour]
    K.utils.set_random_seed(7)
    model = K.Sequential([
        K.Input((None,), dtype="int32"),
        K.layers.Embedding(10, 4, mask_zero=True),
        K.layers.LSTM(3, return_sequences=True),
        K.layers.LSTM(2),
    ])
    wrapped = tfbf16.wrap(model)
    padded = np.array([[3, 5, 0, 0], [2, 0, 0, 0]], np.int32)
    more_padding = np.pad(padded, [(0, 0), (0, 3)])
    # With the mask, extra padding changes nothing (same batch, same step
    # shapes: bit-identical), as in the FP32 model.
    assert_bits_equal(model(more_padding), model(padded), "FP32 model")
    out = wrapped(padded).numpy()
    assert_bits_equal(wrapped(more_padding), out, "wrapped model")
    assert not np.array_equal(out, model(padded).numpy())


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_training_flag_reaches_wrapped_batch_normalization(flavour):
    K = FLAVOURS[flavour]
    K.utils.set_random_seed(8)
    model = K.Sequential([K.Input((4,)), K.layers.Dense(4, name="fc"), K.layers.BatchNormalization(name="bn")])
    wrapped = tfbf16.wrap(model)
    x = (not_bf16(np.random.default_rng(9), (16, 4)) * 3 + 2).astype(np.float32)
    train_out = wrapped(x, training=True).numpy()
    # Batch statistics: each feature is normalized to mean ~0.
    np.testing.assert_allclose(train_out.mean(axis=0), 0, atol=1e-2)
    bn = model.get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(x, np.zeros((16, 4), np.float32), batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(bn.moving_mean.numpy(), before), "fit did not update BN statistics"
    infer_out = wrapped(x, training=False).numpy()
    assert not np.allclose(infer_out.mean(axis=0), 0, atol=1e-2)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_training_flag_reaches_dropout_inside_wrapped_layer(flavour):
    K = FLAVOURS[flavour]
    K.utils.set_random_seed(10)
    layer = K.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5)
    x = not_bf16(np.random.default_rng(11), (2, 6, 8))
    layer(x, x)  # build (wrapping an unbuilt MHA is tested in test_wrap_layers)
    wrapper = tfbf16.BF16Wrapper(layer)
    infer = [wrapper(x, x, training=False).numpy() for _ in range(2)]
    train = [wrapper(x, x, training=True).numpy() for _ in range(2)]
    assert_bits_equal(infer[0], infer[1], "inference is deterministic")
    assert not np.array_equal(train[0], infer[0]), "training=True did not apply dropout"
    assert not np.array_equal(train[0], train[1])


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_training_flag_reaches_dropout_between_wrapped_layers(flavour):
    K = FLAVOURS[flavour]
    K.utils.set_random_seed(12)
    model = K.Sequential([K.Input((8,)), K.layers.Dense(8), K.layers.Dropout(0.5), K.layers.Dense(2)])
    wrapped = tfbf16.wrap(model)
    x = not_bf16(np.random.default_rng(13), (4, 8))
    assert_bits_equal(wrapped(x, training=False), wrapped(x), "default is inference")
    assert not np.array_equal(wrapped(x, training=True).numpy(), wrapped(x, training=False).numpy())


# ---------------------------------------------------------------- native mode


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_native_mode_computes_in_bfloat16_with_fp32_variables_and_outputs(flavour):
    K = FLAVOURS[flavour]
    K.utils.set_random_seed(14)
    model = K.Sequential([
        K.Input((4,)), K.layers.Dense(8, activation="relu", name="hidden"),
        K.layers.BatchNormalization(name="bn"), K.layers.Dense(1, name="out"),
    ])
    wrapped = tfbf16.wrap(model, "native")
    rows = {r["layer"].split("/")[-1]: r for r in summary_rows(wrapped)}
    assert rows["hidden"]["rounding"] == "native" and rows["hidden"]["tensors"] == "computes in bfloat16"
    x, y = regression_data()
    out = wrapped(x)
    assert out.dtype == tf.float32
    # The last Dense computed in bfloat16: its FP32 output holds bf16 values.
    assert is_bf16(out.numpy())
    hidden = model.get_layer("hidden")
    h = wrapped.layers[0](x)
    assert h.dtype == tf.float32 and is_bf16(h.numpy())
    expected = tf.nn.relu(
        tf.matmul(tf.cast(x, tf.bfloat16), tf.cast(hidden.kernel, tf.bfloat16))
        + tf.cast(hidden.bias, tf.bfloat16)
    )
    assert_bits_equal(h, tf.cast(expected, tf.float32), "native Dense")
    wrapped.compile(optimizer=K.optimizers.Adam(0.05), loss="mse")
    history = wrapped.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    for variable in model.weights:
        assert tf.as_dtype(variable.dtype) == tf.float32, variable.name
    assert not is_bf16(hidden.kernel.numpy())  # FP32 master weights
    assert wrapped.predict(x, verbose=0).dtype == np.float32


def test_native_mode_trains_a_stacked_tfrs_dcn():
    import tensorflow_recommenders as tfrs

    tf_keras.utils.set_random_seed(15)
    inputs = tf_keras.Input((6,))
    x = tfrs.layers.dcn.Cross(name="cross0")(inputs)
    x = tfrs.layers.dcn.Cross(projection_dim=3, name="cross1")(inputs, x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1, name="logit")(x))
    wrapped = tfbf16.wrap(model, "native")
    rng = np.random.default_rng(16)
    x_data = rng.standard_normal((16, 6)).astype(np.float32)
    y_data = rng.integers(0, 2, (16, 1)).astype(np.float32)
    out = wrapped(x_data)
    assert out.dtype == tf.float32 and is_bf16(out.numpy())
    wrapped.compile(optimizer="adam", loss=tf_keras.losses.BinaryCrossentropy(from_logits=True))
    history = wrapped.fit(x_data, y_data, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_native_rejects_truncation_and_stochastic_rounding(flavour):
    K = FLAVOURS[flavour]
    model = K.Sequential([K.Input((2,)), K.layers.Dense(2, name="d")])
    for rounding in ("trunc", "stochastic"):
        with pytest.raises(ValueError, match="natively"):
            tfbf16.wrap(model, "native", grad_rounding=rounding)
        with pytest.raises(ValueError):
            tfbf16.BF16Wrapper(K.layers.Dense(2), rounding="native", grad_rounding=rounding)


# ---------------------------------------------------------------- hardware


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_bf16_hardware_matches_cpuinfo(tmp_path):
    hardware = tfbf16.bf16_hardware()
    assert isinstance(hardware, tfbf16.BF16Hardware)
    accelerators = tf.config.list_physical_devices("GPU") + tf.config.list_logical_devices("TPU")
    if not accelerators:
        expected = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
        assert bool(hardware) is expected
        assert hardware.available is expected
        assert bool(hardware.devices) is expected
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    with_amx = tfbf16.bf16_hardware(str(fake))
    assert with_amx and any("amx_bf16" in d for d in with_amx.devices)
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    if not accelerators:
        assert not tfbf16.bf16_hardware(str(fake))
        assert not tfbf16.bf16_hardware(str(tmp_path / "missing"))
