"""Keras callbacks for BF16 training: measure, schedule, probe and guard.

- `PrecisionMonitor`: per emulated layer, how much BF16 rounding changes its
  weights, inputs and error gradients, and how many values underflow,
  overflow or are not finite; into the logs `History` keeps and TensorBoard.
- `PrecisionSchedule`: switches the rounding of the model or of named layers
  at given epochs or steps, without recompiling or retracing.
- `SensitivityProbe`: evaluates the same weights under several roundings at
  every epoch end (inference-time sensitivity).
- `NonFiniteGuard`: when the loss, an activation, a gradient or a weight
  turns NaN/Inf, names the layer where it started, restores the last good
  weights and optimizer state, and stops or switches that layer to FP32.

Every callback works with Keras 3 and tf_keras models: each is a subclass of
both `keras.callbacks.Callback` and `tf_keras.callbacks.Callback`, so either
Keras' `fit` accepts it. Custom training loops call the hooks themselves
(see `instrument` for the activation and gradient statistics).

How activations and gradients are observed: while a monitoring callback is
active, the model's training function is retraced once with a small
observer around every `tfbf16.BF16Wrapper` call; it accumulates statistics
of the layer's inputs and outputs (forward) and of the gradients arriving at
its outputs and leaving through its inputs (backward) into variables, behind
a `tf.cond` on a level variable, so steps that are not measured pay almost
nothing. When training ends the previous training function is put back.
"""

import collections
import math
import re

import keras
import numpy as np
import tensorflow as tf
import tf_keras

from tensorflow.core.framework import summary_pb2

from tfbf16 import rounding as rounding_lib
from tfbf16.rounding import ROUNDING_CODES, rounding_code
from tfbf16.wrap import iter_layers, set_rounding
from tfbf16.wrapper_base import BF16Wrapper

__all__ = [
    "NonFiniteError", "NonFiniteGuard", "PrecisionMonitor", "PrecisionSchedule",
    "SensitivityProbe", "instrument", "tensor_statistics",
]

# ----------------------------------------------------------------------------
# A callback base class for both Keras versions.


class _Callback(keras.callbacks.Callback, tf_keras.callbacks.Callback):
    """A callback that Keras 3's and tf_keras' `fit` both accept."""

    def __init__(self):
        keras.callbacks.Callback.__init__(self)
        # What tf_keras' Callback.__init__ sets (its CallbackList reads them).
        self.validation_data = None
        self._chief_worker_only = None
        self._supports_tf_logs = False

    @property
    def model(self):
        return self._model

    @model.setter
    def model(self, model):
        self._model = model

    def set_model(self, model):
        self._model = model


def _wrapped_layers(model):
    """[(name, wrapper)] of the model's `BF16Wrapper`s, names unique."""
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


def _to_float(value):
    return float(np.asarray(value))


def _tf_variable(variable):
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


# ----------------------------------------------------------------------------
# Statistics of one tensor.

#: The fields of `tensor_statistics`.
FIELDS = ("count", "sum_sq", "sum_sq_err", "underflow", "overflow", "nonfinite")
_COUNT, _SUM_SQ, _SUM_SQ_ERR, _UNDERFLOW, _OVERFLOW, _NONFINITE = range(len(FIELDS))
#: Histogram bins: the float32 biased exponent of non-zero finite values
#: (bin 0: subnormal; bin k: magnitudes in [2**(k-127), 2**(k-126))).
HISTOGRAM_BINS = 256
_ABS_MASK = 0x7FFFFFFF
_INF_BITS = 0x7F800000
_MIN_NORMAL_BITS = 0x00800000


def _exact_float64(x):
    """float32 -> float64 exactly, subnormals included.

    TensorFlow's CPU cast flushes float32 subnormals to zero, so the value is
    rebuilt from the bit pattern: significand (an integer) times a power of
    two. Only meaningful for finite x.
    """
    bits = tf.bitcast(x, tf.int32)
    field = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF)
    significand = tf.bitwise.bitwise_and(bits, 0x7FFFFF) + tf.where(field > 0, 0x800000, 0)
    exponent = tf.cast(tf.maximum(field, 1) - 150 + 1023, tf.int64)
    scale = tf.bitcast(tf.bitwise.left_shift(exponent, 52), tf.float64)
    value = tf.cast(significand, tf.float64) * scale
    return tf.where(bits < 0, -value, value)


def _round_for_statistics(x, rounding):
    """The rounding of a float32 tensor, by the unfused kernel.

    Statistics run on few steps; the XLA-fused kernel of `round_bf16` would
    compile once per tensor shape, which costs more than it saves here.
    """
    if isinstance(rounding, str):
        rounding = rounding_code(rounding)
    code = tf.cast(tf.convert_to_tensor(rounding), tf.int32)
    seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    return rounding_lib._round_float32_bits(x, code, seed)  # noqa: SLF001


