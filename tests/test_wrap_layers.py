"""Layer by layer: `tfbf16.BF16Wrapper` computes exactly the BF16 emulation.

For every covered layer class, in Keras 3 and in tf_keras, the wrapped layer's
forward output must equal the *same* FP32 layer evaluated on BF16-rounded
inputs with BF16-rounded weights (bit for bit: the same kernels run), and the
gradient at its inputs must equal the BF16 rounding of the FP32 gradient of
that reference computation taken with a BF16-rounded upstream gradient (the
wrapper rounds the gradient arriving at the outputs and the gradient flowing
into the inputs). Weight gradients are not rounded by default, and the master
weights must stay FP32.

Composite layers (RNNs, MultiHeadAttention, tensorflow-recommenders' Cross)
are checked against manual reimplementations that round exactly the GEMM
inputs the emulation promises to round (with `tfbf16.quantize`, whose own
bit-exactness against ml_dtypes is tested in test_rounding.py).
"""

import contextlib
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tests.bf16_bits import assert_bits_equal, bits, not_bf16, rnd, trunc

FLAVOURS = {"keras3": keras, "tf_keras": tf_keras}

# ---------------------------------------------------------------- helpers


def q(tensor):
    """The emulation op at a GEMM input: RNE forward, RNE on the gradient."""
    return tfbf16.quantize(tensor, "rne", "rne")


def assert_bf16_values(value, what=""):
    low = bits(value) & 0xFFFF
    assert not low.any(), f"{what}: {np.count_nonzero(low)} values are not bfloat16"


def randomize_weights(layer, rng):
    """Random weights (random biases, gammas, statistics) for a sharper test."""
    for variable in layer.weights:
        if not tf.as_dtype(variable.dtype).is_floating:
            continue
        shape = tuple(variable.shape)
        if "variance" in variable.name:
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        else:
            variable.assign(not_bf16(rng, shape, 0.5))


@contextlib.contextmanager
def rounded_weights(layer):
    """Temporarily gives the layer's trainable weights their BF16 values."""
    variables = list(layer.trainable_weights)
    saved = [np.array(v.numpy()) for v in variables]
    for variable, value in zip(variables, saved):
        variable.assign(rnd(value))
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def weight_values(layer):
    return [np.array(v.numpy()) for v in layer.weights]


def wrapped_forward_backward(wrapper, layer, inputs, upstream, **kwargs):
    """Output, input gradients and weight gradients of the wrapped layer."""
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape(persistent=True) as tape:
        for x in inputs:
            tape.watch(x)
        y = wrapper(*inputs, **kwargs)
        loss = tf.reduce_sum(y * upstream)
    input_grads = tape.gradient(loss, inputs)
    weight_grads = tape.gradient(loss, layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in input_grads], weight_grads


def reference_forward_backward(fn, layer, inputs, upstream):
    """`fn(*watched_inputs)` with rounded weights, and its gradients.

    The upstream gradient is rounded first (the wrapper rounds the gradient
    arriving at the outputs); the input gradients are returned unrounded.
    """
    with rounded_weights(layer):
        inputs = [tf.constant(x) for x in inputs]
        with tf.GradientTape(persistent=True) as tape:
            for x in inputs:
                tape.watch(x)
            y = fn(*inputs)
        upstream = tf.constant(rnd(upstream))
        input_grads = tape.gradient(y, inputs, output_gradients=upstream)
        weight_grads = tape.gradient(y, layer.trainable_weights, output_gradients=upstream)
    return y.numpy(), [g.numpy() for g in input_grads], weight_grads


def check_weight_grads(actual, expected):
    assert len(actual) == len(expected) and actual
    for a, e in zip(actual, expected):
        assert a is not None and e is not None
        assert_bits_equal(tf.convert_to_tensor(a), tf.convert_to_tensor(e), "weight gradient")


# ---------------------------------------------------- single-GEMM / norm layers

