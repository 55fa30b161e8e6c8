"""What the Keras 3 and tf_keras `BF16Wrapper`s share, and the public class.

`tfbf16.BF16Wrapper(layer, ...)` returns the implementation that matches the
layer's own Keras: `tfbf16.keras3_wrapper.BF16Wrapper` for Keras 3 layers,
`tfbf16.tf_keras_wrapper.BF16Wrapper` for tf_keras (Keras 2) layers. Both are
instances of `tfbf16.BF16Wrapper`.
"""

import abc
import contextlib
import dataclasses
import warnings

import tensorflow as tf

from tfbf16 import emulation
from tfbf16.policy import WRAP_ROUNDINGS, LayerRounding
from tfbf16.rounding import ROUNDING_CODES, check_rounding, rounding_code

_NATIVE_POLICY = "mixed_bfloat16"


def make_settings(rounding, grad_rounding, settings):
    """Validates a wrapper's rounding arguments into a `LayerRounding`."""
    if settings is not None:
        if isinstance(settings, dict):
            settings = LayerRounding.from_config(settings)
        check_rounding(settings.rounding, WRAP_ROUNDINGS)
        return settings
    check_rounding(rounding, WRAP_ROUNDINGS)
    if rounding == "native":
        if grad_rounding not in (None, "native"):
            raise ValueError(
                "rounding='native' computes in real bfloat16; its gradients are "
                f"bfloat16 by construction, so grad_rounding={grad_rounding!r} "
                "cannot be honoured. Leave grad_rounding=None."
            )
        return LayerRounding("native", None)
    if grad_rounding is None:
        grad_rounding = rounding
    check_rounding(grad_rounding)
    return LayerRounding(rounding, grad_rounding)


def check_native_rounding(rounding):
    """Native bfloat16 hardware rounds to nearest even and nothing else."""
    if rounding in ("trunc", "stochastic"):
        raise ValueError(
            f"rounding={rounding!r} is not available natively: bfloat16 hardware "
            "(TPU, AVX512_BF16/AMX, GPUs) rounds to nearest even. Use "
            f"rounding={rounding!r} in emulation (the default), or "
            "rounding='native' for real bfloat16 compute with RNE."
        )