def tensor_statistics(x, rounding="rne", *, full=True):
    """BF16 rounding statistics of a tensor, as sums (so they can be added up).

    Args:
        x: a floating-point tensor (float16/bfloat16/float32; float64 is
            first cast to float32).
        rounding: the rounding to measure: "rne", "trunc", "stochastic",
            "fp32" (nothing changes) or an int32 rounding-code tensor.
        full: False computes only the count and the non-finite count.

    Returns:
        `(sums, histogram)`: `sums` is a float64 vector of `FIELDS`: the
        number of values; the sum of squares of the values and of their
        rounding errors (over values that are finite before and after
        rounding, computed exactly in float64); the number of non-zero finite
        values that round to zero or to a subnormal ("underflow"); the number
        of finite values that round to +-Inf ("overflow"); the number of
        NaN/Inf values. `histogram` is a float64 vector of `HISTOGRAM_BINS`
        counts of the float32 exponent of the non-zero finite values (None
        unless `full`).

    Example:

    >>> sums, _ = tfbf16.callbacks.tensor_statistics(tf.constant([1.00390625, 1e-39]))
    >>> relative_error = math.sqrt(sums[2] / sums[1])
    """
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    x = tf.reshape(x, [-1])
    bits = tf.bitcast(x, tf.int32)
    magnitude = tf.bitwise.bitwise_and(bits, _ABS_MASK)
    finite = magnitude < _INF_BITS
    count = tf.cast(tf.size(x), tf.float64)
    nonfinite = count - tf.reduce_sum(tf.cast(finite, tf.float64))
    zero = tf.constant(0.0, tf.float64)
    if not full:
        return tf.stack([count, zero, zero, zero, zero, nonfinite]), None
    rounded = _round_for_statistics(x, rounding)
    rounded_magnitude = tf.bitwise.bitwise_and(tf.bitcast(rounded, tf.int32), _ABS_MASK)
    rounded_finite = rounded_magnitude < _INF_BITS
    overflow = tf.logical_and(finite, tf.logical_not(rounded_finite))
    underflow = tf.logical_and(
        tf.logical_and(finite, magnitude > 0), rounded_magnitude < _MIN_NORMAL_BITS
    )
    both = tf.logical_and(finite, rounded_finite)
    x64 = tf.where(both, _exact_float64(x), zero)
    r64 = tf.where(both, _exact_float64(rounded), zero)
    sums = tf.stack([
        count,
        tf.reduce_sum(tf.square(x64)),
        tf.reduce_sum(tf.square(r64 - x64)),
        tf.reduce_sum(tf.cast(underflow, tf.float64)),
        tf.reduce_sum(tf.cast(overflow, tf.float64)),
        nonfinite,
    ])
    field = tf.bitwise.right_shift(magnitude, 23)
    nonzero_finite = tf.logical_and(finite, magnitude > 0)
    segment = tf.where(nonzero_finite, field, HISTOGRAM_BINS)  # the extra bin is dropped
    histogram = tf.math.unsorted_segment_sum(
        tf.ones_like(x, tf.float64), segment, HISTOGRAM_BINS + 1
    )[:HISTOGRAM_BINS]
    return sums, histogram


def _summarize(sums):
    """{rel_error, underflow, overflow, nonfinite} of a `FIELDS` vector."""
    count = sums[_COUNT]
    if count <= 0:
        return None
    sum_sq, sum_sq_err = sums[_SUM_SQ], sums[_SUM_SQ_ERR]
    return {
        "rel_error": math.sqrt(sum_sq_err / sum_sq) if sum_sq > 0 else 0.0,
        "underflow": sums[_UNDERFLOW] / count,
        "overflow": sums[_OVERFLOW] / count,
        "nonfinite": sums[_NONFINITE] / count,
    }


# ----------------------------------------------------------------------------
# The recorder: observes the wrapped layers of one model during training.

_OFF, _FINITE, _FULL = 0, 1, 2
_ROLES = ("inputs", "outputs", "grads", "input_grads")
_INPUTS, _OUTPUTS, _GRADS, _INPUT_GRADS = range(len(_ROLES))
_FULL_ROLES = (_INPUTS, _GRADS)  # the others only need finiteness
_RECORDER_ATTRIBUTE = "_tfbf16_recorder"