# name -> (factory(K), input shape, call kwargs)
SIMPLE_LAYERS = {
    "Dense": (lambda K: K.layers.Dense(5), (2, 3, 7), {}),
    "EinsumDense": (
        lambda K: K.layers.EinsumDense("abc,cd->abd", output_shape=(None, 5), bias_axes="d"),
        (2, 3, 7), {},
    ),
    "Conv1D": (lambda K: K.layers.Conv1D(4, 3), (2, 8, 3), {}),
    "Conv2D": (lambda K: K.layers.Conv2D(4, 3, padding="same"), (2, 6, 6, 3), {}),
    "Conv3D": (lambda K: K.layers.Conv3D(2, 2), (1, 4, 4, 4, 2), {}),
    "Conv1DTranspose": (lambda K: K.layers.Conv1DTranspose(3, 3, strides=2), (2, 5, 3), {}),
    "Conv2DTranspose": (lambda K: K.layers.Conv2DTranspose(3, 3, strides=2), (2, 4, 4, 2), {}),
    "Conv3DTranspose": (lambda K: K.layers.Conv3DTranspose(2, 2, strides=2), (1, 3, 3, 3, 2), {}),
    "DepthwiseConv1D": (lambda K: K.layers.DepthwiseConv1D(3, depth_multiplier=2), (2, 8, 3), {}),
    "DepthwiseConv2D": (lambda K: K.layers.DepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3), {}),
    "SeparableConv1D": (lambda K: K.layers.SeparableConv1D(4, 3), (2, 8, 3), {}),
    "SeparableConv2D": (lambda K: K.layers.SeparableConv2D(4, 3), (2, 6, 6, 3), {}),
    "BatchNormalization-inference": (
        lambda K: K.layers.BatchNormalization(), (4, 6), {"training": False},
    ),
    "BatchNormalization-training": (
        lambda K: K.layers.BatchNormalization(), (4, 6), {"training": True},
    ),
    "LayerNormalization": (lambda K: K.layers.LayerNormalization(), (3, 8), {}),
    "GroupNormalization": (lambda K: K.layers.GroupNormalization(groups=2), (2, 4, 4), {}),
}


@pytest.mark.parametrize(
    "name, flavour",
    [
        (name, flavour)
        for name in SIMPLE_LAYERS for flavour in sorted(FLAVOURS)
    ],
)
def test_simple_layer_forward_and_gradients_are_bf16_emulation(flavour, name):
    K = FLAVOURS[flavour]
    factory, shape, kwargs = SIMPLE_LAYERS[name]
    rng = np.random.default_rng(zlib.crc32(f"{flavour}/{name}".encode()))
    layer = factory(K)
    x = not_bf16(rng, shape)
    layer(tf.constant(x), **kwargs)  # build
    randomize_weights(layer, rng)
    fp32_output = layer(tf.constant(x), **kwargs).numpy()
    before = weight_values(layer)

    wrapper = tfbf16.BF16Wrapper(layer, rounding="rne")
    assert isinstance(wrapper, tfbf16.BF16Wrapper)
    assert isinstance(wrapper, K.layers.Layer)
    upstream = not_bf16(rng, fp32_output.shape)
    y, (dx,), dw = wrapped_forward_backward(wrapper, layer, [x], upstream, **kwargs)
    after_wrapped = weight_values(layer)

    # Master weights are untouched by the wrapped call (except statistics).
    for b, a, v in zip(before, after_wrapped, layer.weights):
        if v.trainable:
            assert_bits_equal(a, b, f"master weight {v.name} changed")

    if kwargs.get("training"):  # BN statistics: restore, then redo on the reference
        for v, b in zip(layer.weights, before):
            v.assign(b)
    y_ref, (dx_ref,), dw_ref = reference_forward_backward(
        lambda t: layer(t, **kwargs), layer, [rnd(x)], upstream
    )
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dx, rnd(dx_ref), "input gradient")
    assert_bf16_values(dx, "input gradient")
    check_weight_grads(dw, dw_ref)
    if kwargs.get("training"):
        # The moving statistics were updated from the rounded inputs, once.
        for a, r, v in zip(after_wrapped, weight_values(layer), layer.weights):
            assert_bits_equal(a, r, f"statistic {v.name}")
        assert not np.array_equal(after_wrapped[2], before[2])
    # The emulation really changes something.
    assert not np.array_equal(y, fp32_output)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_wrapper_preserves_dtype_and_leaves_unwrapped_layer_fp32(flavour):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(1)
    layer = K.layers.Dense(3)
    x = tf.constant(not_bf16(rng, (2, 4)))
    fp32 = layer(x).numpy()
    wrapper = tfbf16.BF16Wrapper(layer)
    y = wrapper(x)
    assert y.dtype == tf.float32
    assert layer.kernel.dtype == tf.float32
    # The inner layer called directly is still plain FP32.
    assert_bits_equal(layer(x), fp32, "inner layer after wrapping")
    assert wrapper.trainable_weights and len(wrapper.trainable_weights) == 2


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_trunc_rounds_inputs_weights_and_gradients_toward_zero(flavour):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(2)
    layer = K.layers.Dense(4, use_bias=False)
    x = not_bf16(rng, (3, 5))
    layer(tf.constant(x))
    randomize_weights(layer, rng)
    kernel = layer.kernel.numpy()
    upstream = not_bf16(rng, (3, 4))
    wrapper = tfbf16.BF16Wrapper(layer, rounding="trunc")
    y, (dx,), (dw,) = wrapped_forward_backward(wrapper, layer, [x], upstream)
    assert_bits_equal(y, tf.matmul(trunc(x), trunc(kernel)), "trunc forward")
    expected_dx = tf.matmul(trunc(upstream), trunc(kernel), transpose_b=True).numpy()
    assert_bits_equal(dx, trunc(expected_dx), "trunc input gradient")
    assert_bits_equal(dw, tf.matmul(trunc(x), trunc(upstream), transpose_a=True), "weight gradient")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_stochastic_rounding_picks_a_bf16_neighbour(flavour):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(9)
    layer = K.layers.Dense(1, use_bias=False)
    x = not_bf16(rng, (256, 1))
    layer(tf.constant(x))
    w = float(not_bf16(rng, (1,))[0])
    layer.kernel.assign([[w]])
    y = tfbf16.BF16Wrapper(layer, rounding="stochastic")(tf.constant(x)).numpy()[:, 0]

    def neighbours(v):
        down = (bits(v) & 0xFFFF0000).view(np.float32)
        up = (bits(down) + 0x10000).view(np.float32)
        return down, up

    x_down, x_up = neighbours(x[:, 0])
    w_down, w_up = neighbours(np.float32(w))
    candidates = np.stack([x_down * w_down, x_down * w_up, x_up * w_down, x_up * w_up], axis=1)
    assert (candidates == y[:, None]).any(axis=1).all()
    # Both neighbours of the inputs occur (it is not RNE or truncation).
    used_up = np.isin(y, np.stack([x_up * w_down, x_up * w_up]))
    assert 0.1 < used_up.mean() < 0.9


