"""How one layer's call is emulated in bfloat16, for both Keras versions.

A wrapped layer's call is emulated the way Kalamkar et al.'s Quantlib does
it: every input of a GEMM or convolution is rounded to bfloat16 (activations
and weights forward, error gradients backward), the kernel itself runs in
FP32, and its output stays FP32. Most layers have one GEMM whose inputs are
the layer's inputs and weights. Composite layers have GEMMs inside; this
module reaches them by temporarily replacing methods of the inner objects for
the duration of one call (the replacement is an instance attribute that is
removed afterwards, so nothing of it is saved or left behind):

- recurrent layers: the cell's inputs and its recurrent state h_{t-1} are
  rounded at every step (the fused cuDNN/defun paths are switched off for the
  call so that the cell runs);
- MultiHeadAttention: query, key and value entering the attention matmuls and
  the attention probabilities entering the second matmul;
- any Dense/EinsumDense/Conv sublayer of a composite layer (the projections
  of MultiHeadAttention, the low-rank factors of tensorflow-recommenders'
  Cross): its inputs.

Weights are rounded once per call by the Keras-version-specific wrapper.
"""

import contextlib
import inspect

import tensorflow as tf

from tfbf16.rounding import quantize, round_gradient

# Layer kinds, by class name anywhere in the class's MRO (so subclasses count).
_GEMM = {
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
    "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D",
}
_NORMALIZATION = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}
_RECURRENT = {"SimpleRNN", "LSTM", "GRU", "RNN", "Bidirectional"}
_CELLS = {"SimpleRNNCell", "LSTMCell", "GRUCell"}
_ATTENTION = {"MultiHeadAttention"}
_EMBEDDING = {"Embedding"}

GEMM, NORMALIZATION, RECURRENT, ATTENTION, EMBEDDING, CROSS = (
    "gemm", "normalization", "recurrent", "attention", "embedding", "cross",
)
#: Kinds that contain GEMMs ("compute layers" for keep_first/last_fp32).
COMPUTE_KINDS = (GEMM, RECURRENT, ATTENTION, CROSS)
#: Kinds that tfbf16 emulates.
EMULATED_KINDS = COMPUTE_KINDS + (NORMALIZATION, EMBEDDING)
NO_GEMM = "no-gemm"  # no weights and no GEMM: FP32, as in the paper
UNSUPPORTED = "unsupported"
MODEL = "model"


def _mro_names(layer):
    return {cls.__name__ for cls in type(layer).__mro__}


def layer_kind(layer):
    """Classifies a layer for emulation.

    Args:
        layer: a Keras 3 or tf_keras layer (or model).

    Returns:
        One of the kind constants of this module.
    """
    names = _mro_names(layer)
    if "Functional" in names or "Sequential" in names or "Model" in names:
        return MODEL
    if type(layer).__name__ == "Cross" and "tensorflow_recommenders" in type(layer).__module__:
        return CROSS
    for kind, known in (
        (GEMM, _GEMM), (NORMALIZATION, _NORMALIZATION), (ATTENTION, _ATTENTION),
        (EMBEDDING, _EMBEDDING),
    ):
        if names & known:
            return kind
    if names & _RECURRENT and _recurrent_cells(layer) is not None:
        return RECURRENT
    if not layer.weights and not _has_sublayers(layer):
        return NO_GEMM
    return UNSUPPORTED


def _has_sublayers(layer):
    return any(sub is not layer for sub in layer._flatten_layers(include_self=False))


def _recurrent_cells(layer):
    """The known cells of a recurrent layer, or None if one is unknown."""
    cells = [
        sub for sub in layer._flatten_layers(include_self=True)
        if "Cell" in type(sub).__name__ or _mro_names(sub) & _CELLS
    ]
    if not cells or any(not (_mro_names(cell) & _CELLS) for cell in cells):
        return None
    return cells


def rounded_tensors_of(layer, kind):
    """Human-readable list of what emulation rounds in a layer of this kind."""
    return {
        GEMM: "inputs, weights, gradients",
        CROSS: "inputs (also of the low-rank factor), weights, gradients",
        NORMALIZATION: "inputs, gamma/beta, gradients",
        EMBEDDING: "looked-up rows, their gradients",
        RECURRENT: "step inputs, h(t-1) at every step, weights, gradients",
        ATTENTION: "projection inputs, q/k/v, attention probs, weights, gradients",
    }.get(kind, "")


def is_float_tensor(value):
    return isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_floating


def round_forward(value, settings, round_gradients):
    """Rounds a float tensor forward; its gradient too if `round_gradients`."""
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


