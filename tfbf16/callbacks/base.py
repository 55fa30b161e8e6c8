"""The base of tfbf16's callbacks: one class that both Kerases' `fit` accept.

Keras 3's and tf_keras' `fit` each check that a callback is an instance of
their own `Callback` class, and tf_keras' `CallbackList` reads attributes
that its `Callback` constructor sets. `Callback` derives from the callback
class of every registered back end (`tfbf16.backends`) and runs each one's
constructor, so this module imports neither Keras. It also holds
what every callback reads from the model: its wrapped layers
(`wrapped_layers`) and the step training starts at (`start_step`).
"""

import numpy as np

from tfbf16 import backends
from tfbf16.wrap import iter_layers
from tfbf16.wrapper_base import BF16Wrapper


def _callback_classes():
    classes = tuple(backend.callback_class for backend in backends.registered_backends())
    if not classes:
        raise ImportError(
            "No Keras back end is registered; import tfbf16 (which registers them) "
            "before tfbf16.callbacks."
        )
    return classes


_CALLBACK_CLASSES = _callback_classes()


class Callback(*_CALLBACK_CLASSES):
    """A callback that every registered Keras' `fit` (and `CallbackList`) accepts.

    Subclasses override the usual hooks (`on_train_begin`,
    `on_train_batch_end`, ...) and read `self.model`.
    """

    def __init__(self):
        # tf_keras' constructor assigns `self.model = None` (the setter below)
        # and sets the attributes its CallbackList reads.
        for callback_class in _CALLBACK_CLASSES:
            callback_class.__init__(self)

    @property
    def model(self):
        """The model being trained (None before `set_model`)."""
        return self._tfbf16_model

    @model.setter
    def model(self, model):
        self._tfbf16_model = model

    def set_model(self, model):
        self._tfbf16_model = model


def wrapped_layers(model):
    """The model's `BF16Wrapper`s, each once, with names that are unique.

    Args:
        model: a Keras 3 or tf_keras model.

    Returns:
        A list of `(name, wrapper)` in the order of `tfbf16.wrap.iter_layers`;
        the name is the wrapper's, or its path in the model where nested
        models repeat a name.
    """
    found, seen = [], set()
    for path, layer in iter_layers(model):
        if isinstance(layer, BF16Wrapper) and id(layer) not in seen:
            seen.add(id(layer))
            found.append((path, layer))
    names = [layer.name for _, layer in found]
    result = []
    for (path, layer), name in zip(found, names):
        if names.count(name) > 1:  # nested models can repeat names: use paths
            name = path.split("/", 1)[-1] if "/" in path else path
        result.append((name, layer))
    return result


def start_step(model, optimizer=None):
    """The optimizer's step count: where a (resumed) training run starts.

    Args:
        model: the model being trained.
        optimizer: the optimizer to read; None means `model.optimizer`.

    Returns:
        `optimizer.iterations` as an int, or 0 without an optimizer.
    """
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return 0
    try:
        return int(np.asarray(iterations))
    except (TypeError, ValueError):
        return 0