UNBUILT = {
    "Dense": (lambda K: K.layers.Dense(3), [(2, 5)]),
    "Conv2D": (lambda K: K.layers.Conv2D(2, 3), [(1, 5, 5, 2)]),
    "BatchNormalization": (lambda K: K.layers.BatchNormalization(), [(3, 4)]),
    "LSTM": (lambda K: K.layers.LSTM(3), [(2, 4, 5)]),
    "Bidirectional": (lambda K: K.layers.Bidirectional(K.layers.GRU(2)), [(2, 4, 5)]),
    "MultiHeadAttention": (lambda K: K.layers.MultiHeadAttention(2, 4), [(2, 3, 8), (2, 5, 8)]),
}


@pytest.mark.parametrize(
    "name, flavour",
    [
        (name, flavour)
        for name in UNBUILT for flavour in sorted(FLAVOURS)
    ],
)
def test_wrapping_an_unbuilt_layer_builds_it_on_first_call(name, flavour):
    K = FLAVOURS[flavour]
    factory, shapes = UNBUILT[name]
    rng = np.random.default_rng(10)
    inputs = [tf.constant(not_bf16(rng, shape)) for shape in shapes]
    layer = factory(K)
    assert not layer.built
    wrapper = tfbf16.BF16Wrapper(layer)
    y = wrapper(*inputs).numpy()
    assert layer.built and layer.trainable_weights
    # Same result as wrapping the layer once it is built.
    assert_bits_equal(y, tfbf16.BF16Wrapper(layer)(*inputs), "unbuilt vs built")
    assert not np.array_equal(y, layer(*inputs).numpy())