class _Recorder:
    """Statistics of every `BF16Wrapper` call of one model's training step.

    Installed as each wrapper's `_tfbf16_observer`; it only adds ops while
    an instrumented step function is being traced (`self.tracing`). The ops
    accumulate into `self.sums` ([layers, roles, fields]) and
    `self.histograms` ([layers, roles, bins]) when `self.level` (a variable
    set before each step) asks for it.
    """

    def __init__(self, model):
        self.model = model
        self.layers = _wrapped_layers(model)
        self.names = [name for name, _ in self.layers]
        self.slots = {id(wrapper): slot for slot, (_, wrapper) in enumerate(self.layers)}
        shape = (max(len(self.layers), 1), len(_ROLES))
        with tf.init_scope():
            self.level = tf.Variable(_OFF, dtype=tf.int32, trainable=False, name="tfbf16_level")
            self.rounding_code = tf.Variable(
                ROUNDING_CODES["rne"], dtype=tf.int32, trainable=False, name="tfbf16_stats_rounding"
            )
            self.sums = tf.Variable(
                tf.zeros(shape + (len(FIELDS),), tf.float64), trainable=False, name="tfbf16_sums"
            )
            self.histograms = tf.Variable(
                tf.zeros(shape + (HISTOGRAM_BINS,), tf.float64), trainable=False,
                name="tfbf16_histograms",
            )
        self.tracing = False
        self.external = False  # instrumented by `instrument` (a custom loop)
        self.call_order = []  # slots in the order of their first traced call
        self.calls = 0  # completed calls of the instrumented step function
        self.subscribers = []
        self._requested = {}  # call number -> requested level
        self._assigned_level = _OFF
        self._dirty = False
        self._last_level = _OFF
        self._results = None
        self._fit_previous = None
        self._fit_function = None
        for _, wrapper in self.layers:
            object.__setattr__(wrapper, "_tfbf16_observer", self.observe)

    @classmethod
    def for_model(cls, model):
        recorder = vars(model).get(_RECORDER_ATTRIBUTE)
        if recorder is None:
            recorder = cls(model)
            object.__setattr__(model, _RECORDER_ATTRIBUTE, recorder)
        return recorder

    # ------------------------------------------------------------ tracing
    @tf.autograph.experimental.do_not_convert
    def observe(self, wrapper, call, inputs, args, kwargs):
        slot = self.slots.get(id(wrapper))
        if not self.tracing or slot is None:
            return call(inputs, args, kwargs)
        if slot not in self.call_order:
            self.call_order.append(slot)

        def watch_input(value):
            if not _is_float_tensor(value):
                return value
            self._record(slot, _INPUTS, value)
            return self._watch_gradient(slot, _INPUT_GRADS, value)

        def watch_output(value):
            if not _is_float_tensor(value):
                return value
            self._record(slot, _OUTPUTS, value)
            return self._watch_gradient(slot, _GRADS, value)

        inputs = tf.nest.map_structure(watch_input, inputs)
        args = tf.nest.map_structure(watch_input, args)
        kwargs = {
            key: value if "mask" in key else tf.nest.map_structure(watch_input, value)
            for key, value in kwargs.items()
        }
        return tf.nest.map_structure(watch_output, call(inputs, args, kwargs))

    def _record(self, slot, role, value):
        """Adds the statistics of `value` to the slot's sums (level allowing)."""
        value = tf.stop_gradient(value)
        full_role = role in _FULL_ROLES

        def add(full):
            sums, histogram = tensor_statistics(value, self.rounding_code, full=full)
            index = [[slot, role]]
            ops = [self.sums.scatter_nd_add(index, [sums])]
            if histogram is not None:
                ops.append(self.histograms.scatter_nd_add(index, [histogram]))
            with tf.control_dependencies(ops):
                return tf.constant(True)

        level = tf.convert_to_tensor(self.level)
        return tf.cond(
            level >= (_FULL if full_role else _FINITE),
            lambda: add(full_role),
            lambda: tf.cond(
                level >= _FINITE, lambda: add(False), lambda: tf.constant(False)
            ),
        )

    def _watch_gradient(self, slot, role, value):
        """Identity whose backward pass records the incoming gradient."""

        @tf.custom_gradient
        def identity(x):
            def grad(upstream):
                if isinstance(upstream, tf.IndexedSlices):
                    done = self._record(slot, role, upstream.values)
                    with tf.control_dependencies([done]):
                        return tf.IndexedSlices(
                            tf.identity(upstream.values), upstream.indices, upstream.dense_shape
                        )
                done = self._record(slot, role, upstream)
                with tf.control_dependencies([done]):
                    return tf.identity(upstream)

            return tf.identity(x), grad

        return identity(value)

    # ------------------------------------------------------ step protocol
    def instrument(self, step_function):
        """`step_function` with the observers active while it runs (and traces)."""

        def instrumented(*args, **kwargs):
            level = self._requested.pop(self.calls, _OFF)
            self._requested.clear()
            if self._dirty:
                self.sums.assign(tf.zeros_like(self.sums))
                self.histograms.assign(tf.zeros_like(self.histograms))
                self._dirty = False
            if level != self._assigned_level:
                self.level.assign(level)
                self._assigned_level = level
            self._results = None
            self.tracing = True
            try:
                return step_function(*args, **kwargs)
            finally:
                self.tracing = False
                self.calls += 1
                self._dirty = level > _OFF
                self._last_level = level

        instrumented.tfbf16_instrumented = True
        return instrumented

    def request(self, level):
        """Asks for at least `level` in the next call of the step function."""
        self._requested[self.calls] = max(self._requested.get(self.calls, _OFF), level)

    def results(self):
        """(sums, histograms or None, level) of the last step (cached)."""
        if self._results is None:
            level = self._last_level
            sums = self.sums.numpy() if level > _OFF else np.zeros(self.sums.shape)
            histograms = self.histograms.numpy() if level >= _FULL else None
            self._results = (sums, histograms, level)
        return self._results

    # --------------------------------------------------------- fit support
    def subscribe(self, callback):
        if callback not in self.subscribers:
            self.subscribers.append(callback)
        if self.external:
            return
        model = self.model
        current = getattr(model, "train_function", None)
        if getattr(current, "tfbf16_instrumented", False):
            return
        if current is None:
            raise RuntimeError(
                f"{type(callback).__name__} needs to observe the training step, but "
                f"{model.name!r} has no train_function: outside `fit` (a custom "
                "training loop), wrap your step function with "
                "`tfbf16.callbacks.instrument(step_fn, model)` before training."
            )
        self._fit_previous = current
        made = model.make_train_function(force=True)
        fresh = made if made is not None else model.train_function
        self._fit_function = self.instrument(fresh)
        model.train_function = self._fit_function

    def unsubscribe(self, callback):
        if callback in self.subscribers:
            self.subscribers.remove(callback)
        if not self.subscribers and self._fit_function is not None:
            if getattr(self.model, "train_function", None) is self._fit_function:
                self.model.train_function = self._fit_previous
            self._fit_function = self._fit_previous = None


