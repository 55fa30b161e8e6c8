"""What the Keras 3 and tf_keras `BF16Wrapper`s share, and the public class.

`tfbf16.BF16Wrapper(layer, ...)` returns the implementation of the layer's
own Keras, found through the back-end registry (`tfbf16.backends`); every
implementation is an instance of `tfbf16.BF16Wrapper`.

The rounding in force lives outside the layer's weights: two scalar int32
`tf.Variable`s per wrapper (forward and gradient, codes of
`tfbf16.rounding.ROUNDING_CODES`) that the traced call reads, so that
`set_rounding` switches a traced training step without retracing it. They
are not Keras weights (so `weights`, `get_weights`, `count_params`, weights
files and checkpoints are exactly the wrapped layer's) and are recorded in
the wrapper's config instead (`rounding_in_force`), so a saved model
reloads with the rounding in force when it was saved. SavedModel exports,
whose traced functions read them, track them.

A traced call can switch to stochastic rounding only if the wrapper could
round stochastically when it was traced (it was created with, or switched
to, "stochastic" before): otherwise the trace leaves stochastic rounding's
random bits out, which makes every other rounding cheaper (measured: an
emulated DCN step under XLA 1.13x FP32 with them, 1.06x without). Switching
a traced wrapper to "stochastic" retraces the Keras model's functions
(`tfbf16.set_rounding`) or is refused (`BF16Wrapper.set_rounding`).
"""

import abc
import dataclasses
import threading
import warnings

import tensorflow as tf

from tfbf16.backends import registry
from tfbf16.emulation import context, kinds
from tfbf16.emulation.tensors import (
    is_float_tensor, map_float_arguments, round_forward, round_inputs, round_outputs,
)
from tfbf16.policy import WRAP_ROUNDINGS, LayerRounding
from tfbf16.rounding import ROUNDING_CODES, RuntimeRounding, check_rounding, rounding_code

#: Native calls switch the dtype policy of the (shared) inner layers for
#: the duration of the call; this lock keeps two native calls apart.
_NATIVE_LOCK = threading.RLock()


def make_settings(rounding, grad_rounding, settings):
    """Validates a wrapper's rounding arguments into a `LayerRounding`."""
    if settings is not None:
        if isinstance(settings, dict):
            settings = LayerRounding.from_config(settings)
        check_rounding(settings.rounding, WRAP_ROUNDINGS)
        return settings
    check_rounding(rounding, WRAP_ROUNDINGS)
    if rounding == "native":
        if grad_rounding not in (None, "native"):
            raise ValueError(
                "rounding='native' computes in real bfloat16; its gradients are "
                f"bfloat16 by construction, so grad_rounding={grad_rounding!r} "
                "cannot be honoured. Leave grad_rounding=None."
            )
        return LayerRounding("native", None)
    if grad_rounding is None:
        grad_rounding = rounding
    check_rounding(grad_rounding)
    return LayerRounding(rounding, grad_rounding)


def check_native_rounding(rounding):
    """Native bfloat16 hardware rounds to nearest even and nothing else."""
    if rounding in ("trunc", "stochastic"):
        raise ValueError(
            f"rounding={rounding!r} is not available natively: bfloat16 hardware "
            "(TPU, AVX512_BF16/AMX, GPUs) rounds to nearest even. Use "
            f"rounding={rounding!r} in emulation (the default), or "
            "rounding='native' for real bfloat16 compute with RNE."
        )


class RoundingState:
    """The rounding in force in one emulated wrapper, read by its traced call.

    Two scalar int32 `tf.Variable`s, created outside any traced function;
    they are not Keras weights.

    Attributes:
        forward, gradient: the variables.
        stochastic: whether calls traced from now on can round
            stochastically (they always can switch among "fp32", "rne" and
            "trunc").
        traced: whether a call has been traced into a graph.

    Args:
        forward: the forward rounding's name (a key of `ROUNDING_CODES`).
        gradient: the gradient rounding's name.
    """

    def __init__(self, forward, gradient):
        self.stochastic = "stochastic" in (forward, gradient)
        self.traced = False
        with tf.init_scope():
            self.forward = tf.Variable(
                rounding_code(forward), dtype=tf.int32, trainable=False,
                name="rounding_code",
            )
            self.gradient = tf.Variable(
                rounding_code(gradient), dtype=tf.int32, trainable=False,
                name="grad_rounding_code",
            )

    def names(self):
        """(forward, gradient) rounding names in force now."""
        names = {code: name for name, code in ROUNDING_CODES.items()}
        return (
            names[int(tf.convert_to_tensor(self.forward))],
            names[int(tf.convert_to_tensor(self.gradient))],
        )