# ---------------------------------------------------------------- Embedding


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_embedding_rows_and_sparse_gradient_are_rounded(flavour):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(3)
    layer = K.layers.Embedding(10, 6)
    ids = tf.constant([[1, 3, 3], [0, 9, 2]])
    layer(ids)
    table = not_bf16(rng, (10, 6))
    layer.embeddings.assign(table)
    wrapper = tfbf16.BF16Wrapper(layer)
    upstream = not_bf16(rng, (2, 3, 6))
    with tf.GradientTape() as tape:
        y = wrapper(ids)
        loss = tf.reduce_sum(y * upstream)
    grad = tape.gradient(loss, layer.embeddings)
    assert_bits_equal(y, rnd(table)[ids.numpy()], "looked-up rows")
    assert isinstance(grad, tf.IndexedSlices), type(grad)
    # One slice per looked-up id (sparse), each the rounded upstream row.
    assert_bits_equal(
        tf.math.unsorted_segment_sum(grad.values, grad.indices, 10),
        tf.math.unsorted_segment_sum(rnd(upstream).reshape(-1, 6), ids.numpy().reshape(-1), 10),
        "embedding gradient",
    )
    assert_bf16_values(grad.values, "embedding gradient values")
    # The table itself keeps its FP32 values.
    assert_bits_equal(layer.embeddings.numpy(), table, "master table")


# ---------------------------------------------------------------- RNNs


def _cell_reference(cell, x, units, n_states, go_backwards=False):
    """Manual step loop: the step input and h(t-1) rounded at every step."""
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    states = [tf.zeros([x.shape[0], units])] * n_states
    outputs = []
    for t in steps:
        states = [q(states[0])] + list(states[1:])
        out, states = cell(q(x[:, t]), states)
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        outputs.append(out)
    return outputs


def _gru_reference(cell, x, units, go_backwards=False, round_interpolation=False):
    """GRU with the GEMM inputs rounded, for the cell's reset_after/implementation.

    The activation operand of every matmul is rounded (x(t), h(t-1) where it
    enters the recurrent matmul, and r * h(t-1) with reset_after=False); the
    elementwise interpolation z * h(t-1) + (1 - z) * hh is FP32, as in the
    paper's emulation (only GEMM/conv inputs are rounded). With
    implementation=1, x(t) and h(t-1) enter one matmul per gate and are
    rounded once for all three (so their gradients are rounded once, as with
    implementation=2's single matmul). The ops mirror the Keras cells' (same
    kernel slices, same order of additions) so that the bits agree.
    """
    # The weights are read once (the wrapper rounds them once per call) and
    # split at every step, as the cell does, so that the weight gradients are
    # summed in the same order.
    kernel = tf.convert_to_tensor(cell.kernel)
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
    bias = tf.convert_to_tensor(cell.bias)
    u = units
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    h = tf.zeros([x.shape[0], units])
    outputs = []
    for t in steps:
        if cell.reset_after:
            input_bias, recurrent_bias = tf.unstack(bias)
        else:
            input_bias, recurrent_bias = bias, None
        h_r, x_r_t = q(h), q(x[:, t])
        if cell.implementation == 1:
            x_z = tf.matmul(x_r_t, kernel[:, :u]) + input_bias[:u]
            x_r = tf.matmul(x_r_t, kernel[:, u : 2 * u]) + input_bias[u : 2 * u]
            x_h = tf.matmul(x_r_t, kernel[:, 2 * u :]) + input_bias[2 * u :]
            r_z = tf.matmul(h_r, recurrent[:, :u])
            r_r = tf.matmul(h_r, recurrent[:, u : 2 * u])
            if cell.reset_after:
                r_z, r_r = r_z + recurrent_bias[:u], r_r + recurrent_bias[u : 2 * u]
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            if cell.reset_after:
                r_h = r * (tf.matmul(h_r, recurrent[:, 2 * u :]) + recurrent_bias[2 * u :])
            else:
                r_h = tf.matmul(q(r * h), recurrent[:, 2 * u :])
            hh = tf.tanh(x_h + r_h)
        else:
            matrix_x = tf.nn.bias_add(tf.matmul(x_r_t, kernel), input_bias)
            x_z, x_r, x_h = tf.split(matrix_x, 3, axis=-1)
            if cell.reset_after:
                matrix_inner = tf.nn.bias_add(tf.matmul(h_r, recurrent), recurrent_bias)
                r_z, r_r, r_h = tf.split(matrix_inner, 3, axis=-1)
            else:
                matrix_inner = tf.matmul(h_r, recurrent[:, : 2 * u])
                r_z, r_r = tf.split(matrix_inner, 2, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            if cell.reset_after:
                r_h = r * r_h
            else:
                r_h = tf.matmul(q(r * h), recurrent[:, 2 * u :])
            hh = tf.tanh(x_h + r_h)
        h = z * (h_r if round_interpolation else h) + (1 - z) * hh
        outputs.append(h)
    return outputs


RNNS = {"SimpleRNN": 1, "LSTM": 2}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("rnn", sorted(RNNS))
@pytest.mark.parametrize("return_sequences", [False, True])
def test_rnn_rounds_step_input_and_state_at_every_step(flavour, rnn, return_sequences):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(4)
    units = 3
    layer = getattr(K.layers, rnn)(units, return_sequences=return_sequences)
    x = not_bf16(rng, (2, 4, 5))
    layer(tf.constant(x))
    randomize_weights(layer, rng)
    fp32_output = layer(tf.constant(x)).numpy()
    upstream = not_bf16(rng, fp32_output.shape)
    wrapper = tfbf16.BF16Wrapper(layer)
    y, (dx,), dw = wrapped_forward_backward(wrapper, layer, [x], upstream)

    def reference(t):
        outputs = _cell_reference(layer.cell, t, units, RNNS[rnn])
        return tf.stack(outputs, axis=1) if return_sequences else outputs[-1]

    y_ref, (dx_ref,), dw_ref = reference_forward_backward(reference, layer, [x], upstream)
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dx, dx_ref, "input gradient")
    assert_bf16_values(dx, "input gradient")
    check_weight_grads(dw, dw_ref)

    # Rounding only the layer's inputs and weights (not h(t-1)) is different.
    with rounded_weights(layer):
        inputs_only = layer(tf.constant(rnd(x))).numpy()
    assert not np.array_equal(y, inputs_only)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_gru_rounds_only_gemm_inputs(flavour):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(5)
    units = 3
    layer = K.layers.GRU(units)
    x = not_bf16(rng, (2, 4, 5))
    layer(tf.constant(x))
    randomize_weights(layer, rng)
    upstream = not_bf16(rng, (2, units))
    wrapper = tfbf16.BF16Wrapper(layer)
    y, (dx,), dw = wrapped_forward_backward(wrapper, layer, [x], upstream)
    y_ref, (dx_ref,), dw_ref = reference_forward_backward(
        lambda t: _gru_reference(layer.cell, t, units)[-1], layer, [x], upstream
    )
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dx, dx_ref, "input gradient")
    check_weight_grads(dw, dw_ref)


