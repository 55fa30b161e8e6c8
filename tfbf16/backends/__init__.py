"""One registry for everything that differs between Keras 3 and tf_keras.

tfbf16 serves Keras 3 (`import keras`) and tf_keras (Keras 2: `tf.keras`
under `TF_USE_LEGACY_KERAS=1`, what tensorflow-recommenders uses) through
the same calls. Everything that differs between the two, and every use of
a private Keras attribute, lives in one back-end package per Keras:

- `tfbf16.backends.keras3` (`KERAS3`) and `tfbf16.backends.tf_keras`
  (`TF_KERAS`), each registering its `Backend` when imported
  (`import tfbf16` imports both);
- `tfbf16.backends.common`: what the two share (both name these private
  attributes alike);
- `tfbf16.backends.registry`: the registry itself; it imports nothing of
  tfbf16 (nor Keras), so any module can dispatch through it without an
  import cycle.

The back end of an object is chosen from the object's own classes, never
from `tf.keras`.

Registry (this package):

- `backend_of(obj)`: the `Backend` of a Keras 3 or tf_keras layer, model or
  optimizer (tf_keras' legacy optimizers included); raises `TypeError`
  for anything else.
- `registered_backends()`: the back ends, Keras 3 first.
- `get_backend(name)`: by name ("keras3", "tf_keras"); `ValueError` if
  unknown.
- `is_keras_object(obj)`: whether some back end owns `obj`.
- `register(backend)`: adds a back end (the back-end packages call it).

`Backend` attributes and methods (stable; other modules rely on them):

- `name`: "keras3" or "tf_keras"; `package`: "tfbf16.backends.<name>".
- `keras`: the Keras module itself (`keras` or `tf_keras`).
- `callback_class`: that Keras' `callbacks.Callback` (the class its `fit`
  accepts). A callback for both Kerases derives from
  `tuple(b.callback_class for b in registered_backends())`.
- `optimizer_class`: the back end's `BF16Weights` optimizer class, imported
  on first use from the module `tfbf16.backends.<name>.optimizer`, which
  defines it under the name `BF16Weights` (a subclass of that Keras'
  `Optimizer`). `NotImplementedError` while that module does not exist.
  Factories dispatch with `backend_of(optimizer).optimizer_class(...)`.
- `wrapper_class`: the back end's `BF16Wrapper` implementation
  (`tfbf16.BF16Wrapper(layer, ...)` dispatches to it; its instances are
  instances of `tfbf16.BF16Wrapper`). Instances are of a subclass named
  like the wrapped layer's class (see `common.named_wrapper_class`).
- `owns(obj)`, `is_layer(obj)`: whether `obj` is a layer/model/optimizer
  (resp. a layer or model) of this Keras.
- `is_functional(model)`: Sequential or Functional (rebuildable from its
  graph) rather than subclassed.
- `clone_model(model, clone_function)`: that Keras' `clone_model`.
- `compile_arguments(model)`: the arguments `model` was compiled with (the
  same objects), or None if it was not compiled.
- `compile_like(new, old)`: compiles `new` with `old`'s compile arguments
  if `old` was compiled.
- `sublayers(layer, include_self=False)`: every layer inside `layer`,
  recursively.
- `layer_attributes(container)`: `(name, layer or list of layers)` for the
  attributes of a custom layer or subclassed model that hold layers.
- `tf_variable(variable)`: the `tf.Variable` behind a variable of this
  Keras (Keras 3 variables wrap one; tf_keras ones are one).
- `install_hooks(layer)`: installs, once, the emulation hooks on a wrapped
  layer's objects (see `tfbf16.emulation.hooks`); used by the wrappers.

Example:

>>> from tfbf16 import backends
>>> backends.backend_of(keras.layers.Dense(2)).name
'keras3'
>>> backends.backend_of(tf_keras.optimizers.Adam()).callback_class
<class 'tf_keras.src.callbacks.Callback'>
"""

from tfbf16.backends.registry import (
    Backend, backend_of, get_backend, is_keras_object, register, registered_backends,
)

__all__ = [
    "Backend", "backend_of", "get_backend", "is_keras_object", "register",
    "registered_backends",
]
