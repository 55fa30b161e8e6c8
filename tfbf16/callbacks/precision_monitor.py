"""`PrecisionMonitor`: what BF16 rounding does to each layer's values in training."""

import collections

import numpy as np
import tensorflow as tf

from tfbf16 import backends
from tfbf16.callbacks import recorder as recorder_lib
from tfbf16.callbacks.base import start_step
from tfbf16.rounding import rounding_code
from tfbf16.statistics import (
    FIELDS, HISTOGRAM_BINS, histogram_buckets, summarize, tensor_statistics,
)
from tfbf16.utils import tensorboard

_MEASURED_ROUNDINGS = ("rne", "trunc", "stochastic")


class PrecisionMonitor(recorder_lib.ObservingCallback):
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

    Raises:
        ValueError: for an invalid `every_n_steps` or `rounding`; in
            `on_train_begin`, for a model without `tfbf16.BF16Wrapper`.

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
        if rounding not in _MEASURED_ROUNDINGS:
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
        self._step = start_step(self.model, self.optimizer)
        backend = backends.backend_of(self.model)
        self._weights = [
            [backend.tf_variable(v) for v in wrapper.layer.trainable_weights
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
            self._recorder.request(recorder_lib.FULL)
            # The weights this step reads (and rounds), before its update.
            self._pending_weights = [t.numpy() for t in self._weight_statistics()]

    def on_train_batch_end(self, batch, logs=None):
        step = self._step
        self._step += 1
        if step % self.every_n_steps:
            return
        sums, histograms, level = self._recorder.results()
        if level < recorder_lib.FULL:
            return  # the step was not observed (the step function was not instrumented)
        weight_sums, weight_histograms = self._pending_weights
        values, hists = {}, {}
        for slot, name in enumerate(self._recorder.names):
            per_kind = {
                "weights": (weight_sums[slot], weight_histograms[slot]),
                "inputs": (sums[slot, recorder_lib.INPUTS], histograms[slot, recorder_lib.INPUTS]),
                "grads": (sums[slot, recorder_lib.GRADS], histograms[slot, recorder_lib.GRADS]),
            }
            for kind, (kind_sums, kind_histogram) in per_kind.items():
                summary = summarize(kind_sums)
                if summary is None:
                    continue
                for stat, value in summary.items():
                    values[f"bf16/{name}/{kind}_{stat}"] = value
                hists[f"bf16/{name}/{kind}_log2_magnitude"] = histogram_buckets(kind_histogram)
        self.records.append({"step": step, "epoch": self._epoch, **values})
        for key, value in values.items():
            self._epoch_values[key].append(value)
        self._last = values
        if self._writer is not None:
            tensorboard.write_scalars(self._writer, step, values)
            tensorboard.write_histograms(self._writer, step, hists)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._epoch_values:
            for key, values in self._epoch_values.items():
                logs[key] = float(np.mean(values))
        else:
            logs.update(self._last)

    def on_train_end(self, logs=None):
        self._detach()