def _gru_module_namespaces(K):
    """The module objects GRUCell.call reaches its matmul through.

    (tfbf16 once rebound them during emulated calls; it must leave Keras'
    modules alone.)
    """
    namespace = K.layers.GRUCell.call.__globals__
    return {name: namespace[name] for name in ("ops", "backend") if name in namespace}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize(
    "reset_after, implementation", [(False, 2), (False, 1), (True, 1)]
)
def test_gru_variants_round_only_gemm_inputs(flavour, reset_after, implementation):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(7)
    units = 3
    layer = K.layers.GRU(
        units, reset_after=reset_after, implementation=implementation, return_sequences=True
    )
    x = not_bf16(rng, (2, 4, 5))
    layer(tf.constant(x))
    assert (layer.cell.reset_after, layer.cell.implementation) == (reset_after, implementation)
    randomize_weights(layer, rng)
    upstream = not_bf16(rng, (2, 4, units))
    namespaces = _gru_module_namespaces(K)
    wrapper = tfbf16.BF16Wrapper(layer)
    y, (dx,), dw = wrapped_forward_backward(wrapper, layer, [x], upstream)

    def reference(t, round_interpolation=False):
        outputs = _gru_reference(layer.cell, t, units, round_interpolation=round_interpolation)
        return tf.stack(outputs, axis=1)

    y_ref, (dx_ref,), dw_ref = reference_forward_backward(reference, layer, [x], upstream)
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dx, dx_ref, "input gradient")
    assert_bf16_values(dx, "input gradient")
    check_weight_grads(dw, dw_ref)
    # Keras' module namespace is untouched.
    assert _gru_module_namespaces(K) == namespaces
    assert all(type(m).__name__ == "module" for m in namespaces.values())
    # With the rounding switched off, tfbf16's GRU step is the Keras cell,
    # bit for bit (same operations in the same order).
    wrapper.set_rounding("fp32")
    assert_bits_equal(wrapper(tf.constant(x)), layer(tf.constant(x)), "GRU step, rounding off")
    wrapper.set_rounding("rne")
    # The old emulation (h(t-1) rounded in the interpolation too) is different.
    y_old, _, _ = reference_forward_backward(
        lambda t: reference(t, round_interpolation=True), layer, [x], upstream
    )
    assert not np.array_equal(y, y_old)
    # An unwrapped call of the same layer stays FP32 (nothing left hooked).
    fp32 = layer(tf.constant(x)).numpy()
    assert not np.array_equal(fp32, y)
    with rounded_weights(layer):
        assert not np.array_equal(layer(tf.constant(rnd(x))).numpy(), y)

    # The traced call is hooked too: bit for bit under tf.function. XLA
    # compiles the two graphs into different kernels (a few-ulp difference
    # even between FP32 graphs), so under XLA the wrapper must be within a few
    # ulp of the reference and far from the old emulation (~1e-3 away).
    x_t = tf.constant(x)
    assert_bits_equal(tf.function(wrapper)(x_t), y, "tf.function")
    y_xla = tf.function(wrapper, jit_compile=True)(x_t).numpy()
    with rounded_weights(layer):
        ref_xla = tf.function(reference, jit_compile=True)(x_t).numpy()
        old_xla = tf.function(
            lambda t: reference(t, round_interpolation=True), jit_compile=True
        )(x_t).numpy()
    assert np.max(np.abs(y_xla - ref_xla)) <= 1e-6
    assert np.max(np.abs(y_xla - old_xla)) > 1e-4
    assert _gru_module_namespaces(K) == namespaces


