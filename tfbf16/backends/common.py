"""What the two Keras back ends share (their private APIs agree here).

- `KerasBackend`: the `Backend` methods whose implementation is the same
  for Keras 3 and tf_keras (both name these private attributes alike).
- `PresentsInnerLayer`: the wrapper mixin that makes a `BF16Wrapper` look
  like the layer it wraps to Keras' saving code and to TensorFlow
  checkpoints, so that weights files and checkpoints of a wrapped model and
  of the plain model are interchangeable.
- `named_wrapper_class`: a wrapper class named like the wrapped layer's.
"""

import threading

from tfbf16.backends import registry
from tfbf16.emulation import hooks, kinds
from tfbf16.emulation.gru import gru_step

#: The name both Kerases serialize every `BF16Wrapper` class under.
REGISTERED_NAME = "tfbf16>BF16Wrapper"


class InstalledHooks:
    """What `KerasBackend.install_hooks` set up for one wrapped layer.

    Attributes:
        members: ids of the layer objects an emulated call governs.
        weights: the variables whose reads the call rounds.
        unreached: those of `weights` the back end cannot intercept.
        variable_count: how many variables the layer had (a layer that
            creates more later needs its hooks installed again).
    """

    def __init__(self, members, weights, unreached, variable_count):
        self.members = frozenset(members)
        self.weights = tuple(weights)
        self.unreached = tuple(unreached)
        self.variable_count = variable_count