def _is_float_tensor(value):
    return isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_floating


def instrument(step_function, model):
    """Lets tfbf16's callbacks observe a custom training loop's step.

    `fit` needs nothing: the callbacks instrument its training function
    themselves. A custom loop wraps its step function (a `tf.function`
    that calls `model`) once, before the first call, and calls the
    callbacks' `on_train_begin`, `on_train_batch_begin`,
    `on_train_batch_end(step, {"loss": loss})` and `on_train_end` around
    it (e.g. through a `CallbackList`).

    Args:
        step_function: the training step; it is traced while the observers
            are active, so the statistics ops become part of its graph.
        model: the wrapped model the step trains.

    Returns:
        A callable with the same signature as `step_function`.

    Example:

    >>> train_step = tfbf16.callbacks.instrument(tf.function(train_step), model)
    """
    recorder = _Recorder.for_model(model)
    recorder.external = True
    return recorder.instrument(step_function)


class _ObservingCallback(_Callback):
    """A callback that uses the model's `_Recorder`."""

    _recorder = None

    def _attach(self):
        self._recorder = _Recorder.for_model(self.model)
        if self._recorder.layers:  # nothing to observe in a model without wrappers
            self._recorder.subscribe(self)
        return self._recorder

    def _detach(self):
        if self._recorder is not None:
            self._recorder.unsubscribe(self)
            self._recorder = None


def _start_step(model, optimizer=None):
    """The optimizer's step count (that of `model.optimizer` by default), or 0."""
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return 0
    try:
        return int(np.asarray(iterations))
    except (TypeError, ValueError):
        return 0


# ----------------------------------------------------------------------------
# TensorBoard output without the tensorboard package.

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)
_HISTOGRAM_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histograms")
)
# Bin k of an exponent histogram covers log2|x| in [k - 127, k - 126); the
# subnormal bin 0 covers [-149, -126).
_HISTOGRAM_LEFT = np.array([-149.0] + [k - 127.0 for k in range(1, HISTOGRAM_BINS)])
_HISTOGRAM_RIGHT = np.array([-126.0] + [k - 126.0 for k in range(1, HISTOGRAM_BINS)])


def _histogram_tensor(counts):
    """The TensorBoard histogram ([k, 3]: left, right, count) of exponent counts."""
    used = np.nonzero(counts)[0]
    if used.size == 0:
        return np.zeros((0, 3))
    keep = slice(used[0], used[-1] + 1)
    return np.stack([_HISTOGRAM_LEFT[keep], _HISTOGRAM_RIGHT[keep], counts[keep]], axis=1)


# ----------------------------------------------------------------------------
# PrecisionMonitor.


