"""The recorder: statistics of every wrapped layer's call in a training step.

`PrecisionMonitor` and `NonFiniteGuard` need to see the values inside a
training step: each emulated layer's inputs and outputs, and the gradients
arriving at its outputs and leaving through its inputs. One `Recorder` per
model provides them. It is installed as each `tfbf16.BF16Wrapper`'s
`_tfbf16_observer`; while an instrumented step function is being traced it
puts a small observer around every wrapper call, which accumulates
`tfbf16.statistics.tensor_statistics` of those values into variables behind
a `tf.cond` on a level variable, so steps that are not measured pay almost
nothing.

Under `fit` the callbacks instrument the model's training function
themselves (one retrace per `fit` call) and put the previous one back when
training ends; a custom training loop wraps its step function with
`instrument`.
"""

import numpy as np
import tensorflow as tf

from tfbf16.callbacks.base import Callback, wrapped_layers
from tfbf16.rounding import ROUNDING_CODES
from tfbf16.statistics import FIELDS, HISTOGRAM_BINS, tensor_statistics

#: Levels of observation of a step: nothing; the non-finite counts only;
#: every statistic of the inputs and gradients.
OFF, FINITE, FULL = 0, 1, 2
#: What is observed per layer: the float inputs and outputs of its call, the
#: gradient arriving at its outputs and the gradient leaving through its inputs.
ROLES = ("inputs", "outputs", "grads", "input_grads")
INPUTS, OUTPUTS, GRADS, INPUT_GRADS = range(len(ROLES))
_FULL_ROLES = (INPUTS, GRADS)  # the others only need finiteness
_RECORDER_ATTRIBUTE = "_tfbf16_recorder"


class Recorder:
    """Statistics of every `BF16Wrapper` call of one model's training step.

    Installed as each wrapper's `_tfbf16_observer`; it only adds ops while
    an instrumented step function is being traced (`self.tracing`). The ops
    accumulate into `self.sums` ([layers, roles, fields]) and
    `self.histograms` ([layers, roles, bins]) when `self.level` (a variable
    set before each step) asks for it. Get the recorder of a model with
    `Recorder.for_model(model)`.

    Attributes:
        layers: `[(name, wrapper)]` of the model (see
            `tfbf16.callbacks.base.wrapped_layers`); slot i of the sums is
            `layers[i]`.
        names: the layer names, by slot.
        call_order: slots in the order of their first traced call.
        rounding_code: int32 variable: the rounding the statistics measure.
    """

    def __init__(self, model):
        self.model = model
        self.layers = wrapped_layers(model)
        self.names = [name for name, _ in self.layers]
        self.slots = {id(wrapper): slot for slot, (_, wrapper) in enumerate(self.layers)}
        shape = (max(len(self.layers), 1), len(ROLES))
        with tf.init_scope():
            self.level = tf.Variable(OFF, dtype=tf.int32, trainable=False, name="tfbf16_level")
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
        self.call_order = []
        self.calls = 0  # completed calls of the instrumented step function
        self.subscribers = []
        self._requested = {}  # call number -> requested level
        self._assigned_level = OFF
        self._dirty = False
        self._last_level = OFF
        self._results = None
        self._fit_previous = None
        self._fit_function = None
        for _, wrapper in self.layers:
            object.__setattr__(wrapper, "_tfbf16_observer", self.observe)

    @classmethod
    def for_model(cls, model):
        """The model's recorder, created (and installed) on first use."""
        recorder = vars(model).get(_RECORDER_ATTRIBUTE)
        if recorder is None:
            recorder = cls(model)
            object.__setattr__(model, _RECORDER_ATTRIBUTE, recorder)
        return recorder

    # ------------------------------------------------------------ tracing
    @tf.autograph.experimental.do_not_convert
    def observe(self, wrapper, call, inputs, args, kwargs):
        """The wrapper's observer: `call(inputs, args, kwargs)`, observed."""
        slot = self.slots.get(id(wrapper))
        if not self.tracing or slot is None:
            return call(inputs, args, kwargs)
        if slot not in self.call_order:
            self.call_order.append(slot)

        def watch_input(value):
            if not _is_float_tensor(value):
                return value
            self._record(slot, INPUTS, value)
            return self._watch_gradient(slot, INPUT_GRADS, value)

        def watch_output(value):
            if not _is_float_tensor(value):
                return value
            self._record(slot, OUTPUTS, value)
            return self._watch_gradient(slot, GRADS, value)

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
            level >= (FULL if full_role else FINITE),
            lambda: add(full_role),
            lambda: tf.cond(
                level >= FINITE, lambda: add(False), lambda: tf.constant(False)
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
            level = self._requested.pop(self.calls, OFF)
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
                self._dirty = level > OFF
                self._last_level = level

        instrumented.tfbf16_instrumented = True
        return instrumented

    def request(self, level):
        """Asks for at least `level` in the next call of the step function."""
        self._requested[self.calls] = max(self._requested.get(self.calls, OFF), level)

    def results(self):
        """(sums, histograms or None, level) of the last step (cached)."""
        if self._results is None:
            level = self._last_level
            sums = self.sums.numpy() if level > OFF else np.zeros(self.sums.shape)
            histograms = self.histograms.numpy() if level >= FULL else None
            self._results = (sums, histograms, level)
        return self._results

    # --------------------------------------------------------- fit support
    def subscribe(self, callback):
        """Lets `callback` use the recorder; instruments `fit`'s training function."""
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
        """Ends `callback`'s use; the last one puts `fit`'s training function back."""
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
    recorder = Recorder.for_model(model)
    recorder.external = True
    return recorder.instrument(step_function)


class ObservingCallback(Callback):
    """A callback that observes the training step through the model's `Recorder`.

    `_attach()` (in `on_train_begin`) subscribes it and returns the
    recorder; `_detach()` (in `on_train_end`) unsubscribes it.
    """

    _recorder = None

    def _attach(self):
        self._recorder = Recorder.for_model(self.model)
        if self._recorder.layers:  # nothing to observe in a model without wrappers
            self._recorder.subscribe(self)
        return self._recorder

    def _detach(self):
        if self._recorder is not None:
            self._recorder.unsubscribe(self)
            self._recorder = None
