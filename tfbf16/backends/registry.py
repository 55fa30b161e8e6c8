"""The registry of Keras back ends: which Keras an object belongs to.

This module imports nothing of tfbf16 (nor Keras), so that any module can
dispatch through it without an import cycle. The back ends
(`tfbf16.backends.keras3`, `tfbf16.backends.tf_keras`) register themselves
when they are imported, which `import tfbf16` does. See the package
docstring (`tfbf16.backends`) for the `Backend` interface.
"""

import importlib
import threading

_lock = threading.Lock()
_backends = []  # registration order; `backend_of` asks each in turn


class Backend:
    """One Keras implementation and everything of tfbf16 that depends on it.

    Subclasses (one per Keras) fill in the class attributes and methods
    below; the package docstring of `tfbf16.backends` documents each.
    """

    #: "keras3" or "tf_keras"; also the name of the back-end package.
    name = None
    #: The Keras module itself (`keras` or `tf_keras`).
    keras = None

    @property
    def package(self):
        """The back end's package, e.g. "tfbf16.backends.keras3"."""
        return f"{__name__.rsplit('.', 1)[0]}.{self.name}"

    @property
    def callback_class(self):
        """This Keras' `callbacks.Callback` (what its `fit` accepts)."""
        return self.keras.callbacks.Callback

    @property
    def optimizer_class(self):
        """The back end's `BF16Weights` optimizer class.

        Imported on first use from the module `<package>.optimizer`, which
        must define `BF16Weights`.

        Raises:
            NotImplementedError: if that module or class does not exist.
        """
        module_name = f"{self.package}.optimizer"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            module = None
        optimizer_class = getattr(module, "BF16Weights", None)
        if optimizer_class is None:
            raise NotImplementedError(
                f"The {self.name} back end has no BF16Weights optimizer "
                f"({module_name}.BF16Weights)."
            )
        return optimizer_class

    def owns(self, obj):
        """Whether `obj` is a layer, model or optimizer of this Keras."""
        raise NotImplementedError

    def __repr__(self):
        return f"<tfbf16 back end {self.name!r}>"


def register(backend):
    """Adds a back end to the registry (once per name).

    Args:
        backend: a `Backend` instance.

    Returns:
        `backend`, or the one already registered under its name.
    """
    with _lock:
        for known in _backends:
            if known.name == backend.name:
                return known
        _backends.append(backend)
    return backend


def registered_backends():
    """The registered back ends, in registration order (a new list)."""
    return list(_backends)


def get_backend(name):
    """The back end registered under `name` ("keras3" or "tf_keras").

    Raises:
        ValueError: for an unknown name.
    """
    for backend in _backends:
        if backend.name == name:
            return backend
    raise ValueError(
        f"No tfbf16 back end named {name!r}; registered: "
        f"{[b.name for b in _backends]}."
    )


def backend_of(obj):
    """The back end of a Keras layer, model or optimizer.

    Args:
        obj: a Keras 3 or tf_keras layer, model or optimizer.

    Returns:
        The `Backend` that owns it.

    Raises:
        TypeError: for anything else.
    """
    for backend in _backends:
        if backend.owns(obj):
            return backend
    raise TypeError(
        "tfbf16 works with Keras 3 (`import keras`) or tf_keras layers, models "
        f"and optimizers; got {type(obj).__module__}.{type(obj).__qualname__}."
    )


def is_keras_object(obj):
    """Whether some registered back end owns `obj`."""
    return any(backend.owns(obj) for backend in _backends)
