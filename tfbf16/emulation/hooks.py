"""Hooks on the objects inside a wrapped layer, installed once.

`install(obj, name, emulated)` replaces the method `name` of one object (an
instance attribute, bypassing Keras' tracking; nothing of it is saved) by a
dispatcher that calls `emulated(frame, original, *args, **kwargs)` while an
`EmulationFrame` governing `obj` is active on the calling thread (see
`tfbf16.emulation.context`) and `original(*args, **kwargs)` otherwise. The
dispatcher keeps the original's signature (Keras inspects it for `training`
and `mask`). Installing twice is a no-op, so every wrapper of a layer (and
every thread) shares one set of hooks; per-call behaviour comes only from
the frame.

The emulated behaviours below are the same for both Kerases; the back ends
decide which methods of which objects get which behaviour.
"""

import functools
import inspect
import threading
import types
import warnings

from tfbf16.emulation import context
from tfbf16.emulation.tensors import (
    OperandRounder, round_forward, round_gemm_inputs, round_inputs,
)

_HOOKED = "_tfbf16_hooked_methods"
#: Held while hooks are installed (re-entrant: a back end may hold it around
#: a whole installation).
INSTALL_LOCK = threading.RLock()


def install(obj, name, emulated):
    """Hooks method `name` of `obj` (once).

    The hook is bound to `obj` like the method it replaces, with the same
    signature, so that code inspecting the method (Keras' argument checks,
    tf_keras' SavedModel tracing) sees what it saw before.

    Args:
        obj: a layer (or other object) inside a wrapped layer.
        name: the method to hook.
        emulated: `emulated(frame, original, *args, **kwargs)`, what a call
            does while a frame governing `obj` is active.

    Returns:
        True if the hook was installed now, False if it already was.
    """
    with INSTALL_LOCK:
        hooked = vars(obj).get(_HOOKED)
        if hooked is None:
            hooked = set()
            object.__setattr__(obj, _HOOKED, hooked)
        if name in hooked:
            return False
        original = getattr(obj, name)
        function = getattr(original, "__func__", original)

        def dispatch(self, *args, **kwargs):
            frame = context.frame_for(self)
            if frame is None:
                return original(*args, **kwargs)
            return emulated(frame, original, *args, **kwargs)

        functools.update_wrapper(
            dispatch, function, assigned=("__module__", "__name__", "__qualname__", "__doc__"),
            updated=(),
        )
        if isinstance(original, types.MethodType):
            dispatch.__signature__ = inspect.signature(function)
            hook = types.MethodType(dispatch, obj)
        else:  # an instance attribute already (a callable, not a method)
            hook = functools.partial(dispatch, obj)
            hook.__signature__ = inspect.signature(original)
        object.__setattr__(obj, name, hook)
        hooked.add(name)
        return True


def is_hooked(obj, name):
    """Whether `install` hooked method `name` of `obj`."""
    return name in vars(obj).get(_HOOKED, ())


# --- emulated behaviours: `emulated(frame, original, *args, **kwargs)`


def round_arguments(frame, original, *args, **kwargs):
    """A GEMM sublayer: its float inputs are rounded (masks excepted)."""
    args, kwargs = round_inputs(args, kwargs, frame.settings)
    return original(*args, **kwargs)


def round_results(frame, original, *args, **kwargs):
    """A computation whose float results go on into a GEMM: rounds them."""
    return round_gemm_inputs(original(*args, **kwargs), frame.settings)


def round_step_inputs(frame, original, inputs, states, *args, **kwargs):
    """An RNN cell whose step input and h(t-1) only enter GEMMs.

    SimpleRNN and LSTM cells use x(t) and h(t-1) (the first state) only as
    matmul operands (LSTM's carry c(t-1) is not rounded), so rounding the
    arguments of the step rounds exactly the GEMM inputs.
    """
    settings = frame.settings
    if settings.inputs:
        inputs = round_forward(inputs, settings, settings.input_gradients)
        if isinstance(states, (list, tuple)):
            states = type(states)(
                [round_forward(states[0], settings, settings.input_gradients)]
                + list(states[1:])
            )
        else:
            states = round_forward(states, settings, settings.input_gradients)
    return original(inputs, states, *args, **kwargs)


def step_with_rounded_operands(step):
    """An RNN cell computed by tfbf16's own `step` (see `tfbf16.emulation.gru`).

    Args:
        step: `step(cell, inputs, states, training, round_operand)`, the
            cell's computation with every GEMM activation operand passed
            through `round_operand`.

    Returns:
        An emulated behaviour for the cell's `call`.
    """

    def emulated(frame, original, inputs, states, training=None, **kwargs):
        if kwargs:
            raise TypeError(
                f"tfbf16's emulated RNN step takes (inputs, states, training); got "
                f"the extra arguments {sorted(kwargs)}."
            )
        cell = original.__self__
        return step(cell, inputs, states, training, OperandRounder(frame.settings))

    return emulated


def attention_with_rounded_operands(compute_attention):
    """MultiHeadAttention's attention: q, k and v rounded as GEMM inputs.

    The attention scores are requested from the explicit einsum path (Keras 3
    would otherwise send dropout-free attention to a fused kernel whose
    inputs cannot all be rounded); the caller drops the scores it did not ask
    for. The probabilities entering the second einsum are rounded by the
    hooks on the masked softmax and the dropout layer.

    Args:
        compute_attention: the layer's original `_compute_attention` (bound),
            to read its signature.

    Returns:
        An emulated behaviour for `_compute_attention`.
    """
    signature = inspect.signature(compute_attention)

    def emulated(frame, original, query, key, value, *args, **kwargs):
        (query, key, value), _ = round_inputs((query, key, value), {}, frame.settings)
        bound = signature.bind(query, key, value, *args, **kwargs)
        if "return_attention_scores" in signature.parameters:
            bound.arguments["return_attention_scores"] = True
        return original(*bound.args, **bound.kwargs)

    return emulated


def warn_once(key, message):
    """Warns `message` once per `key` (a hashable) for the whole process."""
    with INSTALL_LOCK:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, stacklevel=3)


_warned = set()


__all__ = [
    "INSTALL_LOCK", "install", "is_hooked", "round_arguments", "round_results", "round_step_inputs",
    "step_with_rounded_operands", "attention_with_rounded_operands", "warn_once",
]