@pytest.mark.parametrize("implementation", [1, 2])
def test_gru_step_applies_keras3_dropout_masks_like_the_cell(implementation):
    """With rounding off, tfbf16's GRU step in training mode is the Keras 3 cell
    with its dropout masks, bit for bit (the same seed-generator state draws
    the same masks; tf_keras draws its masks from the global random state,
    which the rounding op's own seeds advance, so it is not compared here)."""
    rng = np.random.default_rng(13)
    layer = keras.layers.GRU(3, dropout=0.4, recurrent_dropout=0.4, seed=3,
                             implementation=implementation, return_sequences=True)
    x = tf.constant(not_bf16(rng, (2, 4, 5)))
    layer(x)
    randomize_weights(layer, rng)
    wrapper = tfbf16.BF16Wrapper(layer)
    wrapper.set_rounding("fp32")
    state = [np.array(v.numpy()) for v in layer.non_trainable_variables]
    y = wrapper(x, training=True).numpy()
    for variable, value in zip(layer.non_trainable_variables, state):
        variable.assign(value)
    expected = layer(x, training=True).numpy()
    assert_bits_equal(y, expected, "GRU step with dropout, rounding off")
    assert not np.array_equal(expected, layer(x, training=False).numpy())


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_bidirectional_rounds_both_directions(flavour, rnn):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(6)
    units = 2
    layer = K.layers.Bidirectional(getattr(K.layers, rnn)(units))
    x = not_bf16(rng, (2, 4, 3))
    layer(tf.constant(x))
    randomize_weights(layer, rng)
    upstream = not_bf16(rng, (2, 2 * units))
    wrapper = tfbf16.BF16Wrapper(layer)
    y, (dx,), dw = wrapped_forward_backward(wrapper, layer, [x], upstream)

    def reference(t):
        if rnn == "GRU":
            forward = _gru_reference(layer.forward_layer.cell, t, units)[-1]
            backward = _gru_reference(layer.backward_layer.cell, t, units, go_backwards=True)[-1]
        else:
            forward = _cell_reference(layer.forward_layer.cell, t, units, 2)[-1]
            backward = _cell_reference(
                layer.backward_layer.cell, t, units, 2, go_backwards=True
            )[-1]
        return tf.concat([forward, backward], axis=-1)

    y_ref, (dx_ref,), dw_ref = reference_forward_backward(reference, layer, [x], upstream)
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dx, dx_ref, "input gradient")
    check_weight_grads(dw, dw_ref)


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize(
    "flavour, dropout",
    [
        ("keras3", 0.0),
        ("keras3", 0.1),
        ("tf_keras", 0.0),
        ("tf_keras", 0.1),
    ],
)
def test_multi_head_attention_rounds_projections_and_both_attention_matmuls(flavour, dropout):
    K = FLAVOURS[flavour]
    rng = np.random.default_rng(7)
    # key_dim 4: the 1/sqrt(key_dim) scale is a power of two, exact anywhere.
    layer = K.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=dropout)
    query = not_bf16(rng, (2, 3, 8))
    value = not_bf16(rng, (2, 5, 8))
    layer(tf.constant(query), tf.constant(value))
    randomize_weights(layer, rng)
    upstream = not_bf16(rng, (2, 3, 8))
    wrapper = tfbf16.BF16Wrapper(layer)
    y, (dq, dv), dw = wrapped_forward_backward(
        wrapper, layer, [query, value], upstream, training=False
    )

    def reference(query_in, value_in):
        query_in, value_in = q(query_in), q(value_in)
        q_proj = q(layer._query_dense(q(query_in))) * 0.5
        k_proj = q(layer._key_dense(q(value_in)))
        v_proj = q(layer._value_dense(q(value_in)))
        scores = tf.einsum(layer._dot_product_equation, k_proj, q_proj)
        probs = q(tf.nn.softmax(scores, axis=-1))
        attended = tf.einsum(layer._combine_equation, probs, v_proj)
        return layer._output_dense(q(attended))

    y_ref, (dq_ref, dv_ref), dw_ref = reference_forward_backward(
        reference, layer, [query, value], upstream
    )
    assert_bits_equal(y, y_ref, "forward output")
    assert_bits_equal(dq, rnd(dq_ref), "query gradient")
    assert_bits_equal(dv, rnd(dv_ref), "value gradient")
    check_weight_grads(dw, dw_ref)

    # The attention probabilities must be rounded: with FP32 probabilities
    # entering the second matmul the result is different.
    def probs_fp32(query_in, value_in):
        query_in, value_in = q(query_in), q(value_in)
        q_proj = q(layer._query_dense(q(query_in))) * 0.5
        k_proj = q(layer._key_dense(q(value_in)))
        v_proj = q(layer._value_dense(q(value_in)))
        scores = tf.einsum(layer._dot_product_equation, k_proj, q_proj)
        attended = tf.einsum(layer._combine_equation, tf.nn.softmax(scores, axis=-1), v_proj)
        return layer._output_dense(q(attended))

    y_fp32_probs, _, _ = reference_forward_backward(probs_fp32, layer, [query, value], upstream)
    assert not np.array_equal(y_fp32_probs, y_ref)


