"""`NonFiniteGuard`: finds where NaN/Inf started, restores the last good state."""

import math
import re

import numpy as np
import tensorflow as tf

from tfbf16 import backends
from tfbf16.callbacks import recorder as recorder_lib
from tfbf16.callbacks.base import wrapped_layers
from tfbf16.statistics import FIELDS
from tfbf16.wrap import set_rounding

_NONFINITE = FIELDS.index("nonfinite")


class NonFiniteError(RuntimeError):
    """Raised by `NonFiniteGuard(raise_error=True)` when it stops training.

    Attributes:
        event: the guard's event dict (see `NonFiniteGuard`).
    """

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


class NonFiniteGuard(recorder_lib.ObservingCallback):
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

    Raises:
        ValueError: for an invalid `snapshot_every`.
        TypeError: in `on_train_begin`, for an optimizer without `build()`
            (tf_keras' legacy optimizers).
        NonFiniteError: in `on_train_batch_end`, with `raise_error=True`,
            when it stops training.

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
        model_variable = backends.backend_of(self.model).tf_variable
        codes = set()
        for _, wrapper in wrapped_layers(self.model):
            for name in ("rounding_code", "grad_rounding_code"):
                if hasattr(wrapper, name):
                    codes.add(id(model_variable(getattr(wrapper, name))))
        variables = [model_variable(v) for v in self.model.variables]
        optimizer = self._optimizer()
        if optimizer is not None:
            optimizer_variable = backends.backend_of(optimizer).tf_variable
            variables += [optimizer_variable(v) for v in optimizer.variables]
        result, seen = [], set()
        for variable in variables:
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
        if optimizer is not None:
            if not callable(getattr(optimizer, "build", None)):
                raise TypeError(
                    f"NonFiniteGuard saves the optimizer's state before the first step, "
                    f"which needs an optimizer with build(): a Keras 3 or tf_keras "
                    f"optimizer, not {type(optimizer).__module__}.{type(optimizer).__name__} "
                    "(tf_keras.optimizers.legacy optimizers create theirs in the first step)."
                )
            # Create the optimizer's slots now, so that the first snapshot has
            # them. Keras 3 says whether they exist in `built`; tf_keras has no
            # such attribute and calls build() before every update itself
            # (a no-op once built).
            if not getattr(optimizer, "built", False):
                optimizer.build(self.model.trainable_variables)
        self._step = 0
        self._since_save = 0
        self._epoch = 0
        self._snapshot = None
        self._ensure_snapshot()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._recorder.request(recorder_lib.FINITE)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step
        self._step += 1
        sums, _, level = self._recorder.results()
        loss = (logs or {}).get("loss")
        loss_finite = loss is None or math.isfinite(float(np.asarray(loss)))
        activations_finite = level == recorder_lib.OFF or not np.any(sums[..., _NONFINITE] > 0)
        good = loss_finite and activations_finite
        self._ensure_snapshot()  # optimizer variables created since (rare)
        self._since_save += 1
        save = good and self._since_save >= self.snapshot_every
        weights_finite, saved = self._snapshot.check_and_save(tf.constant(save))
        if bool(saved):
            self._since_save = 0
        if good and bool(weights_finite):
            return
        event = self._diagnose(step, sums if level > recorder_lib.OFF else None, loss_finite)
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
                if nonfinite[slot, recorder_lib.INPUTS]:
                    return {**event, "layer": names[slot], "stage": "inputs", "message":
                            f"layer {names[slot]!r} received non-finite inputs (from the "
                            "data or from a layer tfbf16 does not emulate)"}
                if nonfinite[slot, recorder_lib.OUTPUTS]:
                    return {**event, "layer": names[slot], "stage": "forward", "message":
                            f"layer {names[slot]!r} produced non-finite outputs from "
                            "finite inputs (forward pass)"}
            for slot in reversed(order):
                if nonfinite[slot, recorder_lib.GRADS]:
                    return {**event, "layer": names[slot], "stage": "output_gradient",
                            "message": f"the gradient arriving at layer {names[slot]!r}'s "
                            "outputs was non-finite (from the loss or from a layer after "
                            "it that tfbf16 does not emulate)"}
                if nonfinite[slot, recorder_lib.INPUT_GRADS]:
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