class PrecisionMonitor(_ObservingCallback):
    """Measures, per emulated layer, what BF16 rounding does to its values.

    Every `every_n_steps` training steps (the first step included) it
    measures, for each `BF16Wrapper` of the model:

    - "weights": the layer's trainable floating-point weights as the step
      reads them (before its update);
    - "inputs": the floating-point inputs of the layer's call in the step;
    - "grads": the error gradient arriving at the layer's outputs in the
      backward pass (what its backward GEMMs consume);

    and for each, the relative rounding error `||round(x) - x|| / ||x||`
    (over values finite before and after rounding; 0 for all-zero values),
    and the fractions of the values that underflow (non-zero, but zero or
    subnormal after rounding), overflow (finite, but +-Inf after rounding)
    and that are NaN/Inf already. `round` is `rounding` (default RNE),
    whatever rounding the layer trains with, so the numbers say what BF16
    would do to the values even while a layer runs in FP32.

    At each epoch end the means over the epoch's measurements are added to
    the epoch logs (and so to `History`) as `"bf16/<layer>/<kind>_<stat>"`,
    e.g. `"bf16/dense/inputs_rel_error"`; every measurement is also kept in
    `self.records`. With `log_dir`, each measurement is written to
    TensorBoard: the same scalars, and histograms of log2|x| (the float32
    exponent of the non-zero finite values) per layer and kind.

    Observing inputs and gradients retraces the training function once per
    `fit` call (the observers are part of the traced step; unmeasured steps
    skip them with a `tf.cond`). Not supported under multi-replica
    distribution strategies.

    Args:
        every_n_steps: measure every this many steps (>= 1).
        log_dir: optional TensorBoard log directory.
        rounding: the rounding whose effect is measured: "rne", "trunc" or
            "stochastic".
        optimizer: steps are counted from this optimizer's `iterations` at
            the start of training (None: `model.optimizer`; 0 if none), so
            a resumed run logs at its global steps.

    Example:

    >>> monitor = tfbf16.callbacks.PrecisionMonitor(every_n_steps=100, log_dir="logs")
    >>> history = bf16_model.fit(x, y, epochs=3, callbacks=[monitor])
    >>> history.history["bf16/dense/grads_underflow"]
    """

    KINDS = ("weights", "inputs", "grads")
    STATS = ("rel_error", "underflow", "overflow", "nonfinite")

    def __init__(self, every_n_steps=100, log_dir=None, *, rounding="rne", optimizer=None):
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1; got {every_n_steps!r}.")
        if rounding not in ("rne", "trunc", "stochastic"):
            raise ValueError(
                f"rounding must be 'rne', 'trunc' or 'stochastic'; got {rounding!r}."
            )
        self.every_n_steps = every_n_steps
        self.log_dir = log_dir
        self.rounding = rounding
        self.optimizer = optimizer
        self.records = []
        self._writer = None
        self._epoch = 0
        self._epoch_values = collections.defaultdict(list)
        self._last = {}

    def get_config(self):
        return {"every_n_steps": self.every_n_steps, "log_dir": self.log_dir,
                "rounding": self.rounding}

    def on_train_begin(self, logs=None):
        recorder = self._attach()
        if not recorder.layers:
            raise ValueError(
                f"PrecisionMonitor found no tfbf16.BF16Wrapper in {self.model.name!r}; "
                "monitor a model returned by tfbf16.wrap."
            )
        recorder.rounding_code.assign(rounding_code(self.rounding))
        self._step = _start_step(self.model, self.optimizer)
        self._weights = [
            [_tf_variable(v) for v in wrapper.layer.trainable_weights
             if tf.as_dtype(v.dtype).is_floating]
            for _, wrapper in recorder.layers
        ]
        self._weight_statistics = tf.function(self._compute_weight_statistics, autograph=False)
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _compute_weight_statistics(self):
        sums, histograms = [], []
        for variables in self._weights:
            layer_sums = tf.zeros([len(FIELDS)], tf.float64)
            layer_histogram = tf.zeros([HISTOGRAM_BINS], tf.float64)
            for variable in variables:
                s, h = tensor_statistics(tf.convert_to_tensor(variable), self._recorder.rounding_code)
                layer_sums += s
                layer_histogram += h
            sums.append(layer_sums)
            histograms.append(layer_histogram)
        return tf.stack(sums), tf.stack(histograms)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_values = collections.defaultdict(list)

    def on_train_batch_begin(self, batch, logs=None):
        if self._step % self.every_n_steps == 0:
            self._recorder.request(_FULL)
            # The weights this step reads (and rounds), before its update.
            self._pending_weights = [t.numpy() for t in self._weight_statistics()]

    def on_train_batch_end(self, batch, logs=None):
        step = self._step
        self._step += 1
        if step % self.every_n_steps:
            return
        sums, histograms, level = self._recorder.results()
        if level < _FULL:
            return  # the step was not observed (the step function was not instrumented)
        weight_sums, weight_histograms = self._pending_weights
        values, hists = {}, {}
        for slot, name in enumerate(self._recorder.names):
            per_kind = {
                "weights": (weight_sums[slot], weight_histograms[slot]),
                "inputs": (sums[slot, _INPUTS], histograms[slot, _INPUTS]),
                "grads": (sums[slot, _GRADS], histograms[slot, _GRADS]),
            }
            for kind, (kind_sums, kind_histogram) in per_kind.items():
                summary = _summarize(kind_sums)
                if summary is None:
                    continue
                for stat, value in summary.items():
                    values[f"bf16/{name}/{kind}_{stat}"] = value
                hists[f"bf16/{name}/{kind}_log2_magnitude"] = kind_histogram
        self.records.append({"step": step, "epoch": self._epoch, **values})
        for key, value in values.items():
            self._epoch_values[key].append(value)
        self._last = values
        if self._writer is not None:
            self._write(step, values, hists)

    def _write(self, step, values, hists):
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
            for tag, counts in hists.items():
                tf.summary.write(
                    tag, tf.constant(_histogram_tensor(counts), tf.float64),
                    metadata=_HISTOGRAM_METADATA,
                )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._epoch_values:
            for key, values in self._epoch_values.items():
                logs[key] = float(np.mean(values))
        else:
            logs.update(self._last)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        self._detach()
        if self._writer is not None:
            self._writer.flush()


# ----------------------------------------------------------------------------
# PrecisionSchedule.


def _check_schedule_rounding(rounding):
    rounding_code(rounding)  # raises ValueError with the valid names
    return rounding


