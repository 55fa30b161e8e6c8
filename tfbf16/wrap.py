"""`tfbf16.wrap` and `tfbf16.unwrap`: BF16 emulation for a whole model."""

import warnings
import weakref

from tfbf16.backends import registry
from tfbf16.emulation import kinds
from tfbf16.policy import WRAP_ROUNDINGS, BF16Policy
from tfbf16.rounding import check_rounding
from tfbf16.wrapper_base import BF16Wrapper, check_native_rounding

# Subclassed models and custom layers whose sublayers were wrapped in place:
# {container: {attribute name: original value}}, used by unwrap. (Kept out of
# the containers themselves, where Keras' saving code would find it.)
_replaced = weakref.WeakKeyDictionary()
# How many layer names an error message lists.
_NAMES_SHOWN = 8


def wrap(model, rounding="rne", *, grad_rounding=None, policy=None):
    """Returns `model` set up to train as if it ran in bfloat16.

    Every compute layer (Dense, EinsumDense, convolutions, Embedding, RNNs,
    MultiHeadAttention, normalization, tensorflow-recommenders' Cross,
    keras-rs' FeatureCross and DotInteraction) is wrapped in a
    `tfbf16.BF16Wrapper` that rounds its inputs and weights to bfloat16 in
    the forward pass and its error gradients in the backward pass, while
    kernels accumulate in FP32 and weights and optimizer state stay FP32
    (Kalamkar et al. 2019). Layers without GEMMs (activations, pooling,
    reshapes, merges) stay FP32 as in the paper; a layer with weights that
    tfbf16 cannot emulate stays FP32 and is named in a warning.

    Sequential and Functional models (nested ones too) are rebuilt around
    the *same* layer objects: the wrapped model shares its weights with
    `model`, which keeps working in FP32. It is a drop-in for `model`: the
    same `weights` in the same order, the same parameter counts, and
    weights files and checkpoints that load into either. Subclassed models,
    and custom layers that contain other layers, are wrapped in place (their
    sublayer attributes are replaced) and returned; `unwrap` restores them.
    A compiled model's compile arguments are carried over.

    Args:
        model: a Keras 3 or tf_keras model (or a single layer).
        rounding: "rne" (round to nearest even, what hardware does),
            "trunc", "stochastic", or "native" (compute in real bfloat16, as
            Keras' `mixed_bfloat16` policy does; fast on TPUs, AVX512_BF16 or
            AMX CPUs and recent GPUs).
        grad_rounding: rounding of gradients; None means "same as rounding".
        policy: a `tfbf16.BF16Policy` choosing what is rounded and where.

    Returns:
        The wrapped model.

    Raises:
        TypeError: if `model` is not a Keras model or layer, or `policy` not
            a `BF16Policy`.
        ValueError: for an unknown rounding, if `model` is already wrapped,
            or if an `include`/`exclude` entry or a `layer_roundings` key of
            the policy matches no layer of the model (a typo there would
            otherwise give numbers labelled BF16 that are not).

    Warns:
        UserWarning: when nothing of the model ends up emulated.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> bf16_model = tfbf16.wrap(model, "rne")
    >>> bf16_model.compile("adam", "mse"); bf16_model.fit(x, y)
    """
    check_rounding(rounding, WRAP_ROUNDINGS)
    if grad_rounding is not None:
        check_rounding(grad_rounding, WRAP_ROUNDINGS)
    if rounding == "native":
        check_native_rounding(grad_rounding)
    elif grad_rounding == "native":
        raise ValueError("grad_rounding='native' needs rounding='native'.")
    policy = policy if policy is not None else BF16Policy()
    if not isinstance(policy, BF16Policy):
        raise TypeError(f"policy must be a tfbf16.BF16Policy; got {policy!r}.")
    for layer_rounding in policy.layer_roundings.values():
        if (layer_rounding == "native") != (rounding == "native"):
            raise ValueError(
                "layer_roundings cannot mix 'native' with emulated roundings in one "
                f"model (model rounding {rounding!r}, layer rounding {layer_rounding!r})."
            )
    backend = registry.backend_of(model)
    if _is_wrapped(model):
        raise ValueError(
            f"{model.name!r} is already wrapped by tfbf16; call tfbf16.unwrap() first."
        )
    leaves = _leaf_layers(model)
    _check_policy_matches(policy, model, leaves)
    wrapper = _ModelWrapper(backend, rounding, grad_rounding or rounding, policy)
    wrapped = wrapper.wrap_any(model, leaves)
    wrapper.warn_unsupported()
    if not wrapper.wrapped_count():
        warnings.warn(
            f"tfbf16.wrap: nothing of {model.name!r} is emulated ({policy!r} leaves no "
            "layer to wrap); the returned model computes in FP32. "
            "tfbf16.summary(model) lists each layer.",
            stacklevel=2,
        )
    return wrapped