class KerasBackend(registry.Backend):
    """The part of a back end that is the same for both Kerases."""

    #: The back end's `BF16Wrapper` implementation (set by its wrapper module).
    wrapper_class = None
    #: `tfbf16.emulation.gru.GRUOps` of this Keras' GRU cell.
    gru_ops = None

    def _owned_types(self):
        return (self.keras.layers.Layer, self.keras.optimizers.Optimizer)

    def owns(self, obj):
        return isinstance(obj, self._owned_types())

    def is_layer(self, obj):
        """Whether `obj` is a layer (or model) of this Keras."""
        return isinstance(obj, self.keras.layers.Layer)

    def is_functional(self, model):
        """Sequential and Functional models (rebuildable from their graph)."""
        names = kinds.mro_names(model)
        if "Sequential" in names:
            return True
        if "Functional" not in names:
            return False
        # A subclass of Model built with the functional constructor is
        # Functional too; a subclassed model with its own call() is not.
        return type(model).call is getattr(self.keras.Model, "call", None) or type(
            model
        ).__name__ in ("Functional", "Sequential", "Model")

    def clone_model(self, model, clone_function):
        """`keras.models.clone_model` of this Keras."""
        return self.keras.models.clone_model(model, clone_function=clone_function)

    def compile_arguments(self, model):
        """The arguments `model` was compiled with (the same objects: its
        optimizer, loss, metrics...), as a dict for `compile`; None if it was
        not compiled."""
        raise NotImplementedError

    def compile_like(self, new, old):
        """Compiles `new` with `old`'s compile arguments, if `old` was compiled."""
        arguments = self.compile_arguments(old)
        if arguments is not None:
            new.compile(**arguments)

    def sublayers(self, layer, include_self=False):
        """Every layer inside `layer` (recursively), in Keras' order."""
        return list(layer._flatten_layers(include_self=include_self))

    def layer_attributes(self, container):
        """(name, value) of `container`'s attributes that hold layers.

        A value is a layer, or a list of layers (as a list). Keras' own
        bookkeeping lists are left out.
        """
        found = []
        for name, value in vars(container).items():
            if name.startswith("_tfbf16") or name in ("_self_tracked_trackables", "_layers"):
                continue
            if self.is_layer(value) and value is not container:
                found.append((name, value))
            elif (isinstance(value, (list, tuple)) and value
                  and all(self.is_layer(v) for v in value)):
                if name.startswith("_") and name.endswith("_layers"):
                    continue  # Keras' own bookkeeping lists
                found.append((name, list(value)))
        return found

    #: The attribute of a layer that lists the sublayers Keras tracks.
    _tracked_layers_attribute = None

    def replace_tracked_layer(self, container, old, new):
        """Puts `new` where `container` tracks its sublayer `old` (same place).

        After an attribute of a custom layer or subclassed model is pointed
        at a wrapper, this makes `container.layers` (and what Keras' saving
        code walks) list the wrapper instead of the layer it wraps.
        """
        tracked = getattr(container, self._tracked_layers_attribute)
        for index, layer in enumerate(tracked):
            if layer is old:
                tracked[index] = new

    def tf_variable(self, variable):
        """The `tf.Variable` behind a variable of this Keras."""
        return variable

    def register_wrapper_name(self, cls):
        """Makes Keras serialize `cls` under the wrapper's registered name."""
        raise NotImplementedError

    def saveable_children(self, layer):
        """Names of `layer`'s attributes that Keras' saving code descends into."""
        raise NotImplementedError

    # -------------------------------------------------------- emulation hooks

    def install_hooks(self, layer):
        """Installs the emulation hooks on `layer`'s objects (once; thread-safe).

        Args:
            layer: a built layer that a `BF16Wrapper` wraps.

        Returns:
            An `InstalledHooks`.

        Raises:
            ValueError: for a layer configuration tfbf16 cannot emulate.
        """
        with hooks.INSTALL_LOCK:
            members = self.sublayers(layer, include_self=True)
            for sub in members:
                names = kinds.mro_names(sub)
                if names & kinds.CELLS:
                    hooks.install(sub, "call", self._cell_behaviour(sub))
                elif sub is not layer and kinds.layer_kind(sub) == kinds.GEMM:
                    hooks.install(sub, "call", hooks.round_arguments)
                elif kinds.layer_kind(sub) == kinds.ATTENTION:
                    self._hook_attention(sub)
                if "RNN" in names:
                    self._hook_fused_recurrent_path(sub)
            weights = kinds.weights_to_round(layer)
            unreached = self._intercept_weight_reads(layer, weights)
        return InstalledHooks(
            (id(sub) for sub in members), weights, unreached, len(layer.weights)
        )

    def _cell_behaviour(self, cell):
        if "GRUCell" not in kinds.mro_names(cell):
            return hooks.round_step_inputs
        if type(cell).call is self.keras.layers.GRUCell.call:
            ops = self.gru_ops
            return hooks.step_with_rounded_operands(
                lambda c, inputs, states, training, rounder: gru_step(
                    c, inputs, states, training, rounder, ops
                )
            )
        hooks.warn_once(
            ("gru", type(cell)),
            f"tfbf16: {type(cell).__name__} overrides GRUCell.call, so tfbf16 cannot "
            "compute its step; it rounds the step input and h(t-1) for the whole step "
            "instead (the FP32 interpolation then uses the rounded state).",
        )
        return hooks.round_step_inputs

    def _hook_attention(self, layer):
        if getattr(layer, "_flash_attention", False):
            raise ValueError(
                f"tfbf16 cannot emulate MultiHeadAttention {layer.name!r} with flash "
                "attention: the fused kernel gives no access to the attention "
                "probabilities that enter the second matmul. Create it with "
                "flash_attention=False."
            )
        hooks.install(
            layer, "_compute_attention",
            hooks.attention_with_rounded_operands(layer._compute_attention),
        )
        hooks.install(layer, "_masked_softmax", hooks.round_results)
        hooks.install(layer._dropout_layer, "call", hooks.round_results)

    def _hook_fused_recurrent_path(self, layer):
        """Makes emulated calls of `layer` run its cell (no fused kernel)."""
        raise NotImplementedError

    def _intercept_weight_reads(self, layer, weights):
        """Sets up the reads of `weights` to give the frame's values.

        Also prepares every float variable of a layer that computes in
        bfloat16 with `rounding="native"` (all but normalization
        statistics) to be read in bfloat16, where the back end needs it.

        Returns:
            The variables of `weights` that cannot be intercepted.
        """
        raise NotImplementedError


