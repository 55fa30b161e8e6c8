"""Rounding the tensors of one emulated call: inputs, outputs, gradients."""

import tensorflow as tf

from tfbf16.rounding import quantize, round_gradient


def is_float_tensor(value):
    """Whether `value` is a floating-point tensor or variable."""
    return isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_floating


def round_forward(value, settings, round_gradients):
    """Rounds a float tensor forward; its gradient too if `round_gradients`.

    Args:
        value: a floating-point tensor.
        settings: the layer's `LayerRounding` (names or runtime codes).
        round_gradients: whether the gradient flowing back is rounded too.

    Returns:
        The rounded tensor.
    """
    grad_rounding = settings.grad_rounding if round_gradients else None
    return quantize(value, settings.rounding, grad_rounding)


def round_gradient_only(value, settings):
    """Identity forward; rounds the gradient flowing back through `value`."""
    grad_rounding = settings.grad_rounding

    @tf.custom_gradient
    def _identity(x):
        def grad(upstream):
            return round_gradient(upstream, grad_rounding)

        return tf.identity(x), grad

    return _identity(value)


def map_float_arguments(fn, args, kwargs):
    """Applies `fn` to the float tensors among a call's arguments.

    Arguments whose keyword names a mask are left alone (a float attention
    mask is not data).

    Returns:
        (args, kwargs) with those tensors replaced.
    """

    def one(value):
        return fn(value) if is_float_tensor(value) else value

    args = tf.nest.map_structure(one, args)
    kwargs = {
        key: value if "mask" in key else tf.nest.map_structure(one, value)
        for key, value in kwargs.items()
    }
    return args, kwargs


def round_inputs(args, kwargs, settings):
    """Rounds the float tensors among a call's arguments (masks excepted)."""
    if not settings.inputs:
        return args, kwargs
    return map_float_arguments(
        lambda t: round_forward(t, settings, settings.input_gradients), args, kwargs
    )


def round_gemm_inputs(outputs, settings):
    """Rounds float tensors that go on into a GEMM (as its inputs)."""
    if not settings.inputs:
        return outputs
    return tf.nest.map_structure(
        lambda t: round_forward(t, settings, settings.input_gradients)
        if is_float_tensor(t) else t,
        outputs,
    )


def round_outputs(outputs, settings):
    """Rounds the outputs forward (if asked) and their gradients backward."""

    def one(value):
        if not is_float_tensor(value):
            return value
        if settings.outputs:
            return round_forward(value, settings, settings.output_gradients)
        if settings.output_gradients and settings.grad_rounding is not None:
            return round_gradient_only(value, settings)
        return value

    return tf.nest.map_structure(one, outputs)


class OperandRounder:
    """Rounds the activation operands of the GEMMs of one step, each once.

    A tensor that enters several GEMMs (h(t-1) in the per-gate matmuls of a
    GRU with implementation=1) is rounded once, so its gradient is rounded
    once, as where it enters a single fused matmul.

    Args:
        settings: the layer's `LayerRounding`.
    """

    def __init__(self, settings):
        self.settings = settings
        self._rounded = []  # (original, rounded); kept alive so `is` is safe

    def __call__(self, value):
        if not (self.settings.inputs and is_float_tensor(value)):
            return value
        for original, rounded in self._rounded:
            if original is value:
                return rounded
        rounded = round_forward(value, self.settings, self.settings.input_gradients)
        self._rounded.append((value, rounded))
        return rounded