def unwrap(model):
    """Returns an ordinary FP32 model with the same weights as `model`.

    Args:
        model: a model (or layer) returned by `tfbf16.wrap`.

    Returns:
        For Sequential/Functional models, a new model built from the original
        (unwrapped) layers; for models wrapped in place, the same model with
        its original sublayers restored; for a `BF16Wrapper`, its inner layer.

    Raises:
        TypeError: if `model` is not a Keras model or layer.

    Example:

    >>> fp32_model = tfbf16.unwrap(tfbf16.wrap(model))
    """
    return _unwrap_any(registry.backend_of(model), model)


class _ModelWrapper:
    """One wrap() call: the decisions for every layer of one model."""

    def __init__(self, backend, rounding, grad_rounding, policy):
        self.backend = backend
        self.rounding = rounding
        self.grad_rounding = None if rounding == "native" else grad_rounding
        self.policy = policy
        self.unsupported = []
        self.kept_fp32 = set()
        self.wrapped = {}  # id(layer) -> wrapper, so shared layers share a wrapper

    def wrap_any(self, model, leaves):
        compute = [l for l in leaves if kinds.layer_kind(l) in kinds.COMPUTE_KINDS]
        if compute and self.policy.keep_first_fp32:
            self.kept_fp32.add(id(compute[0]))
        if compute and self.policy.keep_last_fp32:
            self.kept_fp32.add(id(compute[-1]))
        return self.wrap_layer(model)

    def wrapped_count(self):
        return sum(isinstance(w, BF16Wrapper) for w in self.wrapped.values())

    def wrap_layer(self, layer):
        if id(layer) in self.wrapped:
            return self.wrapped[id(layer)]
        result = self._wrap_new(layer)
        self.wrapped[id(layer)] = result
        return result

    def _wrap_new(self, layer):
        if _backend_of_layer(layer) is None:
            return layer  # a plain operation of a Keras 3 graph (slicing, +, ...)
        if isinstance(layer, BF16Wrapper):
            raise ValueError(f"Layer {layer.name!r} is already a tfbf16.BF16Wrapper.")
        kind = kinds.layer_kind(layer)
        if kind == kinds.MODEL:
            if self.backend.is_functional(layer):
                return self._rebuild(layer)
            return self._wrap_in_place(layer)
        if kind == kinds.NO_GEMM:
            return layer
        if kind == kinds.UNSUPPORTED:
            if self.backend.layer_attributes(layer):
                if layer.trainable_weights and _own_weights(layer):
                    self.unsupported.append(layer)
                return self._wrap_in_place(layer)
            self.unsupported.append(layer)
            return layer
        if kind == kinds.NORMALIZATION and not self.policy.round_normalization:
            return layer
        if id(layer) in self.kept_fp32 or not self.policy.selects(layer):
            return layer
        settings = self.policy.resolve(layer, self.rounding, self.grad_rounding)
        return self.backend.wrapper_class(layer, settings=settings)

    def _rebuild(self, model):
        new = self.backend.clone_model(model, clone_function=self.wrap_layer)
        self.backend.compile_like(new, model)
        return new

    def _wrap_in_place(self, container):
        replaced = {}
        for name, value in self.backend.layer_attributes(container):
            if isinstance(value, (list, tuple)):
                new_value = [self.wrap_layer(v) for v in value]
                changed = any(n is not v for n, v in zip(new_value, value))
            else:
                new_value = self.wrap_layer(value)
                changed = new_value is not value
            if changed:
                replaced[name] = value
                object.__setattr__(container, name, new_value)
                for old, new in zip(value if isinstance(value, list) else [value],
                                    new_value if isinstance(new_value, list) else [new_value]):
                    self.backend.replace_tracked_layer(container, old, new)
        if replaced:
            _replaced[container] = replaced
        return container

    def warn_unsupported(self):
        if self.unsupported:
            names = ", ".join(f"{l.name} ({type(l).__name__})" for l in self.unsupported)
            warnings.warn(
                f"tfbf16 cannot emulate these layers, which stay FP32: {names}. "
                "tfbf16.summary(model) lists what is emulated.",
                stacklevel=3,
            )