class EmulatedCallMixin:
    """The call logic of a BF16 wrapper, for either Keras version.

    Subclasses provide `_call_with_weights(rounded, args, kwargs)` (call the
    inner layer so that it reads `rounded[id(variable)]` instead of each
    listed variable) and `_native_scope()` (a context in which the inner
    layer computes in bfloat16).
    """

    def _init_emulation(self, layer, rounding, grad_rounding, settings):
        self.settings = make_settings(rounding, grad_rounding, settings)
        self.kind = emulation.layer_kind(layer)
        if self.kind not in emulation.EMULATED_KINDS:
            raise ValueError(
                f"tfbf16 cannot emulate layer {layer.name!r} of class "
                f"{type(layer).__name__} (kind: {self.kind}). Supported: Dense, "
                "EinsumDense, Conv*/Conv*Transpose, DepthwiseConv*, SeparableConv*, "
                "Embedding, SimpleRNN/LSTM/GRU (also in Bidirectional), "
                "MultiHeadAttention, Batch/Layer/GroupNormalization and "
                "tensorflow-recommenders' Cross. tfbf16.wrap leaves other layers FP32."
            )
        self._warned_unreached = False

    @property
    def rounding(self):
        """The rounding the wrapper was created with (see `current_rounding`)."""
        return self.settings.rounding

    def _build_rounding_codes(self, constant_initializer):
        """Creates the variables that hold the rounding while a graph runs.

        Emulated roundings are read from two scalar int32 variables (forward
        and gradient, codes of `tfbf16.rounding.ROUNDING_CODES`) at every
        call, so `set_rounding` can switch a traced training step between
        "fp32", "rne", "trunc" and "stochastic" without retracing it.
        """
        if self.settings.rounding == "native" or hasattr(self, "rounding_code"):
            return
        grad = self.settings.grad_rounding or "fp32"
        self.rounding_code = self.add_weight(
            name="rounding_code", shape=(), dtype="int32", trainable=False,
            initializer=constant_initializer(rounding_code(self.settings.rounding)),
        )
        self.grad_rounding_code = self.add_weight(
            name="grad_rounding_code", shape=(), dtype="int32", trainable=False,
            initializer=constant_initializer(rounding_code(grad)),
        )

    def set_rounding(self, rounding, grad_rounding=None):
        """Switches this layer's emulated rounding (no retrace needed).

        Args:
            rounding: "fp32", "rne", "trunc" or "stochastic".
            grad_rounding: the gradient's rounding; None means "same as
                rounding".
        """
        if self.settings.rounding == "native":
            raise ValueError(
                f"Layer {self.name!r} computes in native bfloat16; its rounding "
                "cannot be switched at run time. Wrap the model with an emulated "
                "rounding to schedule roundings."
            )
        self.rounding_code.assign(rounding_code(rounding))
        self.grad_rounding_code.assign(rounding_code(grad_rounding or rounding))

    def current_rounding(self):
        """(forward, gradient) rounding names in effect now."""
        if self.settings.rounding == "native" or not hasattr(self, "rounding_code"):
            return self.settings.rounding, self.settings.grad_rounding
        names = {code: name for name, code in ROUNDING_CODES.items()}
        return (
            names[int(tf.convert_to_tensor(self.rounding_code))],
            names[int(tf.convert_to_tensor(self.grad_rounding_code))],
        )

    #: Set on an instance (bypassing Keras tracking, never saved) by
    #: `tfbf16.callbacks` while it instruments a training step: a callable
    #: `observer(wrapper, call, inputs, args, kwargs)` that must return
    #: `call(inputs, args, kwargs)` (possibly with observed inputs/outputs).
    #: None (the default) costs one attribute read at trace time.
    _tfbf16_observer = None

    def _ensure_inner_built(self, inputs, args, kwargs):
        """Builds an unbuilt inner layer through one plain call of its own.

        Only the layer's own `__call__` knows how to build it from all of its
        arguments (MultiHeadAttention needs query and value shapes). The call
        runs in inference mode and its result is dropped, so it updates no
        statistics.
        """
        if self.layer.built:
            return
        build_kwargs = dict(kwargs)
        if "training" in build_kwargs:
            build_kwargs["training"] = False
        self._call_inner_plain(inputs, args, build_kwargs)

    def _emulated_call(self, inputs, args, kwargs):
        self._ensure_inner_built(inputs, args, kwargs)
        observer = self._tfbf16_observer
        if observer is not None:
            return observer(self, self._unobserved_call, inputs, args, kwargs)
        return self._unobserved_call(inputs, args, kwargs)

    def _unobserved_call(self, inputs, args, kwargs):
        settings = self.settings
        if settings.rounding != "native":
            settings = dataclasses.replace(
                settings,
                rounding=tf.convert_to_tensor(self.rounding_code),
                grad_rounding=tf.convert_to_tensor(self.grad_rounding_code),
            )
        if self.settings.rounding == "native":
            # Cast every float input: Keras autocasts only the first one.
            (inputs, args), kwargs = emulation.map_float_arguments(
                _to_bfloat16, (inputs, args), kwargs
            )
            with self._native_scope():
                outputs = self._call_inner_plain(inputs, args, kwargs)
            return tf.nest.map_structure(_to_float32, outputs)
        if self.kind == emulation.EMBEDDING:
            outputs = self._call_inner_plain(inputs, args, kwargs)
            return tf.nest.map_structure(
                lambda t: emulation.round_forward(t, settings, settings.output_gradients)
                if emulation.is_float_tensor(t) else t,
                outputs,
            )
        if self.kind != emulation.RECURRENT:  # the cell rounds each step's input
            (inputs, args), kwargs = emulation.round_inputs((inputs, args), kwargs, settings)
        rounded = {}
        if settings.weights:
            for variable in emulation.weights_to_round(self.layer, self.kind):
                rounded[id(variable)] = emulation.round_forward(
                    tf.convert_to_tensor(variable), settings, settings.weight_gradients
                )
        with emulation.interior_rounding(self.layer, self.kind, settings):
            outputs = self._call_with_weights(rounded, inputs, args, kwargs)
        return emulation.round_outputs(outputs, settings)

    def _warn_unreached(self, variables):
        if variables and not self._warned_unreached:
            self._warned_unreached = True
            warnings.warn(
                f"tfbf16: layer {self.layer.name!r} ({type(self.layer).__name__}) "
                f"reads weights {sorted(v.name for v in variables)} in a way the "
                "wrapper cannot intercept; they stay FP32 in the forward pass.",
                stacklevel=3,
            )

    def emulation_config(self):
        return {"settings": self.settings.get_config()}


def _to_bfloat16(value):
    return tf.cast(value, tf.bfloat16) if value.dtype != tf.bfloat16 else value


def _to_float32(value):
    if emulation.is_float_tensor(value) and value.dtype != tf.float32:
        return tf.cast(value, tf.float32)
    return value


@contextlib.contextmanager
def no_scope():
    yield


class BF16Wrapper(abc.ABC):
    """Emulates bfloat16 in one Keras layer (Keras 3 or tf_keras).

    In the forward pass the layer's floating-point inputs and the weights it
    reads are rounded to bfloat16 values; in the backward pass the gradients
    flowing into its inputs and arriving at its outputs are rounded; the
    layer's own computation runs in FP32 (FP32 accumulation) and its
    variables stay FP32. Composite layers (RNNs, MultiHeadAttention, Cross)
    also have the GEMM inputs inside them rounded. With `rounding="native"`
    the layer computes in real bfloat16 (FP32 variables, outputs cast back to
    FP32), like Keras' `mixed_bfloat16` policy.

    Calling `tfbf16.BF16Wrapper(layer, ...)` returns the implementation for
    the layer's Keras version; both are instances of this class.

    Args:
        layer: the layer to wrap (built or not).
        rounding: "rne", "trunc", "stochastic" or "native".
        grad_rounding: rounding of gradients; None means "same as rounding".
        settings: a `tfbf16.policy.LayerRounding` (or its config dict) with
            finer control; overrides `rounding` and `grad_rounding`.
        **kwargs: passed to the Keras `Wrapper` base class (e.g. `name`).

    Returns:
        A Keras layer.

    Example:

    >>> dense = tfbf16.BF16Wrapper(keras.layers.Dense(16), rounding="rne")
    >>> y = dense(tf.ones([2, 8]))
    """

    def __new__(cls, layer, *args, **kwargs):
        if cls is not BF16Wrapper:
            return super().__new__(cls)
        from tfbf16 import keras_versions  # noqa: avoid an import cycle

        implementation = keras_versions.flavour_of(layer).wrapper_class
        return implementation(layer, *args, **kwargs)