class PrecisionSchedule(_Callback):
    """Changes the model's (or named layers') rounding at given epochs or steps.

    The wrappers read their rounding from variables, so a change takes effect
    at the next step without recompiling or retracing (see
    `tfbf16.set_rounding`). Entries apply cumulatively in key order: the
    rounding in effect at epoch/step `n` is the result of applying every
    entry with key <= n, so training resumed with `initial_epoch` (or a
    restored optimizer step count) gets the right roundings.

    Args:
        schedule: dict from an epoch (or step) number to either a rounding
            for every wrapped layer ("fp32", "rne", "trunc", "stochastic"),
            or a dict from layer names / regular expressions (as in
            `tfbf16.set_rounding(layers=...)`) to roundings.
        unit: "epoch" (applied at epoch begin) or "step" (applied before the
            step with that 0-based index; steps are counted from the
            optimizer's `iterations` at the start of training).
        grad_rounding: None to round gradients like the forward pass, or a
            fixed gradient rounding.
        verbose: 1 prints each change.
        optimizer: the optimizer whose `iterations` count the steps (None:
            `model.optimizer`; without one, steps count from 0).

    Example:

    >>> schedule = tfbf16.callbacks.PrecisionSchedule({0: "fp32", 2: "rne"})
    >>> bf16_model.fit(x, y, epochs=5, callbacks=[schedule])
    """

    def __init__(self, schedule, unit="epoch", *, grad_rounding=None, verbose=0,
                 optimizer=None):
        super().__init__()
        if not isinstance(schedule, dict) or not schedule:
            raise ValueError(f"schedule must be a non-empty dict; got {schedule!r}.")
        checked = {}
        for key, value in schedule.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise ValueError(f"schedule keys must be ints >= 0; got {key!r}.")
            if isinstance(value, dict):
                if not value:
                    raise ValueError(f"schedule[{key}] is an empty dict.")
                checked[key] = {str(k): _check_schedule_rounding(v) for k, v in value.items()}
            else:
                checked[key] = _check_schedule_rounding(value)
        if unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step'; got {unit!r}.")
        if grad_rounding is not None:
            _check_schedule_rounding(grad_rounding)
        self.schedule = dict(sorted(checked.items()))
        self.unit = unit
        self.grad_rounding = grad_rounding
        self.verbose = verbose
        self.optimizer = optimizer
        self.applied = []  # (epoch or step, entry) in the order applied

    def get_config(self):
        return {"schedule": self.schedule, "unit": self.unit,
                "grad_rounding": self.grad_rounding, "verbose": self.verbose}

    def _apply_up_to(self, position):
        for key, entry in self.schedule.items():
            if key > position or key <= self._applied_key:
                continue
            if isinstance(entry, dict):
                for layers, rounding in entry.items():
                    set_rounding(self.model, rounding, grad_rounding=self.grad_rounding,
                                 layers=[layers])
            else:
                set_rounding(self.model, entry, grad_rounding=self.grad_rounding)
            self._applied_key = key
            self.applied.append((position, entry))
            if self.verbose:
                print(f"PrecisionSchedule: {self.unit} {position}: rounding {entry}")

    def on_train_begin(self, logs=None):
        self._applied_key = -1
        self._step = _start_step(self.model, self.optimizer)
        if self.unit == "step":
            self._apply_up_to(self._step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            # Entries skipped by `initial_epoch` are applied first, in order.
            self._apply_up_to(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            self._apply_up_to(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1


# ----------------------------------------------------------------------------
# SensitivityProbe.


def _emulated_wrappers(model, who):
    wrappers = [w for _, w in _wrapped_layers(model)]
    if not wrappers:
        raise ValueError(f"{who} found no tfbf16.BF16Wrapper in {model.name!r}.")
    native = [w.name for w in wrappers if w.settings.rounding == "native"]
    if native:
        raise ValueError(
            f"{who} switches roundings at run time, which native-bfloat16 layers "
            f"cannot do ({native}); wrap the model with an emulated rounding."
        )
    return wrappers


class SensitivityProbe(_Callback):
    """Evaluates the current weights under several roundings at epoch ends.

    At the end of every epoch (or every `every_n_steps` steps) the model is
    evaluated on `validation_data` once per rounding, with the same
    weights, and for each metric `m` the logs get
    `"sensitivity/<rounding>/<m>"` and, for every rounding but the first
    (the reference), `"sensitivity/<rounding>/<m>_delta"` = its value minus
    the reference's. Each layer's previous rounding is restored afterwards.
    Nothing is retraced: the roundings are switched through
    `tfbf16.set_rounding`.

    Args:
        validation_data: what `model.evaluate` takes as `x`: a dataset, or a
            tuple `(x, y)` / `(x, y, sample_weight)` of arrays.
        roundings: the roundings to compare; the first is the reference.
        layers: None for every wrapped layer, or the names / regular
            expressions of the layers to switch.
        evaluate_fn: optional `fn(model) -> {metric: value}` used instead
            of `model.evaluate` (e.g. for an uncompiled model in a custom
            loop).
        every_n_steps: None to probe at epoch ends; an int to probe every
            that many steps instead (results in `self.records` only).
        batch_size: passed to `model.evaluate` for array data.

    Example:

    >>> probe = tfbf16.callbacks.SensitivityProbe((x_val, y_val))
    >>> history = bf16_model.fit(x, y, epochs=3, callbacks=[probe])
    >>> history.history["sensitivity/trunc/loss_delta"]
    """

    def __init__(self, validation_data, roundings=("fp32", "rne", "trunc"), *, layers=None,
                 evaluate_fn=None, every_n_steps=None, batch_size=None):
        super().__init__()
        roundings = tuple(roundings)
        if len(roundings) < 1:
            raise ValueError("roundings must name at least one rounding.")
        for rounding in roundings:
            _check_schedule_rounding(rounding)
        if len(set(roundings)) != len(roundings):
            raise ValueError(f"roundings repeat: {roundings}.")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be None or an int >= 1; got {every_n_steps!r}.")
        self.validation_data = validation_data
        self.roundings = roundings
        self.layers = layers
        self.evaluate_fn = evaluate_fn
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.records = []

    @property
    def validation_data(self):
        return self._probe_data

    @validation_data.setter
    def validation_data(self, value):
        # tf_keras' Callback.__init__ sets validation_data = None; keep ours.
        if value is not None or not hasattr(self, "_probe_data"):
            self._probe_data = value

    def _evaluate(self):
        if self.evaluate_fn is not None:
            return {k: _to_float(v) for k, v in self.evaluate_fn(self.model).items()}
        data = self._probe_data
        if isinstance(data, tuple):
            x, y, *rest = data
            result = self.model.evaluate(
                x, y, sample_weight=rest[0] if rest else None, batch_size=self.batch_size,
                verbose=0, return_dict=True,
            )
        else:
            result = self.model.evaluate(data, verbose=0, return_dict=True)
        return {k: _to_float(v) for k, v in result.items()}

    def probe(self):
        """Evaluates under each rounding now; returns the flat log dict."""
        wrappers = _emulated_wrappers(self.model, "SensitivityProbe")
        previous = [(w, w.current_rounding()) for w in wrappers]
        results = {}
        try:
            for rounding in self.roundings:
                set_rounding(self.model, rounding, layers=self.layers)
                results[rounding] = self._evaluate()
        finally:
            for wrapper, (forward, gradient) in previous:
                wrapper.set_rounding(forward, gradient)
        logs = {}
        reference = results[self.roundings[0]]
        for rounding, metrics in results.items():
            for metric, value in metrics.items():
                logs[f"sensitivity/{rounding}/{metric}"] = value
                if rounding != self.roundings[0] and metric in reference:
                    logs[f"sensitivity/{rounding}/{metric}_delta"] = value - reference[metric]
        return logs

    def on_train_begin(self, logs=None):
        _emulated_wrappers(self.model, "SensitivityProbe")
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps is not None and self._step % self.every_n_steps == 0:
            self.records.append({"step": self._step, **self.probe()})

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_steps is not None:
            return
        values = self.probe()
        self.records.append({"epoch": epoch, **values})
        if logs is not None:
            logs.update(values)


# ----------------------------------------------------------------------------
# NonFiniteGuard.


class NonFiniteError(RuntimeError):
    """Raised by `NonFiniteGuard(raise_error=True)` when it stops training."""

    def __init__(self, message, event):
        super().__init__(message)
        self.event = event


class _Snapshot:
    """Copies of a list of variables, saved and restored by traced functions."""

    def __init__(self, variables):
        self.variables = variables
        self.float_variables = [v for v in variables if v.dtype.is_floating]
        with tf.init_scope():
            self.copies = [
                tf.Variable(v.read_value(), trainable=False, name="tfbf16_snapshot")
                for v in variables
            ]
        self.check_and_save = tf.function(self._check_and_save, autograph=False)
        self.restore = tf.function(self._restore, autograph=False)

    def _check_and_save(self, save):
        finite = tf.reduce_all(tf.stack(
            [tf.reduce_all(tf.math.is_finite(v)) for v in self.float_variables] or [tf.constant(True)]
        ))

        def do_save():
            with tf.control_dependencies([c.assign(v) for c, v in zip(self.copies, self.variables)]):
                return tf.constant(True)

        saved = tf.cond(tf.logical_and(save, finite), do_save, lambda: tf.constant(False))
        return finite, saved

    def _restore(self):
        for copy, variable in zip(self.copies, self.variables):
            variable.assign(copy)


class NonFiniteGuard(_ObservingCallback):
    """Catches NaN/Inf in training, names its source and recovers.

    After every step it checks the loss, every emulated layer's inputs,
    outputs and gradients (counted inside the step) and the weights and
    optimizer state. On the first non-finite value it:

    1. names where it started: the first layer, in call order, whose inputs
       or outputs were not finite (forward); else the first layer, in
       backward order, whose output or input gradient was not finite; else
       the first layer whose weights became non-finite in the update; else
       the loss itself;
    2. restores the weights and optimizer state saved after the last good
       step (every `snapshot_every` steps), and resets the metrics (the
       epoch's reported metrics then cover the steps after the restore);
    3. with `switch_to_fp32=True`, switches the named layer to FP32 (through
       `tfbf16.set_rounding`, no retrace) and goes on with the next batch;
       otherwise (or if that layer is not emulated or already FP32) stops
       training (`model.stop_training`; with `raise_error=True` it raises
       `NonFiniteError` instead, for custom loops).

    Every event is kept in `self.events` as a dict with "step", "epoch",
    "layer" (None if no emulated layer is to blame), "stage" ("inputs",
    "forward", "output_gradient", "backward", "update", "optimizer" or
    "loss"), "message" and "action" ("fp32" or "stop").

    The guard keeps one copy of the weights and optimizer state (memory),
    refreshed by one pass over them every `snapshot_every` steps, and checks
    them for NaN/Inf after every step. Observing activations and gradients
    retraces the training function once per `fit` call. Not supported under
    multi-replica strategies.

    Args:
        switch_to_fp32: switch the layer to FP32 and go on instead of stopping.
        snapshot_every: save the good state every this many steps (1: a
            bad step is undone exactly; more: cheaper, loses up to this many
            steps).
        optimizer: the optimizer whose state is saved and restored; None
            means `model.optimizer` (pass it for custom loops).
        raise_error: raise `NonFiniteError` when stopping.
        verbose: 1 prints each event.

    Example:

    >>> guard = tfbf16.callbacks.NonFiniteGuard(switch_to_fp32=True)
    >>> bf16_model.fit(x, y, epochs=10, callbacks=[guard])
    >>> guard.events
    """

    def __init__(self, switch_to_fp32=False, *, snapshot_every=1, optimizer=None,
                 raise_error=False, verbose=1):
        super().__init__()
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every must be an int >= 1; got {snapshot_every!r}.")
        self.switch_to_fp32 = bool(switch_to_fp32)
        self.snapshot_every = snapshot_every
        self.optimizer = optimizer
        self.raise_error = bool(raise_error)
        self.verbose = verbose
        self.events = []
        self._snapshot = None

    def get_config(self):
        return {"switch_to_fp32": self.switch_to_fp32, "snapshot_every": self.snapshot_every,
                "raise_error": self.raise_error, "verbose": self.verbose}

    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else getattr(self.model, "optimizer", None)

    def _guarded_variables(self):
        """Model variables (not the rounding codes) and optimizer variables."""
        codes = set()
        for _, wrapper in _wrapped_layers(self.model):
            for name in ("rounding_code", "grad_rounding_code"):
                if hasattr(wrapper, name):
                    codes.add(id(_tf_variable(getattr(wrapper, name))))
        result, seen = [], set()
        optimizer = self._optimizer()
        optimizer_variables = list(optimizer.variables) if optimizer is not None else []
        for variable in list(self.model.variables) + optimizer_variables:
            variable = _tf_variable(variable)
            if id(variable) in codes or id(variable) in seen:
                continue
            seen.add(id(variable))
            result.append(variable)
        return result

    def _ensure_snapshot(self):
        optimizer = self._optimizer()
        size = len(optimizer.variables) if optimizer is not None else 0
        if self._snapshot is None or size != self._optimizer_size:
            self._snapshot = _Snapshot(self._guarded_variables())
            self._optimizer_size = size
            return True
        return False

    def on_train_begin(self, logs=None):
        self._attach()
        optimizer = self._optimizer()
        if optimizer is not None and not (getattr(optimizer, "built", False)
                                          or getattr(optimizer, "_built", False)):
            # Create the optimizer's slots now, so that the first snapshot has them.
            optimizer.build(self.model.trainable_variables)
        self._step = 0
        self._since_save = 0
        self._epoch = 0
        self._snapshot = None
        self._ensure_snapshot()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._recorder.request(_FINITE)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step
        self._step += 1
        sums, _, level = self._recorder.results()
        loss = (logs or {}).get("loss")
        loss_finite = loss is None or math.isfinite(_to_float(loss))
        activations_finite = level == _OFF or not np.any(sums[..., _NONFINITE] > 0)
        good = loss_finite and activations_finite
        self._ensure_snapshot()  # optimizer variables created since (rare)
        self._since_save += 1
        save = good and self._since_save >= self.snapshot_every
        weights_finite, saved = self._snapshot.check_and_save(tf.constant(save))
        if bool(saved):
            self._since_save = 0
        if good and bool(weights_finite):
            return
        event = self._diagnose(step, sums if level > _OFF else None, loss_finite)
        self._snapshot.restore()
        self.model.reset_metrics()
        self._act(event)

    def _diagnose(self, step, sums, loss_finite):
        recorder = self._recorder
        names = recorder.names
        order = list(recorder.call_order) or list(range(len(names)))
        event = {"step": step, "epoch": self._epoch, "layer": None}
        if sums is not None:
            nonfinite = sums[..., _NONFINITE] > 0
            for slot in order:
                if nonfinite[slot, _INPUTS]:
                    return {**event, "layer": names[slot], "stage": "inputs", "message":
                            f"layer {names[slot]!r} received non-finite inputs (from the "
                            "data or from a layer tfbf16 does not emulate)"}
                if nonfinite[slot, _OUTPUTS]:
                    return {**event, "layer": names[slot], "stage": "forward", "message":
                            f"layer {names[slot]!r} produced non-finite outputs from "
                            "finite inputs (forward pass)"}
            for slot in reversed(order):
                if nonfinite[slot, _GRADS]:
                    return {**event, "layer": names[slot], "stage": "output_gradient",
                            "message": f"the gradient arriving at layer {names[slot]!r}'s "
                            "outputs was non-finite (from the loss or from a layer after "
                            "it that tfbf16 does not emulate)"}
                if nonfinite[slot, _INPUT_GRADS]:
                    return {**event, "layer": names[slot], "stage": "backward", "message":
                            f"layer {names[slot]!r} produced non-finite input gradients "
                            "from finite output gradients (backward pass)"}
        for slot in order:
            wrapper = recorder.layers[slot][1]
            if any(not np.all(np.isfinite(np.asarray(v.numpy())))
                   for v in wrapper.layer.trainable_weights if tf.as_dtype(v.dtype).is_floating):
                return {**event, "layer": names[slot], "stage": "update", "message":
                        f"the update of layer {names[slot]!r}'s weights was non-finite "
                        "(its weight gradient or the optimizer step)"}
        if loss_finite:
            return {**event, "stage": "optimizer", "message":
                    "a weight outside the emulated layers or the optimizer state became "
                    "non-finite"}
        return {**event, "stage": "loss", "message":
                "the loss was non-finite while every emulated layer's values were finite"}

    def _act(self, event):
        layer = event["layer"]
        wrapper = None
        if layer is not None:
            wrapper = dict(self._recorder.layers)[layer]
        can_switch = (
            self.switch_to_fp32 and wrapper is not None
            and wrapper.current_rounding()[0] != "fp32"
        )
        if can_switch:
            set_rounding(self.model, "fp32", layers=[re.escape(wrapper.layer.name)])
            event["action"] = "fp32"
            text = f"switched {layer!r} to FP32 and continues"
        else:
            event["action"] = "stop"
            text = "stops training"
            self.model.stop_training = True
        self.events.append(event)
        message = (f"NonFiniteGuard: step {event['step']}: {event['message']}; restored the "
                   f"last good weights and {text}.")
        if self.verbose:
            print(message)
        if event["action"] == "stop" and self.raise_error:
            raise NonFiniteError(message, event)

    def on_train_end(self, logs=None):
        self._detach()
