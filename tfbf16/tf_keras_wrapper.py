"""`BF16Wrapper` for tf_keras (Keras 2) layers.

tf_keras layers read their weights through attributes (`self.kernel`), so
for the duration of one call each weight attribute of the inner layer and of
its sublayers is replaced by the rounded tensor (a gradient still flows to
the variable through the rounding op), then restored.
"""

import contextlib
import copy

import tensorflow as tf
import tf_keras

from tfbf16 import emulation
from tfbf16.wrapper_base import BF16Wrapper as _PublicBF16Wrapper
from tfbf16.wrapper_base import EmulatedCallMixin

_NATIVE_POLICY = "mixed_bfloat16"


@tf_keras.saving.register_keras_serializable(package="tfbf16", name="BF16Wrapper")
class BF16Wrapper(EmulatedCallMixin, tf_keras.layers.Wrapper):
    """tf_keras implementation of `tfbf16.BF16Wrapper` (see its docstring)."""

    def __init__(self, layer, rounding="rne", grad_rounding=None, *, settings=None, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self._init_emulation(layer, rounding, grad_rounding, settings)
        self.supports_masking = layer.supports_masking

    def build(self, input_shape=None):
        # An unbuilt inner layer is built by its own first call (see
        # EmulatedCallMixin._ensure_inner_built).
        self._build_rounding_codes(tf_keras.initializers.Constant)
        self.built = True

    def call(self, inputs, *args, training=None, mask=None, **kwargs):
        if training is not None and self.layer._expects_training_arg:
            kwargs["training"] = training
        if mask is not None and self.layer._expects_mask_arg:
            kwargs["mask"] = mask
        return self._emulated_call(inputs, args, kwargs)

    def _call_inner_plain(self, inputs, args, kwargs):
        return self.layer(inputs, *args, **kwargs)

    def _call_with_weights(self, rounded, inputs, args, kwargs):
        with _weights_replaced(self.layer, rounded) as unreached:
            outputs = self.layer(inputs, *args, **kwargs)
        self._warn_unreached(unreached)
        return outputs

    @contextlib.contextmanager
    def _native_scope(self):
        subs = [
            sub for sub in self.layer._flatten_layers(include_self=True)
            if emulation.layer_kind(sub) != emulation.NORMALIZATION
        ]
        as_bf16 = {}
        for sub in subs:
            for variable in sub._trainable_weights + sub._non_trainable_weights:
                if variable.dtype.is_floating:
                    as_bf16[id(variable)] = tf.cast(variable, tf.bfloat16)
        policies = [(sub, sub._dtype_policy) for sub in subs]
        try:
            for sub, _ in policies:
                sub._set_dtype_policy(_NATIVE_POLICY)
            with _weights_replaced(self.layer, as_bf16):
                yield
        finally:
            for sub, policy in policies:
                sub._set_dtype_policy(policy)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        return {**super().get_config(), **self.emulation_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # tf_keras' Wrapper.from_config picks the legacy format from the
        # *wrapper's* config, which ignores the inner layer's registered name
        # (e.g. "Custom>Cross" for tensorflow-recommenders' Cross).
        config = copy.deepcopy(config)
        layer_config = config.pop("layer")
        registered = tf_keras.saving.get_registered_object(
            layer_config.get("registered_name") or ""
        )
        if registered is not None:  # e.g. "Custom>Cross"; h5 looks up "Cross"
            custom_objects = {**(custom_objects or {}), layer_config["class_name"]: registered}
        layer = tf_keras.layers.deserialize(
            layer_config,
            custom_objects=custom_objects,
            use_legacy_format="module" not in layer_config,
        )
        return cls(layer, **config)


@contextlib.contextmanager
def _weights_replaced(layer, replacements):
    """Points every weight attribute in `layer`'s tree at its replacement.

    Yields the variables in `replacements` that no attribute holds (the
    layer reads them some other way, so they cannot be replaced).
    """
    reached = set()
    with contextlib.ExitStack() as stack:
        for sub in layer._flatten_layers(include_self=True):
            for name, value in list(vars(sub).items()):
                if isinstance(value, tf.Variable) and id(value) in replacements:
                    reached.add(id(value))
                    stack.enter_context(
                        emulation.replaced_attribute(sub, name, replacements[id(value)])
                    )
        unreached = [
            v for v in layer.weights if id(v) in replacements and id(v) not in reached
        ]
        yield unreached


_PublicBF16Wrapper.register(BF16Wrapper)
