"""`BF16Wrapper` for Keras 3 layers.

Weights are rounded through `Layer.stateless_call`: the inner layer runs
with its trainable variables replaced by their rounded values (a gradient
still flows to each variable through the rounding op), and the new values of
its non-trainable variables (BatchNormalization statistics, dropout seeds)
are assigned back afterwards.
"""

import contextlib

import keras

from tfbf16.backends import common
from tfbf16.backends.keras3.backend import KERAS3
from tfbf16.emulation import kinds
from tfbf16.wrapper_base import BF16Wrapper as _PublicBF16Wrapper
from tfbf16.wrapper_base import EmulatedCallMixin

_NATIVE_POLICY = "mixed_bfloat16"


@keras.saving.register_keras_serializable(package="tfbf16", name="BF16Wrapper")
class BF16Wrapper(common.PresentsInnerLayer, EmulatedCallMixin, keras.layers.Wrapper):
    """Keras 3 implementation of `tfbf16.BF16Wrapper` (see its docstring)."""

    _backend = KERAS3

    def __init__(self, layer, *args, **kwargs):
        super().__init__(layer, *args, **kwargs)
        # Present the inner layer's call signature to Keras, so that Keras
        # injects `training` and `mask` exactly when the inner layer takes
        # them and graph nodes record the same arguments as for the
        # unwrapped layer (which `unwrap` relies on). `call` below accepts
        # anything and passes it on.
        self._call_signature = layer._call_signature
        self.call_signature_parameters = list(layer.call_signature_parameters)
        self._call_has_training_arg = layer._call_has_training_arg
        self._call_has_mask_arg = layer._call_has_mask_arg
        self._call_context_args = set(layer._call_context_args)
        self._call_has_context_arg = dict(layer._call_has_context_arg)

    def build(self, input_shape=None):
        # An unbuilt inner layer is built by its own first call (see
        # EmulatedCallMixin._ensure_inner_built): only it knows the shapes
        # of all its arguments (MultiHeadAttention needs query and value).
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self._emulated_call(inputs, args, kwargs)

    def _call_inner_plain(self, inputs, args, kwargs):
        return self.layer(inputs, *args, **kwargs)

    def _call_with_weights(self, rounded, inputs, args, kwargs):
        layer = self.layer
        trainable = [rounded.get(id(v), v.value) for v in layer.trainable_variables]
        non_trainable_variables = layer.non_trainable_variables
        outputs, new_values = layer.stateless_call(
            trainable, [v.value for v in non_trainable_variables], inputs, *args, **kwargs
        )
        for variable, value in zip(non_trainable_variables, new_values):
            if value is not variable.value:
                variable.assign(value)
        return outputs

    @contextlib.contextmanager
    def _native_scope(self):
        changed = []
        try:
            for sub in KERAS3.sublayers(self.layer, include_self=True):
                if kinds.layer_kind(sub) != kinds.NORMALIZATION:
                    changed.append((sub, sub.dtype_policy))
                    sub.dtype_policy = _NATIVE_POLICY
            yield
        finally:
            for sub, policy in changed:
                sub.dtype_policy = policy

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self):
        return {**super().get_config(), **self.emulation_config()}


_PublicBF16Wrapper.register(BF16Wrapper)
KERAS3.wrapper_class = BF16Wrapper
