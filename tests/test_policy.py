"""`tfbf16.BF16Policy`: what `wrap` rounds, and where, checked numerically.

Every switch is checked on the numbers it must change (against a manual
reference), not only on what `tfbf16.summary` reports.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfbf16
from tfbf16.summary import summary_rows
from tests.bf16_bits import assert_bits_equal, is_bf16, not_bf16, rnd, trunc

FLAVOURS = {"keras3": keras, "tf_keras": tf_keras}


def emulated(model):
    return {row["layer"].split("/")[-1]: row["emulated"] for row in summary_rows(model)}


def dense_model(K, names=("d0", "d1", "d2"), units=4, seed=0):
    rng = np.random.default_rng(seed)
    layers = [K.layers.Dense(units, name=name) for name in names]
    model = K.Sequential([K.Input((units,))] + layers, name="net")
    for layer in layers:
        layer.kernel.assign(not_bf16(rng, (units, units)))
        layer.bias.assign(not_bf16(rng, (units,)))
    return model


def dense_ref(x, layer, round_inputs=True, round_weights=True, rounding=rnd):
    """One emulated Dense: (rounded) inputs times (rounded) weights, FP32 math."""
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    if round_weights:
        kernel, bias = rounding(kernel), rounding(bias)
    if round_inputs:
        x = rounding(x)
    return tf.matmul(x, kernel).numpy() + bias


def fp32_ref(x, layer):
    return tf.matmul(x, layer.kernel.numpy()).numpy() + layer.bias.numpy()


def layers_of(model):
    return [model.get_layer(n) for n in ("d0", "d1", "d2")]


# ---------------------------------------------------------------- where


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_keep_first_and_last_fp32(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K)
    x = not_bf16(np.random.default_rng(1), (3, 4))
    d0, d1, d2 = layers_of(model)

    first = tfbf16.wrap(model, policy=tfbf16.BF16Policy(keep_first_fp32=True))
    assert emulated(first) == {"d0": False, "d1": True, "d2": True}
    expected = dense_ref(dense_ref(fp32_ref(x, d0), d1), d2)
    assert_bits_equal(first(x), expected, "keep_first_fp32")

    last = tfbf16.wrap(model, policy=tfbf16.BF16Policy(keep_last_fp32=True))
    assert emulated(last) == {"d0": True, "d1": True, "d2": False}
    expected = fp32_ref(dense_ref(dense_ref(x, d0), d1), d2)
    assert_bits_equal(last(x), expected, "keep_last_fp32")

    both = tfbf16.wrap(model, policy=tfbf16.BF16Policy(keep_first_fp32=True, keep_last_fp32=True))
    assert emulated(both) == {"d0": False, "d1": True, "d2": False}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_keep_first_and_last_count_only_compute_layers(flavour):
    K = FLAVOURS[flavour]
    model = K.Sequential([
        K.Input((3,), dtype="int32"),
        K.layers.Embedding(10, 4, name="embed"),
        K.layers.Flatten(name="flat"),
        K.layers.Dense(4, name="first_dense"),
        K.layers.BatchNormalization(name="bn"),
        K.layers.Dense(2, name="last_dense"),
        K.layers.LayerNormalization(name="ln"),
    ])
    policy = tfbf16.BF16Policy(keep_first_fp32=True, keep_last_fp32=True)
    assert emulated(tfbf16.wrap(model, policy=policy)) == {
        "embed": True, "flat": False, "first_dense": False, "bn": True,
        "last_dense": False, "ln": True,
    }


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_include_and_exclude_by_name_regex_and_class(flavour):
    K = FLAVOURS[flavour]
    model = K.Sequential([
        K.Input((6, 6, 2)),
        K.layers.Conv2D(2, 3, name="conv_a"),
        K.layers.Conv2D(2, 3, name="conv_b"),
        K.layers.Flatten(name="flat"),
        K.layers.Dense(3, name="dense_a"),
        K.layers.Dense(2, name="head"),
    ])

    def wrapped_with(**kwargs):
        return emulated(tfbf16.wrap(model, policy=tfbf16.BF16Policy(**kwargs)))

    assert wrapped_with(include=[K.layers.Conv2D]) == {
        "conv_a": True, "conv_b": True, "flat": False, "dense_a": False, "head": False}
    assert wrapped_with(include="class:Dense") == {
        "conv_a": False, "conv_b": False, "flat": False, "dense_a": True, "head": True}
    assert wrapped_with(include=["conv_.*", "head"]) == {
        "conv_a": True, "conv_b": True, "flat": False, "dense_a": False, "head": True}
    assert wrapped_with(exclude=["conv_b", "dense_.*"]) == {
        "conv_a": True, "conv_b": False, "flat": False, "dense_a": False, "head": True}
    assert wrapped_with(exclude=[K.layers.Dense]) == {
        "conv_a": True, "conv_b": True, "flat": False, "dense_a": False, "head": False}
    # A regex matches the whole name, not a substring: "conv" names no layer.
    with pytest.raises(ValueError, match="exclude entry 'conv' matches no layer"):
        wrapped_with(exclude=["conv"])
    # exclude wins over include.
    assert wrapped_with(include=["conv_.*"], exclude=["conv_a"]) == {
        "conv_a": False, "conv_b": True, "flat": False, "dense_a": False, "head": False}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_layer_roundings_choose_the_rounding_per_layer(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K, names=("d0", "d1", "d2"))
    d0, d1, d2 = layers_of(model)
    x = not_bf16(np.random.default_rng(2), (3, 4))
    wrapped = tfbf16.wrap(model, "rne", policy=tfbf16.BF16Policy(layer_roundings={"d1": "trunc"}))
    rows = {row["layer"].split("/")[-1]: row["rounding"] for row in summary_rows(wrapped)}
    assert rows == {"d0": "rne (grad: rne)", "d1": "trunc (grad: trunc)", "d2": "rne (grad: rne)"}
    expected = dense_ref(dense_ref(dense_ref(x, d0), d1, rounding=trunc), d2)
    assert_bits_equal(wrapped(x), expected, "per-layer rounding")
    # Regular expressions work as keys; the first matching key wins.
    wrapped = tfbf16.wrap(
        model, "rne", policy=tfbf16.BF16Policy(layer_roundings={"d[12]": "trunc", "d2": "stochastic"})
    )
    expected = dense_ref(dense_ref(dense_ref(x, d0), d1, rounding=trunc), d2, rounding=trunc)
    assert_bits_equal(wrapped(x), expected, "regex per-layer rounding")


# ---------------------------------------------------------------- policies that select nothing


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize(
    "policy_kwargs, fragment",
    [
        ({"include": ["nomatch"]}, "include entry 'nomatch' matches no layer of 'net'"),
        ({"include": ["d0", "d_typo"]}, "include entry 'd_typo' matches no layer"),
        ({"include": ["class:Conv2D"]}, "include entry 'class:Conv2D' matches no layer"),
        ({"exclude": ["D0"]}, "exclude entry 'D0' matches no layer"),
        ({"layer_roundings": {"d1": "trunc", "dense_1": "stochastic"}},
         "layer_roundings key 'dense_1' matches no layer"),
    ],
)
def test_policy_entry_that_matches_no_layer_raises_and_names_the_layers(
        flavour, policy_kwargs, fragment):
    K = FLAVOURS[flavour]
    model = dense_model(K)
    with pytest.raises(ValueError, match=fragment) as error:
        tfbf16.wrap(model, policy=tfbf16.BF16Policy(**policy_kwargs))
    assert "(layers: d0, d1, d2)" in str(error.value)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_policy_entry_check_lists_a_few_names_of_a_big_model(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K, names=[f"layer{i}" for i in range(12)])
    with pytest.raises(ValueError, match=r"layers: layer0, layer1, .*layer7, \.\.\. \(12 layers\)"):
        tfbf16.wrap(model, policy=tfbf16.BF16Policy(include=["layer12"]))


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_policy_that_leaves_nothing_emulated_warns(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K)
    x = not_bf16(np.random.default_rng(3), (2, 4))
    for kwargs in ({"exclude": [".*"]}, {"exclude": ["class:Dense"]},
                   {"include": ["d1"], "keep_first_fp32": True, "exclude": ["d1"]}):
        with pytest.warns(UserWarning, match="nothing of 'net' is emulated"):
            wrapped = tfbf16.wrap(model, policy=tfbf16.BF16Policy(**kwargs))
        assert not any(emulated(wrapped).values())
        assert_bits_equal(wrapped(x), model(x), "an FP32 model, as warned")
    # A model without any layer to emulate warns too.
    plain = K.Sequential([K.Input((4,)), K.layers.ReLU(name="act")], name="plain")
    with pytest.warns(UserWarning, match="nothing of 'plain' is emulated"):
        tfbf16.wrap(plain)
    # A policy that emulates something does not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfbf16.wrap(model, policy=tfbf16.BF16Policy(include=["d1"]))


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_summary_of_something_that_is_not_a_keras_model_raises_type_error(flavour):
    K = FLAVOURS[flavour]
    for not_a_model in (object(), "model", K.optimizers.SGD(), None):
        with pytest.raises(TypeError, match="takes a Keras 3 or tf_keras model or layer"):
            tfbf16.summary(not_a_model)
    tfbf16.summary(K.layers.Dense(2), print_fn=lambda line: None)  # a layer is fine


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_round_normalization_false_keeps_normalization_fp32(flavour):
    K = FLAVOURS[flavour]
    model = K.Sequential([
        K.Input((4,)), K.layers.Dense(4, name="fc"),
        K.layers.BatchNormalization(name="bn"), K.layers.LayerNormalization(name="ln"),
    ])
    assert emulated(tfbf16.wrap(model)) == {"fc": True, "bn": True, "ln": True}
    wrapped = tfbf16.wrap(model, policy=tfbf16.BF16Policy(round_normalization=False))
    assert emulated(wrapped) == {"fc": True, "bn": False, "ln": False}
    assert wrapped.get_layer("ln") is model.get_layer("ln")


# ---------------------------------------------------------------- what


def _grads(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, x).numpy(), tape.gradient(loss, layer.trainable_weights[0]).numpy()


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_round_outputs_inputs_weights_switches(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K, names=("d0",))
    (d0,) = [model.get_layer("d0")]
    x = not_bf16(np.random.default_rng(3), (3, 4))

    def run(**kwargs):
        return tfbf16.wrap(model, policy=tfbf16.BF16Policy(**kwargs))(x).numpy()

    default = run()
    references = [dense_ref(x, d0), rnd(dense_ref(x, d0)), dense_ref(x, d0, round_inputs=False),
                  dense_ref(x, d0, round_weights=False), fp32_ref(x, d0)]
    assert len({r.tobytes() for r in references}) == 5
    assert_bits_equal(default, dense_ref(x, d0), "default")
    assert not is_bf16(default)
    assert_bits_equal(run(round_outputs=True), rnd(dense_ref(x, d0)), "round_outputs")
    assert_bits_equal(run(round_inputs=False), dense_ref(x, d0, round_inputs=False), "round_inputs=False")
    assert_bits_equal(run(round_weights=False), dense_ref(x, d0, round_weights=False), "round_weights=False")
    assert_bits_equal(run(round_inputs=False, round_weights=False), fp32_ref(x, d0), "nothing rounded")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_gradient_rounding_switches(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K, names=("d0",))
    d0 = model.get_layer("d0")
    rng = np.random.default_rng(4)
    x, upstream = not_bf16(rng, (3, 4)), not_bf16(rng, (3, 4))
    kernel_r = rnd(d0.kernel.numpy())

    def grads(**kwargs):
        wrapped = tfbf16.wrap(model, policy=tfbf16.BF16Policy(**kwargs))
        _, dx, dk = _grads(wrapped.get_layer("d0"), x, upstream)
        return dx, dk

    dx_of = lambda g: tf.matmul(g, kernel_r, transpose_b=True).numpy()  # noqa: E731
    dk_of = lambda g: tf.matmul(rnd(x), g, transpose_a=True).numpy()  # noqa: E731

    # The four references differ from each other, so each check is sharp.
    candidates = [rnd(dx_of(rnd(upstream))), rnd(dx_of(upstream)), dx_of(rnd(upstream)), dx_of(upstream)]
    assert len({c.tobytes() for c in candidates}) == 4

    dx, dk = grads()
    assert_bits_equal(dx, rnd(dx_of(rnd(upstream))), "default input gradient")
    assert_bits_equal(dk, dk_of(rnd(upstream)), "default weight gradient (FP32)")
    assert not is_bf16(dk)

    dx, dk = grads(round_weight_gradients=True)
    assert_bits_equal(dk, rnd(dk_of(rnd(upstream))), "round_weight_gradients")

    dx, dk = grads(round_output_gradients=False)
    assert_bits_equal(dx, rnd(dx_of(upstream)), "round_output_gradients=False")
    assert_bits_equal(dk, dk_of(upstream), "weight gradient without output rounding")

    dx, _ = grads(round_input_gradients=False)
    assert_bits_equal(dx, dx_of(rnd(upstream)), "round_input_gradients=False")

    dx, _ = grads(round_input_gradients=False, round_output_gradients=False)
    assert_bits_equal(dx, dx_of(upstream), "no gradient rounding")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_wrap_grad_rounding_differs_from_forward_rounding(flavour):
    K = FLAVOURS[flavour]
    model = dense_model(K, names=("d0",))
    d0 = model.get_layer("d0")
    rng = np.random.default_rng(5)
    x, upstream = not_bf16(rng, (3, 4)), not_bf16(rng, (3, 4))
    wrapped = tfbf16.wrap(model, "rne", grad_rounding="trunc")
    y, dx, _ = _grads(wrapped.get_layer("d0"), x, upstream)
    assert_bits_equal(y, dense_ref(x, d0), "forward is RNE")
    expected = tf.matmul(trunc(upstream), rnd(d0.kernel.numpy()), transpose_b=True).numpy()
    assert_bits_equal(dx, trunc(expected), "backward is truncation")
    assert summary_rows(wrapped)[0]["rounding"] == "rne (grad: trunc)"


# ---------------------------------------------------------------- config, errors


def test_policy_config_round_trip_and_repr():
    policy = tfbf16.BF16Policy(
        round_outputs=True, keep_last_fp32=True, include=["conv.*", keras.layers.Dense],
        exclude="head", layer_roundings={"cross_.*": "trunc"},
    )
    config = policy.get_config()
    assert config["include"] == ["conv.*", "class:Dense"]
    assert config["exclude"] == ["head"]
    again = tfbf16.BF16Policy.from_config(config)
    assert again.get_config() == config
    text = repr(policy)
    assert "keep_last_fp32=True" in text and "round_outputs=True" in text
    assert "round_inputs" not in text  # defaults are left out
    assert repr(tfbf16.BF16Policy()) == "BF16Policy()"
    # The "class:Dense" form selects like the class itself did.
    dense = keras.layers.Dense(2, name="anything")
    assert again.selects(dense) and policy.selects(dense)
    assert not again.selects(keras.layers.Conv1D(2, 1, name="head"))


def test_policy_argument_errors():
    with pytest.raises(ValueError, match="regular expression"):
        tfbf16.BF16Policy(include=["conv[("])
    with pytest.raises(TypeError):
        tfbf16.BF16Policy(exclude=[3])
    with pytest.raises(ValueError, match="Unknown rounding"):
        tfbf16.BF16Policy(layer_roundings={"d0": "nearest"})
    with pytest.raises(TypeError):
        tfbf16.BF16Policy(layer_roundings={keras.layers.Dense: "rne"})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d0")])
    with pytest.raises(ValueError, match="native"):
        tfbf16.wrap(model, "rne", policy=tfbf16.BF16Policy(layer_roundings={"d0": "native"}))
    with pytest.raises(ValueError, match="native"):
        tfbf16.wrap(model, "native", policy=tfbf16.BF16Policy(layer_roundings={"d0": "trunc"}))
