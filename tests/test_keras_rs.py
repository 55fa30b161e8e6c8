"""keras-rs (the Keras 3 recommenders library) layers under `tfbf16.wrap`.

`keras_rs.layers.FeatureCross` (DCN-V2's cross layer, full and low rank) and
`keras_rs.layers.DotInteraction` (DLRM) are emulated like
tensorflow-recommenders' `Cross`: the inputs of every product (the layer's
inputs, the weights, and the input of the low-rank factor's second matmul)
are BF16 values. Forward outputs are checked bit for bit against references
computed from ml_dtypes-rounded inputs and weights; gradients against the same
computation with `tfbf16.quantize` at each GEMM input (whose own exactness
test_rounding.py checks), with the rounding asked for. A Keras 3 DCN made of
keras-rs layers wraps, trains, saves and reloads with emulation intact.
keras-rs is optional: tfbf16 never imports it.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from tfbf16.policy import LayerRounding
from tfbf16.summary import summary_rows
from tests.bf16_bits import assert_bits_equal, not_bf16, rnd, trunc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAD_ROUNDINGS = {"rne": rnd, "trunc": trunc}


@pytest.fixture(scope="session")  # built once per test worker
def keras_rs():
    return pytest.importorskip(
        "keras_rs", reason="keras-rs is not installed (pip install tfbf16[keras-rs])"
    )


def _randomize(layer, rng):
    for variable in layer.weights:
        variable.assign(not_bf16(rng, tuple(variable.shape), 0.5))


def _with_rounded_weights(layer, fn):
    """`fn()` with the layer's weights set to their BF16 values (then restored)."""
    saved = [np.array(v.numpy()) for v in layer.weights]
    for variable, value in zip(layer.weights, saved):
        variable.assign(rnd(value))
    try:
        return fn()
    finally:
        for variable, value in zip(layer.weights, saved):
            variable.assign(value)


def _wrapped_forward_backward(wrapper, layer, inputs, upstream, call):
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(inputs)
        y = call(wrapper, inputs)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, inputs), tape.gradient(loss, layer.trainable_weights)


# ---------------------------------------------------------------- FeatureCross


@pytest.mark.parametrize("grad_rounding", sorted(GRAD_ROUNDINGS))
@pytest.mark.parametrize(
    "projection_dim, diag_scale, two_inputs",
    [(None, 0.0, False), (None, 0.5, True), (3, 0.0, True), (3, 0.5, False)],
)
@pytest.mark.parametrize("weight_gradients", [False, True])
def test_feature_cross_is_bf16_emulation(keras_rs, projection_dim, diag_scale, two_inputs,
                                         grad_rounding, weight_gradients):
    rng = np.random.default_rng(11)
    layer = keras_rs.layers.FeatureCross(projection_dim=projection_dim, diag_scale=diag_scale)
    x0, xl = not_bf16(rng, (4, 8)), not_bf16(rng, (4, 8))
    inputs = [x0, xl] if two_inputs else [x0]
    layer(*[tf.constant(t) for t in inputs])
    _randomize(layer, rng)
    upstream = not_bf16(rng, (4, 8))
    settings = LayerRounding("rne", grad_rounding, weight_gradients=weight_gradients)
    wrapper = tfbf16.BF16Wrapper(layer, settings=settings)
    y, dxs, dws = _wrapped_forward_backward(
        wrapper, layer, inputs, upstream, lambda f, t: f(*t))

    # Forward: everything a product reads is an ml_dtypes-rounded value.
    x0_r = tf.constant(rnd(x0))
    x_r = tf.constant(rnd(xl)) if two_inputs else x0_r
    def w(variable):
        return tf.constant(rnd(variable.numpy()))

    kernel, bias = w(layer.dense.kernel), w(layer.dense.bias)
    if projection_dim is None:
        product = tf.matmul(x_r, kernel) + bias
    else:
        down = tf.matmul(x_r, w(layer.down_proj_dense.kernel)).numpy()
        product = tf.matmul(tf.constant(rnd(down)), kernel) + bias
    if diag_scale:
        product = product + diag_scale * x_r
    assert_bits_equal(y, x0_r * product + x_r, "FeatureCross forward")

    # Backward: the same computation with the emulation op at every GEMM input.
    round_grad = GRAD_ROUNDINGS[grad_rounding]

    def q(t):
        return tfbf16.quantize(t, "rne", grad_rounding)

    def reference():
        watched = [tf.constant(t) for t in inputs]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(watched)
            x0_in = q(watched[0])
            x_in = q(watched[1]) if two_inputs else x0_in
            if projection_dim is None:
                product = layer.dense(q(x_in))
            else:
                product = layer.dense(q(layer.down_proj_dense(q(x_in))))
            if diag_scale:
                product = product + diag_scale * x_in
            out = x0_in * product + x_in
        upstream_r = tf.constant(round_grad(upstream))
        return (out.numpy(), tape.gradient(out, watched, output_gradients=upstream_r),
                tape.gradient(out, layer.trainable_weights, output_gradients=upstream_r))

    y_ref, dxs_ref, dws_ref = _with_rounded_weights(layer, reference)
    assert_bits_equal(y, y_ref, "FeatureCross forward (quantize reference)")
    for dx, dx_ref in zip(dxs, dxs_ref):
        assert_bits_equal(dx, round_grad(dx_ref.numpy()), "FeatureCross input gradient")
    assert len(dws) == len(dws_ref) == (2 if projection_dim is None else 3)
    for dw, dw_ref in zip(dws, dws_ref):
        expected = round_grad(dw_ref.numpy()) if weight_gradients else dw_ref.numpy()
        assert_bits_equal(dw, expected, "FeatureCross weight gradient")
    # The emulation changes the numbers.
    assert not np.array_equal(y, layer(*[tf.constant(t) for t in inputs]).numpy())