@contextlib.contextmanager
def replaced_attribute(obj, name, value):
    """Sets `obj.name = value` (bypassing Keras tracking) for a with-block."""
    had_own = name in vars(obj)
    previous = vars(obj).get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had_own:
            object.__setattr__(obj, name, previous)
        else:
            object.__delattr__(obj, name)


def _round_cell_call(cell, settings):
    call = cell.call

    def call_with_rounded_step(inputs, states, *args, **kwargs):
        if settings.inputs:
            inputs = round_forward(inputs, settings, settings.input_gradients)
            if isinstance(states, (list, tuple)):
                states = type(states)(
                    [round_forward(states[0], settings, settings.input_gradients)]
                    + list(states[1:])
                )
            else:
                states = round_forward(states, settings, settings.input_gradients)
        return call(inputs, states, *args, **kwargs)

    return call_with_rounded_step


def _round_sublayer_call(sublayer, settings):
    call = sublayer.call

    def call_with_rounded_inputs(*args, **kwargs):
        args, kwargs = round_inputs(args, kwargs, settings)
        return call(*args, **kwargs)

    return call_with_rounded_inputs


def _round_attention_call(layer, settings):
    compute_attention = layer._compute_attention
    # Keras 3 sends dropout-free attention to a fused dot_product_attention
    # kernel unless attention scores are requested; ask for them so that the
    # explicit einsum path (whose inputs we can round) runs. The caller drops
    # the scores it did not ask for.
    signature = inspect.signature(compute_attention)

    def compute_attention_with_rounded_inputs(query, key, value, *args, **kwargs):
        (query, key, value), _ = round_inputs((query, key, value), {}, settings)
        bound = signature.bind(query, key, value, *args, **kwargs)
        if "return_attention_scores" in signature.parameters:
            bound.arguments["return_attention_scores"] = True
        return compute_attention(*bound.args, **bound.kwargs)

    return compute_attention_with_rounded_inputs


def _round_output_call(call, settings):
    """`call` with its float outputs rounded (as inputs of a next GEMM)."""

    def call_with_rounded_outputs(*args, **kwargs):
        outputs = call(*args, **kwargs)
        if not settings.inputs:
            return outputs
        return tf.nest.map_structure(
            lambda t: round_forward(t, settings, settings.input_gradients)
            if is_float_tensor(t) else t,
            outputs,
        )

    return call_with_rounded_outputs


@contextlib.contextmanager
def interior_rounding(layer, kind, settings):
    """Rounds the GEMM inputs inside a composite layer for one call.

    Args:
        layer: the wrapped (inner) layer.
        kind: its kind, from `layer_kind`.
        settings: its `LayerRounding`.

    Yields:
        Nothing; on exit every replaced method is restored.
    """
    with contextlib.ExitStack() as stack:
        for sub in layer._flatten_layers(include_self=False):
            if _mro_names(sub) & _CELLS:
                stack.enter_context(replaced_attribute(sub, "call", _round_cell_call(sub, settings)))
            elif layer_kind(sub) == GEMM:
                stack.enter_context(
                    replaced_attribute(sub, "call", _round_sublayer_call(sub, settings))
                )
        if kind == RECURRENT:
            for sub in layer._flatten_layers(include_self=True):
                # Fused kernels (cuDNN, tf_keras' defun LSTM/GRU) bypass the cell.
                if getattr(sub, "use_cudnn", None) not in (None, False):
                    stack.enter_context(replaced_attribute(sub, "use_cudnn", False))
                if getattr(sub, "_could_use_gpu_kernel", False):
                    stack.enter_context(replaced_attribute(sub, "_could_use_gpu_kernel", False))
        if kind == ATTENTION:
            # q, k, v enter the first and second einsum; the probabilities
            # (softmax output, and dropout's when active) the second.
            stack.enter_context(
                replaced_attribute(layer, "_compute_attention", _round_attention_call(layer, settings))
            )
            stack.enter_context(
                replaced_attribute(
                    layer, "_masked_softmax", _round_output_call(layer._masked_softmax, settings)
                )
            )
            dropout = layer._dropout_layer
            stack.enter_context(
                replaced_attribute(dropout, "call", _round_output_call(dropout.call, settings))
            )
            if getattr(layer, "_flash_attention", False):
                stack.enter_context(replaced_attribute(layer, "_flash_attention", False))
        yield


def weights_to_round(layer, kind):
    """The trainable float variables whose reads emulation rounds.

    Embedding tables are not rounded as a whole (the looked-up rows are,
    which is cheaper for big tables and keeps gradients sparse).
    """
    skip = set()
    for sub in layer._flatten_layers(include_self=True):
        if layer_kind(sub) == EMBEDDING:
            skip.update(id(v) for v in sub.weights)
    return [
        v for v in layer.trainable_weights
        if id(v) not in skip and tf.as_dtype(v.dtype).is_floating
    ]