def _tracing_a_function():
    """Whether the call is being traced into a graph that will run.

    Keras builds functional models and infers output shapes in graphs of its
    own ("keras_graph"; "scratch_graph" in Keras 3, "<layer>_scratch_graph"
    in tf_keras) whose ops never run.
    """
    if tf.executing_eagerly():
        return False
    name = tf.compat.v1.get_default_graph().name
    return not (name == "keras_graph" or name.endswith("scratch_graph"))


class EmulatedCallMixin:
    """The call logic of a BF16 wrapper, for either Keras version.

    Its `__init__` takes the arguments of `tfbf16.BF16Wrapper`. Subclasses
    set `_backend` (their `tfbf16.backends` back end) and provide
    `_call_inner_plain(inputs, args, kwargs)` (call the inner layer),
    `_call_with_weights(rounded, inputs, args, kwargs)` (call it so that it
    reads `rounded[id(variable)]` for each listed variable) and
    `_native_scope()` (a context in which the inner layer computes in
    bfloat16).
    """

    _backend = None

    def __init__(self, layer, rounding="rne", grad_rounding=None, *, settings=None,
                 rounding_in_force=None, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self._init_emulation(layer, rounding, grad_rounding, settings, rounding_in_force)
        self.supports_masking = layer.supports_masking
        if layer.built:  # the wrapper has nothing of its own to build
            self.built = True

    def _init_emulation(self, layer, rounding, grad_rounding, settings, rounding_in_force):
        if isinstance(layer, BF16Wrapper):
            raise ValueError(f"Layer {layer.name!r} is already a tfbf16.BF16Wrapper.")
        self.settings = make_settings(rounding, grad_rounding, settings)
        self.kind = kinds.layer_kind(layer)
        if self.kind not in kinds.EMULATED_KINDS:
            raise ValueError(
                f"tfbf16 cannot emulate layer {layer.name!r} of class "
                f"{type(layer).__name__} (kind: {self.kind}). Supported: "
                f"{kinds.EMULATED_LAYERS}. tfbf16.wrap leaves other layers FP32."
            )
        if self.settings.rounding == "native":
            if rounding_in_force is not None and tuple(rounding_in_force) != ("native", None):
                raise ValueError("A native wrapper has no runtime rounding to restore.")
            state = None
        else:
            if rounding_in_force is None:
                rounding_in_force = (self.settings.rounding, self.settings.grad_rounding or "fp32")
            state = RoundingState(*rounding_in_force)
        object.__setattr__(self, "_tfbf16_rounding_state", state)
        object.__setattr__(self, "_tfbf16_hooks", None)
        self._warned_unreached = False

    @property
    def rounding(self):
        """The rounding the wrapper was created with (see `current_rounding`)."""
        return self.settings.rounding

    @property
    def rounding_code(self):
        """The int32 `tf.Variable` holding the forward rounding's code."""
        return self._rounding_state().forward

    @property
    def grad_rounding_code(self):
        """The int32 `tf.Variable` holding the gradient rounding's code."""
        return self._rounding_state().gradient

    def _rounding_state(self):
        state = vars(self).get("_tfbf16_rounding_state")
        if state is None:
            raise AttributeError(
                f"Layer {self.name!r} computes in native bfloat16: it has no runtime "
                "rounding."
            )
        return state

    def _rounding_trackables(self):
        """The rounding variables, as trackable children (for SavedModel)."""
        state = vars(self).get("_tfbf16_rounding_state")
        if state is None:
            return {}
        return {"tfbf16_rounding_code": state.forward,
                "tfbf16_grad_rounding_code": state.gradient}

    def set_rounding(self, rounding, grad_rounding=None):
        """Switches this layer's emulated rounding (no retrace needed).

        Args:
            rounding: "fp32", "rne", "trunc" or "stochastic".
            grad_rounding: the gradient's rounding; None means "same as
                rounding".

        Raises:
            ValueError: for an unknown rounding, a native wrapper, or a
                switch to "stochastic" that needs this layer retraced.
        """
        forward, gradient = self._check_switch(rounding, grad_rounding)
        if self._needs_retrace_for(rounding, grad_rounding):
            raise ValueError(
                f"Layer {self.name!r} was traced without stochastic rounding (it was "
                "created with a deterministic one), so its traced functions cannot "
                "switch to it. Use tfbf16.set_rounding(model, ...), which retraces "
                "the model's Keras functions, or wrap with rounding='stochastic'."
            )
        state = self._rounding_state()
        if "stochastic" in (rounding, grad_rounding):
            state.stochastic = True
        state.forward.assign(forward)
        state.gradient.assign(gradient)

    def _check_switch(self, rounding, grad_rounding=None):
        """The (forward, gradient) codes of a switch `set_rounding` can make.

        Raises:
            ValueError: for an unknown rounding, or a native wrapper.
        """
        if self.settings.rounding == "native":
            raise ValueError(
                f"Layer {self.name!r} computes in native bfloat16; its rounding "
                "cannot be switched at run time. Wrap the model with an emulated "
                "rounding to schedule roundings."
            )
        return rounding_code(rounding), rounding_code(grad_rounding or rounding)

    def _needs_retrace_for(self, rounding, grad_rounding=None):
        """Whether switching to these roundings needs this wrapper retraced."""
        state = vars(self).get("_tfbf16_rounding_state")
        return (state is not None and state.traced and not state.stochastic
                and "stochastic" in (rounding, grad_rounding))

    def _allow_stochastic(self):
        """Lets calls traced from now on round stochastically."""
        self._rounding_state().stochastic = True

    def current_rounding(self):
        """(forward, gradient) rounding names in effect now."""
        if self.settings.rounding == "native":
            return self.settings.rounding, self.settings.grad_rounding
        return self._rounding_state().names()

    #: Set on an instance (bypassing Keras tracking, never saved) by
    #: `tfbf16.callbacks` while it instruments a training step: a callable
    #: `observer(wrapper, call, inputs, args, kwargs)` that must return
    #: `call(inputs, args, kwargs)` (possibly with observed inputs/outputs).
    #: None (the default) costs one attribute read at trace time.
    _tfbf16_observer = None

    def _ensure_inner_built(self, inputs, args, kwargs):
        """Builds an unbuilt inner layer through one plain call of its own.

        Only the layer's own `__call__` knows how to build it from all of its
        arguments (MultiHeadAttention needs query and value shapes), and
        some layers build their sublayers only when they call them
        (tensorflow-recommenders' Cross), so the layer counts as built when
        all its sublayers are: the emulated call must know every weight
        before it runs. The call runs in inference mode and its result is
        dropped, so it updates no statistics.
        """
        if self.layer.built and all(
            sub.built for sub in self._backend.sublayers(self.layer)
        ):
            return
        build_kwargs = dict(kwargs)
        if "training" in build_kwargs:
            build_kwargs["training"] = False
        self._call_inner_plain(inputs, args, build_kwargs)

    def _installed_hooks(self):
        """The emulation hooks of the (built) inner layer, installed on first use."""
        installed = vars(self).get("_tfbf16_hooks")
        if installed is None or installed.variable_count != len(self.layer.weights):
            installed = self._backend.install_hooks(self.layer)
            object.__setattr__(self, "_tfbf16_hooks", installed)
        return installed

    def _emulated_call(self, inputs, args, kwargs):
        self._ensure_inner_built(inputs, args, kwargs)
        observer = self._tfbf16_observer
        if observer is not None:
            return observer(self, self._unobserved_call, inputs, args, kwargs)
        return self._unobserved_call(inputs, args, kwargs)

    def _unobserved_call(self, inputs, args, kwargs):
        if self.settings.rounding == "native":
            return self._native_call(inputs, args, kwargs)
        state = self._rounding_state()
        if _tracing_a_function():
            state.traced = True
        settings = dataclasses.replace(
            self.settings,
            rounding=RuntimeRounding(tf.convert_to_tensor(state.forward), state.stochastic),
            grad_rounding=RuntimeRounding(tf.convert_to_tensor(state.gradient),
                                          state.stochastic),
        )
        if self.kind == kinds.EMBEDDING:
            outputs = self._call_inner_plain(inputs, args, kwargs)
            return tf.nest.map_structure(
                lambda t: round_forward(t, settings, settings.output_gradients)
                if is_float_tensor(t) else t,
                outputs,
            )
        installed = self._installed_hooks()
        if self.kind != kinds.RECURRENT:  # the cell rounds each step's input
            (inputs, args), kwargs = round_inputs((inputs, args), kwargs, settings)
        rounded = {}
        if settings.weights:
            for variable in installed.weights:
                rounded[id(variable)] = round_forward(
                    tf.convert_to_tensor(variable), settings, settings.weight_gradients
                )
            self._warn_unreached(installed.unreached)
        frame = context.EmulationFrame(settings, installed.members, rounded)
        with context.emulating(frame):
            outputs = self._call_with_weights(rounded, inputs, args, kwargs)
        return round_outputs(outputs, settings)

    def _native_call(self, inputs, args, kwargs):
        # Cast every float input: Keras autocasts only the first one.
        (inputs, args), kwargs = map_float_arguments(_to_bfloat16, (inputs, args), kwargs)
        self._installed_hooks()
        with _NATIVE_LOCK, self._native_scope():
            outputs = self._call_inner_plain(inputs, args, kwargs)
        return tf.nest.map_structure(_to_float32, outputs)

    def _warn_unreached(self, variables):
        if variables and not self._warned_unreached:
            self._warned_unreached = True
            warnings.warn(
                f"tfbf16: layer {self.layer.name!r} ({type(self.layer).__name__}) "
                f"reads weights {sorted(v.name for v in variables)} in a way the "
                "wrapper cannot intercept; they stay FP32 in the forward pass.",
                stacklevel=4,
            )

    def emulation_config(self):
        """The wrapper's own config entries: settings and the rounding in force."""
        config = {"settings": self.settings.get_config()}
        if self.settings.rounding != "native":
            config["rounding_in_force"] = list(self.current_rounding())
        return config


def _to_bfloat16(value):
    return tf.cast(value, tf.bfloat16) if value.dtype != tf.bfloat16 else value


def _to_float32(value):
    if is_float_tensor(value) and value.dtype != tf.float32:
        return tf.cast(value, tf.float32)
    return value


class BF16Wrapper(abc.ABC):
    """Emulates bfloat16 in one Keras layer (Keras 3 or tf_keras).

    In the forward pass the layer's floating-point inputs and the weights it
    reads are rounded to bfloat16 values; in the backward pass the gradients
    flowing into its inputs and arriving at its outputs are rounded; the
    layer's own computation runs in FP32 (FP32 accumulation) and its
    variables stay FP32. Composite layers (RNNs, MultiHeadAttention, Cross,
    FeatureCross) also have the GEMM inputs inside them rounded. With
    `rounding="native"` the layer computes in real bfloat16 (FP32 variables,
    outputs cast back to FP32), like Keras' `mixed_bfloat16` policy.

    The wrapper is a drop-in for its layer: its weights are exactly the
    layer's (the rounding in force is held outside them, see
    `set_rounding`), and weights files and checkpoints are laid out as the
    layer's own. Its class is named like the layer's (e.g. a wrapped Dense
    is of class "Dense", `BF16Wrapper[Dense]`), which is what Keras records
    in weights files.

    Calling `tfbf16.BF16Wrapper(layer, ...)` returns the implementation for
    the layer's Keras version; both are instances of this class.

    Args:
        layer: the layer to wrap (built or not).
        rounding: "rne", "trunc", "stochastic" or "native".
        grad_rounding: rounding of gradients; None means "same as rounding".
        settings: a `tfbf16.policy.LayerRounding` (or its config dict) with
            finer control; overrides `rounding` and `grad_rounding`.
        rounding_in_force: (forward, gradient) rounding names to start with
            (as `set_rounding` sets them; saved configs record them); None
            means the settings' roundings.
        **kwargs: passed to the Keras `Wrapper` base class (e.g. `name`).

    Returns:
        A Keras layer.

    Raises:
        TypeError: if `layer` is not a Keras 3 or tf_keras layer.
        ValueError: for an unknown rounding or a layer tfbf16 cannot emulate.

    Example:

    >>> dense = tfbf16.BF16Wrapper(keras.layers.Dense(16), rounding="rne")
    >>> y = dense(tf.ones([2, 8]))
    """

    def __new__(cls, layer, *args, **kwargs):
        if cls is not BF16Wrapper:
            return super().__new__(cls)
        return registry.backend_of(layer).wrapper_class(layer, *args, **kwargs)