def _check_policy_matches(policy, model, leaves):
    """Raises ValueError for a policy entry that matches no layer of the model."""
    layers = [l for l in leaves if type(l).__name__ != "InputLayer"]
    for what, entry in policy.unmatched_entries(layers):
        names = [l.name for l in layers]
        shown = ", ".join(names[:_NAMES_SHOWN]) + (
            f", ... ({len(names)} layers)" if len(names) > _NAMES_SHOWN else ""
        )
        raise ValueError(
            f"BF16Policy {what} {entry!r} matches no layer of {model.name!r} "
            f"(layers: {shown or 'none'}). Names are matched in full as regular "
            "expressions (use 'dense.*' for every name starting with 'dense'); "
            "classes as classes or 'class:Name'."
        )


def set_rounding(model, rounding, *, grad_rounding=None, layers=None):
    """Switches the emulated rounding of a wrapped model, or of some layers.

    The rounding is held in variables that traced training steps read, so
    the change takes effect at the next step without recompiling or
    retracing anything. "fp32" turns emulation off for the chosen layers.
    A saved model records the rounding in force when it was saved.

    One exception: layers created with a deterministic rounding are traced
    without stochastic rounding (its random bits would slow every other
    rounding). Switching such traced layers to "stochastic" retraces the
    model's Keras train/test/predict functions (once; also during `fit`)
    and warns that your own `tf.function`s calling the model need tracing
    again. Wrap with rounding="stochastic" to switch freely among all four.

    Args:
        model: a model returned by `tfbf16.wrap` (emulated, not native).
        rounding: "fp32", "rne", "trunc" or "stochastic".
        grad_rounding: the gradients' rounding; None means "same as rounding".
        layers: None for every wrapped layer, or names / regular expressions
            / classes selecting layers (as in `BF16Policy(include=...)`).

    Returns:
        The names of the layers that were changed.

    Raises:
        ValueError: if no wrapped layer matches.

    Example:

    >>> tfbf16.set_rounding(model, "fp32", layers=["dense_2"])
    """
    selector = BF16Policy(include=layers) if layers is not None else None
    chosen = [
        layer for _, layer in iter_layers(model)
        if isinstance(layer, BF16Wrapper)
        and (selector is None or selector.selects(layer.layer))
    ]
    if not chosen:
        raise ValueError(
            f"No wrapped layer of {model.name!r} matches layers={layers!r}; "
            "tfbf16.summary(model) lists the wrapped layers."
        )
    for layer in chosen:  # refuse before anything changes
        layer._check_switch(rounding, grad_rounding)
    stale = [layer for layer in chosen if layer._needs_retrace_for(rounding, grad_rounding)]
    for layer in chosen:
        if layer in stale:
            layer._allow_stochastic()
        layer.set_rounding(rounding, grad_rounding)
    if stale:
        _retrace_keras_functions(model, [layer.name for layer in stale])
    return [layer.name for layer in chosen]