# ---------------------------------------------------------------- DotInteraction


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("skip_gather", [False, True])
@pytest.mark.parametrize("grad_rounding", sorted(GRAD_ROUNDINGS))
def test_dot_interaction_is_bf16_emulation(keras_rs, self_interaction, skip_gather, grad_rounding):
    rng = np.random.default_rng(12)
    layer = keras_rs.layers.DotInteraction(self_interaction=self_interaction,
                                           skip_gather=skip_gather)
    features = [not_bf16(rng, (3, 5)) for _ in range(4)]
    fp32 = layer([tf.constant(f) for f in features]).numpy()
    upstream = not_bf16(rng, fp32.shape)
    wrapper = tfbf16.BF16Wrapper(layer, rounding="rne", grad_rounding=grad_rounding)
    y, dxs, _ = _wrapped_forward_backward(wrapper, layer, features, upstream, lambda f, t: f(t))

    # The pairwise dot products of the ml_dtypes-rounded features, FP32.
    rounded = [tf.constant(rnd(f)) for f in features]
    round_grad = GRAD_ROUNDINGS[grad_rounding]
    with tf.GradientTape() as tape:
        tape.watch(rounded)
        y_ref = layer(rounded)
    dxs_ref = tape.gradient(y_ref, rounded, output_gradients=tf.constant(round_grad(upstream)))
    assert_bits_equal(y, y_ref, "DotInteraction forward")
    for dx, dx_ref in zip(dxs, dxs_ref):
        assert_bits_equal(dx, round_grad(dx_ref.numpy()), "DotInteraction input gradient")
    assert not np.array_equal(y, fp32)


# ---------------------------------------------------------------- a keras-rs DCN


def _dcn(keras_rs):
    keras.utils.set_random_seed(21)
    ids = keras.Input((3,), dtype="int32", name="ids")
    dense = keras.Input((4,), name="dense")
    embedded = [keras.layers.Embedding(10, 4, name=f"embed{i}")(ids[:, i]) for i in range(3)]
    x0 = keras.layers.Concatenate(name="x0")(embedded + [dense])
    x = keras_rs.layers.FeatureCross(name="cross0")(x0)
    x = keras_rs.layers.FeatureCross(projection_dim=4, diag_scale=0.5, name="cross1")(x0, x)
    interactions = keras_rs.layers.DotInteraction(name="dot")(embedded + [dense])
    x = keras.layers.Concatenate(name="top")([x, interactions])
    x = keras.layers.Dense(8, activation="relu", name="deep")(x)
    return keras.Model([ids, dense], keras.layers.Dense(1, name="logit")(x), name="dcn")


def _dcn_data(n=16):
    rng = np.random.default_rng(22)
    return ([rng.integers(0, 10, (n, 3)).astype(np.int32), not_bf16(rng, (n, 4))],
            rng.integers(0, 2, (n, 1)).astype(np.float32))


def test_keras_rs_dcn_wraps_trains_saves_and_reloads(keras_rs, tmp_path):
    model = _dcn(keras_rs)
    x, y = _dcn_data()
    fp32 = model(x).numpy()
    wrapped = tfbf16.wrap(model)
    rows = {row["layer"].split("/")[-1]: row for row in summary_rows(wrapped)}
    for name, cls in (("cross0", "FeatureCross"), ("cross1", "FeatureCross"),
                      ("dot", "DotInteraction"), ("deep", "Dense"), ("embed0", "Embedding")):
        assert rows[name]["emulated"] and rows[name]["class"] == cls, rows[name]
    assert "low-rank" in rows["cross1"]["tensors"]
    assert not rows["x0"]["emulated"]
    assert not np.array_equal(wrapped(x).numpy(), fp32)
    assert [id(v) for v in wrapped.weights] == [id(v) for v in model.weights]

    wrapped.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    before = [np.array(v.numpy()) for v in wrapped.trainable_weights]
    history = wrapped.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, wrapped.trainable_weights))

    path = str(tmp_path / "dcn.keras")
    wrapped.save(path)
    reloaded = keras.models.load_model(path)
    assert summary_rows(reloaded) == summary_rows(wrapped)
    assert_bits_equal(reloaded(x), wrapped(x), "reloaded DCN")
    trained_fp32 = model(x).numpy()
    assert not np.array_equal(reloaded(x).numpy(), trained_fp32), "the reloaded DCN runs FP32"
    assert_bits_equal(tfbf16.unwrap(reloaded)(x), trained_fp32, "unwrapped after reload")
    assert np.isfinite(reloaded.fit(x, y, epochs=1, verbose=0).history["loss"]).all()

    # Its weights file loads into the plain DCN, and the plain DCN's into it.
    wrapped.save_weights(str(tmp_path / "dcn.weights.h5"))
    plain = _dcn(keras_rs)
    plain.load_weights(str(tmp_path / "dcn.weights.h5"))
    assert_bits_equal(plain(x), trained_fp32, "plain DCN from the wrapped DCN's weights")
    assert_bits_equal(tfbf16.wrap(plain)(x), wrapped(x), "wrapped again")


def test_tfbf16_never_imports_keras_rs():
    script = (
        "import sys, keras, tfbf16\n"
        "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
        "tfbf16.summary(tfbf16.wrap(m), print_fn=lambda line: None)\n"
        "print('keras_rs' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
