"""`BF16Wrapper` for tf_keras (Keras 2) layers.

tf_keras layers read their weights through attributes (`self.kernel`); the
attributes of the inner layer's float variables are read-through views
(`tfbf16.backends.tf_keras.weights`) that give the rounded values while
the wrapper's call is in progress on the reading thread, and the variables'
own values otherwise (a gradient still flows to each variable through the
rounding op).
"""

import contextlib
import copy

import tf_keras

from tfbf16.backends import common
from tfbf16.backends.tf_keras.backend import TF_KERAS
from tfbf16.emulation import kinds
from tfbf16.wrapper_base import BF16Wrapper as _PublicBF16Wrapper
from tfbf16.wrapper_base import EmulatedCallMixin

_NATIVE_POLICY = "mixed_bfloat16"


@tf_keras.saving.register_keras_serializable(package="tfbf16", name="BF16Wrapper")
class BF16Wrapper(common.PresentsInnerLayer, EmulatedCallMixin, tf_keras.layers.Wrapper):
    """tf_keras implementation of `tfbf16.BF16Wrapper` (see its docstring)."""

    _backend = TF_KERAS

    def build(self, input_shape=None):
        # An unbuilt inner layer is built by its own first call (see
        # EmulatedCallMixin._ensure_inner_built).
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
        # The weight attributes read the rounded values from the active frame.
        return self.layer(inputs, *args, **kwargs)

    @contextlib.contextmanager
    def _native_scope(self):
        # The weight attributes (AutoCastVariable views) are read in bfloat16
        # under a bfloat16 policy.
        policies = [
            (sub, sub._dtype_policy)
            for sub in TF_KERAS.sublayers(self.layer, include_self=True)
            if kinds.layer_kind(sub) != kinds.NORMALIZATION
        ]
        try:
            for sub, _ in policies:
                sub._set_dtype_policy(_NATIVE_POLICY)
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
        return BF16Wrapper(layer, **config)


_PublicBF16Wrapper.register(BF16Wrapper)
TF_KERAS.wrapper_class = BF16Wrapper
