"""Which Keras a model belongs to, and that Keras' model-building tools.

tfbf16 serves Keras 3 (`import keras`) and tf_keras (Keras 2: what
`tf.keras` is under `TF_USE_LEGACY_KERAS=1`, and what
tensorflow-recommenders uses) through the same calls; the implementation is
chosen from the classes of the model itself, never from `tf.keras`.
"""

import dataclasses

import keras
import tf_keras

from tfbf16 import keras3_wrapper, tf_keras_wrapper


@dataclasses.dataclass(frozen=True)
class KerasFlavour:
    """One Keras implementation and the tfbf16 classes that go with it."""

    name: str
    module: object
    wrapper_class: type

    def is_functional(self, model):
        """Sequential and Functional models (rebuildable from their graph)."""
        names = {cls.__name__ for cls in type(model).__mro__}
        if "Sequential" in names:
            return True
        if "Functional" not in names:
            return False
        # A subclass of Model built with the functional constructor is
        # Functional too; a subclassed model with its own call() is not.
        return type(model).call is getattr(self.module.Model, "call", None) or type(
            model
        ).__name__ in ("Functional", "Sequential", "Model")

    def clone_model(self, model, clone_function):
        return self.module.models.clone_model(model, clone_function=clone_function)

    def compile_like(self, new, old):
        """Compiles `new` with `old`'s compile arguments, if `old` was compiled."""
        if self.name == "keras3":
            config = getattr(old, "_compile_config", None)
            if getattr(old, "compiled", False) and config is not None:
                new.compile(**config.config)
        elif getattr(old, "_is_compiled", False):
            new.compile(**old._get_compile_args(), jit_compile=old._jit_compile)


KERAS3 = KerasFlavour("keras3", keras, keras3_wrapper.BF16Wrapper)
TF_KERAS = KerasFlavour("tf_keras", tf_keras, tf_keras_wrapper.BF16Wrapper)


def flavour_of(layer):
    """The `KerasFlavour` of a layer or model.

    Args:
        layer: a Keras 3 or tf_keras layer or model.

    Returns:
        `KERAS3` or `TF_KERAS`.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(layer, keras.layers.Layer):
        return KERAS3
    if isinstance(layer, tf_keras.layers.Layer):
        return TF_KERAS
    raise TypeError(
        f"tfbf16 wraps Keras 3 or tf_keras layers and models; got {type(layer)!r}."
    )
