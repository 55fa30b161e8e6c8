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
  call so that the cell runs). SimpleRNN and LSTM cells use x_t and h_{t-1}
  only as GEMM inputs (LSTM's carry c_{t-1} is not rounded), so their call
  gets rounded arguments. A GRU cell also uses h_{t-1} in the FP32
  interpolation z * h_{t-1} + (1 - z) * hh, so instead its matmuls are
  hooked: for the duration of its call, the module namespace its source
  calls the matmul through (`ops.matmul` in Keras 3, `backend.dot` in
  tf_keras) is replaced by a proxy that rounds the activation operand of
  each matmul (x_t @ kernel, h_{t-1} @ recurrent_kernel, and, with
  reset_after=False, (r * h_{t-1}) @ recurrent_kernel) and leaves every
  other use of h_{t-1} FP32;
- MultiHeadAttention: query, key and value entering the attention matmuls and
  the attention probabilities entering the second matmul;
- any Dense/EinsumDense/Conv sublayer of a composite layer (the projections
  of MultiHeadAttention, the low-rank factors of tensorflow-recommenders'
  Cross): its inputs.

Weights are rounded once per call by the Keras-version-specific wrapper.
"""

import contextlib
import inspect
import threading
import warnings

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
        RECURRENT: "step inputs, h(t-1) at every step (GRU: where it enters a matmul), "
        "weights, gradients",
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


# --- GRU: rounding only the matmul inputs of the real cell code
#
# While a hooked GRU cell's call runs, the module-level name that GRUCell.call
# reaches its matmul through (Keras 3: `ops`, whose `matmul` it calls;
# tf_keras: `backend`, whose `dot` it calls) is bound to a proxy in that
# module's globals. The proxy delegates every attribute to the real module;
# its matmul rounds the first (activation) operand when the calling thread is
# inside a hooked cell call, and is the plain function otherwise (another
# thread's or an unwrapped cell's matmuls are untouched). The second operand
# is a kernel slice, which the wrapper has already rounded. The proxy is
# bound only while at least one hooked call runs (reference-counted, so
# nested or concurrent calls, e.g. MirroredStrategy's replica threads,
# restore the real module exactly once). Because it acts while the cell's
# Python code runs, it works eagerly, when traced by tf.function or XLA and
# inside tf.while_loop bodies; the rounding ops it adds are `round_forward`'s
# custom gradients, as everywhere else.

# (module attribute name in GRUCell.call's globals, matmul function name)
_GRU_MATMUL_NAMES = (("ops", "matmul"), ("backend", "dot"))
_gru_hook_lock = threading.Lock()
_gru_hook_installed = {}  # (id(globals), name) -> [proxy, original, count]
_gru_hook_thread = threading.local()  # .steps: stack of _GemmInputRounder


class _GemmInputRounder:
    """Rounds the activation operands of one GRU cell step's matmuls.

    A tensor that enters several matmuls of the step (h(t-1) in the
    per-gate matmuls of implementation=1) is rounded once, so its gradient
    is rounded once, as where it enters the single fused matmul of
    implementation=2.
    """

    def __init__(self, settings):
        self.settings = settings
        self.matmuls = 0
        self._rounded = []  # (original, rounded); kept alive so `is` is safe

    def __call__(self, value):
        self.matmuls += 1
        if not is_float_tensor(value):
            return value
        for original, rounded in self._rounded:
            if original is value:
                return rounded
        rounded = round_forward(value, self.settings, self.settings.input_gradients)
        self._rounded.append((value, rounded))
        return rounded


class _RoundingMatmulNamespace:
    """Stands in for a module whose `fn_name` rounds its first operand."""

    def __init__(self, module, fn_name):
        self._tfbf16_module = module
        original = getattr(module, fn_name)

        def matmul_with_rounded_input(a, b, *args, **kwargs):
            steps = getattr(_gru_hook_thread, "steps", None)
            if steps:
                a = steps[-1](a)
            return original(a, b, *args, **kwargs)

        setattr(self, fn_name, matmul_with_rounded_input)

    def __getattr__(self, name):
        if name == "_tfbf16_module":  # not set yet (e.g. while copying)
            raise AttributeError(name)
        return getattr(self._tfbf16_module, name)


def _gru_matmul_target(cell):
    """(globals of GRUCell.call, module name, function name), or None."""
    for cls in type(cell).__mro__:
        if cls.__name__ == "GRUCell" and "call" in vars(cls):
            namespace = getattr(vars(cls)["call"], "__globals__", {})
            for name, fn_name in _GRU_MATMUL_NAMES:
                module = namespace.get(name)
                if isinstance(module, _RoundingMatmulNamespace):
                    module = module._tfbf16_module
                if module is not None and callable(getattr(module, fn_name, None)):
                    return namespace, name, fn_name
    return None


@contextlib.contextmanager
def _gru_matmul_hook(target, settings):
    namespace, name, fn_name = target
    key = (id(namespace), name)
    with _gru_hook_lock:
        entry = _gru_hook_installed.get(key)
        if entry is None:
            original = namespace[name]
            entry = [_RoundingMatmulNamespace(original, fn_name), original, 0]
            _gru_hook_installed[key] = entry
            namespace[name] = entry[0]
        entry[2] += 1
    steps = getattr(_gru_hook_thread, "steps", None)
    if steps is None:
        steps = _gru_hook_thread.steps = []
    rounder = _GemmInputRounder(settings)
    steps.append(rounder)
    try:
        yield rounder
    finally:
        steps.pop()
        with _gru_hook_lock:
            entry[2] -= 1
            if entry[2] == 0:
                namespace[name] = entry[1]
                del _gru_hook_installed[key]


def _round_gru_cell_call(cell, settings, target):
    call = cell.call
    warned = []

    def call_with_rounded_matmul_inputs(inputs, states, *args, **kwargs):
        if not settings.inputs:
            return call(inputs, states, *args, **kwargs)
        with _gru_matmul_hook(target, settings) as rounder:
            outputs = call(inputs, states, *args, **kwargs)
        if not rounder.matmuls and not warned:
            warned.append(True)
            warnings.warn(
                f"tfbf16: GRU cell {cell.name!r} ({type(cell).__name__}) ran no matmul "
                f"through {target[1]}.{target[2]}, so its step inputs and h(t-1) stay "
                "FP32 (its call does not use the GRUCell code that tfbf16 hooks).",
                stacklevel=2,
            )
        return outputs

    return call_with_rounded_matmul_inputs


def _round_cell_call(cell, settings):
    if "GRUCell" in _mro_names(cell):
        target = _gru_matmul_target(cell)
        if target is not None:
            return _round_gru_cell_call(cell, settings, target)
        warnings.warn(
            f"tfbf16: cannot find the matmul of GRU cell {cell.name!r} "
            f"({type(cell).__name__}); rounding its input and h(t-1) for the whole "
            "step instead (the FP32 interpolation then uses the rounded state).",
            stacklevel=3,
        )
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
