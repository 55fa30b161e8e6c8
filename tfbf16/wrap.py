"""`tfbf16.wrap` and `tfbf16.unwrap`: BF16 emulation for a whole model."""

import warnings

from tfbf16 import emulation
from tfbf16.keras_versions import flavour_of
from tfbf16.policy import WRAP_ROUNDINGS, BF16Policy
from tfbf16.rounding import check_rounding
from tfbf16.wrapper_base import BF16Wrapper, check_native_rounding

# Attribute on a subclassed model or custom layer whose sublayers were wrapped
# in place: {attribute name: original value}, used by unwrap.
_REPLACED = "_tfbf16_replaced_attributes"


def wrap(model, rounding="rne", *, grad_rounding=None, policy=None):
    """Returns `model` set up to train as if it ran in bfloat16.

    Every compute layer (Dense, EinsumDense, convolutions, Embedding, RNNs,
    MultiHeadAttention, normalization, tensorflow-recommenders' Cross) is
    wrapped in a `tfbf16.BF16Wrapper` that rounds its inputs and weights to
    bfloat16 in the forward pass and its error gradients in the backward
    pass, while kernels accumulate in FP32 and weights and optimizer state
    stay FP32 (Kalamkar et al. 2019). Layers without GEMMs (activations,
    pooling, reshapes, merges) stay FP32 as in the paper; a layer with
    weights that tfbf16 cannot emulate stays FP32 and is named in a warning.

    Sequential and Functional models (nested ones too) are rebuilt around
    the *same* layer objects: the wrapped model shares its weights with
    `model`, which keeps working in FP32. Subclassed models, and custom
    layers that contain other layers, are wrapped in place (their sublayer
    attributes are replaced) and returned; `unwrap` restores them. A compiled
    model's compile arguments are carried over.

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
        ValueError: for an unknown rounding, or if `model` is already wrapped.

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
    flavour = flavour_of(model)
    if _is_wrapped(model):
        raise ValueError(
            f"{model.name!r} is already wrapped by tfbf16; call tfbf16.unwrap() first."
        )
    wrapper = _ModelWrapper(flavour, rounding, grad_rounding or rounding, policy)
    wrapped = wrapper.wrap_any(model)
    wrapper.warn_unsupported()
    return wrapped


def unwrap(model):
    """Returns an ordinary FP32 model with the same weights as `model`.

    Args:
        model: a model (or layer) returned by `tfbf16.wrap`.

    Returns:
        For Sequential/Functional models, a new model built from the original
        (unwrapped) layers; for models wrapped in place, the same model with
        its original sublayers restored; for a `BF16Wrapper`, its inner layer.

    Example:

    >>> fp32_model = tfbf16.unwrap(tfbf16.wrap(model))
    """
    return _unwrap_any(flavour_of(model), model)


class _ModelWrapper:
    """One wrap() call: the decisions for every layer of one model."""

    def __init__(self, flavour, rounding, grad_rounding, policy):
        self.flavour = flavour
        self.rounding = rounding
        self.grad_rounding = None if rounding == "native" else grad_rounding
        self.policy = policy
        self.unsupported = []
        self.kept_fp32 = set()
        self.wrapped = {}  # id(layer) -> wrapper, so shared layers share a wrapper

    def wrap_any(self, model):
        compute = [l for l in _leaf_layers(model) if emulation.layer_kind(l) in emulation.COMPUTE_KINDS]
        if compute and self.policy.keep_first_fp32:
            self.kept_fp32.add(id(compute[0]))
        if compute and self.policy.keep_last_fp32:
            self.kept_fp32.add(id(compute[-1]))
        return self.wrap_layer(model)

    def wrap_layer(self, layer):
        if id(layer) in self.wrapped:
            return self.wrapped[id(layer)]
        result = self._wrap_new(layer)
        self.wrapped[id(layer)] = result
        return result

    def _wrap_new(self, layer):
        if not _is_layer(layer):
            return layer  # a plain operation of a Keras 3 graph (slicing, +, ...)
        if isinstance(layer, BF16Wrapper):
            raise ValueError(f"Layer {layer.name!r} is already a tfbf16.BF16Wrapper.")
        kind = emulation.layer_kind(layer)
        if kind == emulation.MODEL:
            if self.flavour.is_functional(layer):
                return self._rebuild(layer)
            return self._wrap_in_place(layer)
        if kind == emulation.NO_GEMM:
            return layer
        if kind == emulation.UNSUPPORTED:
            if _sublayer_attributes(layer):
                if layer.trainable_weights and _own_weights(layer):
                    self.unsupported.append(layer)
                return self._wrap_in_place(layer)
            self.unsupported.append(layer)
            return layer
        if kind == emulation.NORMALIZATION and not self.policy.round_normalization:
            return layer
        if id(layer) in self.kept_fp32 or not self.policy.selects(layer):
            return layer
        settings = self.policy.resolve(layer, self.rounding, self.grad_rounding)
        return self.flavour.wrapper_class(layer, settings=settings)

    def _rebuild(self, model):
        new = self.flavour.clone_model(model, clone_function=self.wrap_layer)
        self.flavour.compile_like(new, model)
        return new

    def _wrap_in_place(self, container):
        replaced = {}
        for name, value in _sublayer_attributes(container):
            if isinstance(value, (list, tuple)):
                new_value = [self.wrap_layer(v) for v in value]
                changed = any(n is not v for n, v in zip(new_value, value))
            else:
                new_value = self.wrap_layer(value)
                changed = new_value is not value
            if changed:
                replaced[name] = value
                object.__setattr__(container, name, new_value)
        if replaced:
            object.__setattr__(container, _REPLACED, replaced)
        return container

    def warn_unsupported(self):
        if self.unsupported:
            names = ", ".join(f"{l.name} ({type(l).__name__})" for l in self.unsupported)
            warnings.warn(
                f"tfbf16 cannot emulate these layers, which stay FP32: {names}. "
                "tfbf16.summary(model) lists what is emulated.",
                stacklevel=3,
            )


def set_rounding(model, rounding, *, grad_rounding=None, layers=None):
    """Switches the emulated rounding of a wrapped model, or of some layers.

    The rounding is held in variables that traced training steps read, so
    the change takes effect at the next step without recompiling or
    retracing anything. "fp32" turns emulation off for the chosen layers.

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
    changed = []
    for _, layer in iter_layers(model):
        if isinstance(layer, BF16Wrapper) and (
            selector is None or selector.selects(layer.layer)
        ):
            layer.set_rounding(rounding, grad_rounding)
            changed.append(layer.name)
    if not changed:
        raise ValueError(
            f"No wrapped layer of {model.name!r} matches layers={layers!r}; "
            "tfbf16.summary(model) lists the wrapped layers."
        )
    return changed