class PresentsInnerLayer:
    """Presents a wrapper to Keras' saving code and TF checkpoints as its layer.

    The wrapper also answers for the inner layer's public attributes it has
    none of its own for (`wrapper.kernel` is the layer's kernel).

    A Keras wrapper normally adds a level to every saved path ("dense/layer/
    kernel"); the plain model has none ("dense/kernel"). This mixin makes the
    wrapper's own saved state its inner layer's own variables, its saved
    children the inner layer's children, and (in checkpoints) its dependencies
    the inner layer's, so that `save_weights` files and `tf.train.Checkpoint`s
    of a wrapped model and of the plain model are interchangeable. Keras
    names list entries in weights files by class name, so constructing the
    back end's wrapper class gives an instance of `named_wrapper_class`. SavedModel exports keep the wrapper's own structure
    (plus its rounding variables, which the traced functions read).
    """

    def __new__(cls, layer=None, *args, **kwargs):
        if cls is cls._backend.wrapper_class and layer is not None:
            cls = named_wrapper_class(cls, layer, cls._backend)
        return super().__new__(cls, layer, *args, **kwargs)

    def save_own_variables(self, store):
        self.layer.save_own_variables(store)

    def load_own_variables(self, store):
        self.layer.load_own_variables(store)

    def __dir__(self):
        # Keras' saving code walks dir() for child objects to save.
        names = set(super().__dir__())
        names.discard("layer")
        layer = vars(self).get("layer")
        children = tuple(self._backend.saveable_children(layer)) if layer is not None else ()
        object.__setattr__(self, "_tfbf16_saved_children", children)
        return sorted(names | set(children))

    def __getattr__(self, name):
        # Only for names that normal lookup does not find: the inner layer's
        # public attributes (`wrapper.kernel`, and what Keras' loading code
        # reads from a layer of the class the wrapper is named after, e.g.
        # `forward_layer` of a Bidirectional) and its saved children as
        # listed by the last `dir()`.
        state = vars(self)
        layer = state.get("layer")
        if layer is not None and (
            not name.startswith("_") or name in state.get("_tfbf16_saved_children", ())
        ):
            return getattr(layer, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        if save_type == "checkpoint":
            return self.layer._trackable_children(save_type, **kwargs)
        children = super()._trackable_children(save_type, **kwargs)
        children.update(self._rounding_trackables())
        return children

    def _lookup_dependency(self, name, cached_dependencies=None):
        rounding = self._rounding_trackables()
        if name in rounding:  # restoring a SavedModel, which has them
            return rounding[name]
        if cached_dependencies:
            return cached_dependencies.get(name)
        own = super()._lookup_dependency(name)
        layer = vars(self).get("layer")
        if own is not None or layer is None:
            return own
        return layer._lookup_dependency(name)

    @property
    def _deferred_dependencies(self):
        # A checkpoint restored before the inner layer is built defers its
        # values to the inner layer, which creates the variables.
        layer = vars(self).get("layer")
        if layer is None:
            return super()._deferred_dependencies
        return layer._deferred_dependencies


_named_lock = threading.Lock()
_named_classes = {}


def named_wrapper_class(base, layer, backend):
    """The subclass of wrapper class `base` named like `layer`'s class.

    Keras names the entries of a list of layers in weights files after their
    class ("dense", "dense_1"), so a wrapper whose class had its own name
    would move every wrapped layer to another path. The subclass is named
    like the layer's class (its `__qualname__`, e.g. "BF16Wrapper[Dense]",
    says what it is) and serializes under the wrapper's registered name.

    Args:
        base: the back end's wrapper class.
        layer: the layer to wrap.
        backend: the back end (registers the serialization name).

    Returns:
        A subclass of `base`.
    """
    name = type(layer).__name__
    with _named_lock:
        cls = _named_classes.get((base, name))
        if cls is None:
            cls = type(name, (base,), {
                "__module__": base.__module__,
                "__qualname__": f"{base.__qualname__}[{name}]",
                "__doc__": f"`{base.__qualname__}` of a {name} layer.",
            })
            backend.register_wrapper_name(cls)
            _named_classes[(base, name)] = cls
    return cls