# ---------------------------------------------------------------- TFRS Cross


@pytest.mark.parametrize("projection_dim", [None, 2])
@pytest.mark.parametrize("two_inputs", [False, True])
def test_tfrs_cross_rounds_inputs_weights_and_low_rank_factor(projection_dim, two_inputs):
    import tensorflow_recommenders as tfrs

    rng = np.random.default_rng(8)
    layer = tfrs.layers.dcn.Cross(projection_dim=projection_dim)
    x0 = not_bf16(rng, (3, 6))
    xl = not_bf16(rng, (3, 6))
    inputs = [x0, xl] if two_inputs else [x0]
    layer(*[tf.constant(t) for t in inputs])
    randomize_weights(layer, rng)
    upstream = not_bf16(rng, (3, 6))
    wrapper = tfbf16.BF16Wrapper(layer)
    assert isinstance(wrapper, tf_keras.layers.Layer)
    y, dxs, dw = wrapped_forward_backward(wrapper, layer, inputs, upstream)

    def reference(x0_in, x_in=None):
        x0_in = q(x0_in)
        x_in = x0_in if x_in is None else q(x_in)
        if projection_dim is None:
            product = layer._dense(q(x_in))
        else:
            product = layer._dense_v(q(layer._dense_u(q(x_in))))
        return x0_in * product + x_in

    y_ref, dxs_ref, dw_ref = reference_forward_backward(reference, layer, inputs, upstream)
    assert_bits_equal(y, y_ref, "forward output")
    for dx, dx_ref in zip(dxs, dxs_ref):
        assert_bits_equal(dx, rnd(dx_ref), "input gradient")
    check_weight_grads(dw, dw_ref)
    assert len(dw) == (2 if projection_dim is None else 3)