def _unwrap_any(flavour, model):
    if isinstance(model, BF16Wrapper):
        return model.layer
    if not _is_layer(model):
        return model
    kind = emulation.layer_kind(model)
    if kind == emulation.MODEL and flavour.is_functional(model):
        new = flavour.clone_model(model, clone_function=lambda l: _unwrap_any(flavour, l))
        flavour.compile_like(new, model)
        return new
    replaced = vars(model).get(_REPLACED)
    if replaced:
        for name, value in replaced.items():
            current = vars(model)[name]
            for inner in current if isinstance(current, list) else [current]:
                _unwrap_any(flavour, inner)
            object.__setattr__(model, name, value)
        object.__delattr__(model, _REPLACED)
    return model


def _is_wrapped(model):
    return any(
        isinstance(layer, BF16Wrapper) or _REPLACED in vars(layer)
        for _, layer in iter_layers(model)
    )


def _sublayer_attributes(container):
    """(name, value) of attributes holding a layer or a list of layers."""
    found = []
    for name, value in vars(container).items():
        if name.startswith("_tfbf16") or name in ("_self_tracked_trackables", "_layers"):
            continue
        if _is_layer(value) and value is not container:
            found.append((name, value))
        elif isinstance(value, (list, tuple)) and value and all(_is_layer(v) for v in value):
            if name.startswith("_") and name.endswith("_layers"):
                continue  # Keras' own bookkeeping lists
            found.append((name, list(value)))
    return found


def _own_weights(layer):
    inner = {id(w) for sub in layer._flatten_layers(include_self=False) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _is_layer(value):
    try:
        flavour_of(value)
        return True
    except TypeError:
        return False


def _leaf_layers(model):
    """Layers in call order (topological for graph models), nested models flattened."""
    return [layer for _, layer in iter_layers(model) if emulation.layer_kind(layer) != emulation.MODEL]


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
    kind = emulation.layer_kind(model)
    if kind == emulation.MODEL and flavour_of(model).is_functional(model):
        children = [(l.name, l) for l in model.layers]
    elif kind in (emulation.MODEL, emulation.UNSUPPORTED) and _sublayer_attributes(model):
        children = []
        for name, value in _sublayer_attributes(model):
            if isinstance(value, list):
                children.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
            else:
                children.append((name, value))
    else:
        yield prefix + model.name, model
        return
    if prefix or kind != emulation.MODEL:
        yield prefix + model.name, model
    for name, child in children:
        yield from iter_layers(child, prefix + model.name + "/")