def _retrace_keras_functions(model, names):
    """Rebuilds a model's traced train/test/predict functions (see set_rounding).

    `fit`, `evaluate` and `predict` call the function the model holds at
    every step, so a rebuilt one takes effect at the next step, also when a
    callback switches the rounding during `fit`.
    """
    rebuilt = []
    for kind in ("train", "test", "predict"):
        if getattr(model, f"{kind}_function", None) is not None:
            getattr(model, f"make_{kind}_function")(force=True)
            rebuilt.append(kind)
    warnings.warn(
        f"tfbf16: layers {names} of {model.name!r} were traced without stochastic "
        f"rounding; the model's Keras functions ({', '.join(rebuilt) or 'none yet'}) are "
        "retraced. A tf.function of your own that calls the model must be traced again: "
        "its old trace gives NaN under stochastic rounding.",
        stacklevel=3,
    )


def _unwrap_any(backend, model):
    if isinstance(model, BF16Wrapper):
        return model.layer
    if _backend_of_layer(model) is None:
        return model
    kind = kinds.layer_kind(model)
    if kind == kinds.MODEL and backend.is_functional(model):
        new = backend.clone_model(model, clone_function=lambda l: _unwrap_any(backend, l))
        backend.compile_like(new, model)
        return new
    replaced = _replaced.pop(model, None)
    if replaced:
        for name, value in replaced.items():
            current = vars(model)[name]
            for wrapped, original in zip(current if isinstance(current, list) else [current],
                                         value if isinstance(value, list) else [value]):
                _unwrap_any(backend, wrapped)
                backend.replace_tracked_layer(model, wrapped, original)
            object.__setattr__(model, name, value)
    return model


def _is_wrapped(model):
    return any(
        isinstance(layer, BF16Wrapper) or layer in _replaced
        for _, layer in iter_layers(model)
    )


def _own_weights(layer):
    backend = registry.backend_of(layer)
    inner = {id(w) for sub in backend.sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _backend_of_layer(value):
    """The back end of a Keras layer or model, or None for anything else."""
    if not registry.is_keras_object(value):
        return None
    backend = registry.backend_of(value)
    return backend if backend.is_layer(value) else None


def _leaf_layers(model):
    """Layers in call order (topological for graph models), nested models flattened."""
    return [layer for _, layer in iter_layers(model) if kinds.layer_kind(layer) != kinds.MODEL]


def iter_layers(model, prefix=""):
    """Yields (path, layer) for the layers that make up `model`, wrappers included.

    Graph models are walked through `model.layers` (topological order);
    subclassed models and custom container layers through their layer
    attributes, as they are now (wrapped in place or not). The inner layer
    of a `BF16Wrapper` is not yielded separately.

    Args:
        model: a model or layer.
        prefix: path prefix for the names.

    Yields:
        (path, layer) pairs.
    """
    if isinstance(model, BF16Wrapper):
        yield prefix + model.name, model
        return
    backend = registry.backend_of(model)
    kind = kinds.layer_kind(model)
    if kind == kinds.MODEL and backend.is_functional(model):
        children = [(l.name, l) for l in model.layers]
    elif kind in (kinds.MODEL, kinds.UNSUPPORTED) and backend.layer_attributes(model):
        children = []
        for name, value in backend.layer_attributes(model):
            if isinstance(value, list):
                children.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
            else:
                children.append((name, value))
    else:
        yield prefix + model.name, model
        return
    if prefix or kind != kinds.MODEL:
        yield prefix + model.name, model
    for name, child in children:
        yield from iter_layers(child, prefix + model.name + "/")
