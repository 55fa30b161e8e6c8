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
both `keras.callbacks.Callback` and `tf_keras.callbacks.Callback` (see
`tfbf16.callbacks.base`), so either Keras' `fit` accepts it. Custom training
loops call the hooks themselves (see `instrument` for the activation and
gradient statistics).

How activations and gradients are observed: while a monitoring callback is
active, the model's training function is retraced once with a small
observer around every `tfbf16.BF16Wrapper` call; it accumulates statistics
of the layer's inputs and outputs (forward) and of the gradients arriving at
its outputs and leaving through its inputs (backward) into variables, behind
a `tf.cond` on a level variable, so steps that are not measured pay almost
nothing (`tfbf16.callbacks.recorder`). When training ends the previous
training function is put back.

The statistics of one tensor (`tensor_statistics`, `FIELDS`,
`HISTOGRAM_BINS`) live in `tfbf16.statistics` and are re-exported here;
TensorBoard events are written by `tfbf16.utils.tensorboard`.

Modules: `base` (the callback base class for both Kerases), `recorder`,
`precision_monitor`, `precision_schedule`, `sensitivity_probe`,
`non_finite_guard`.
"""

from tfbf16.callbacks.non_finite_guard import NonFiniteError, NonFiniteGuard
from tfbf16.callbacks.precision_monitor import PrecisionMonitor
from tfbf16.callbacks.precision_schedule import PrecisionSchedule
from tfbf16.callbacks.recorder import instrument
from tfbf16.callbacks.sensitivity_probe import SensitivityProbe
from tfbf16.statistics import FIELDS, HISTOGRAM_BINS, tensor_statistics

__all__ = [
    "FIELDS", "HISTOGRAM_BINS", "NonFiniteError", "NonFiniteGuard", "PrecisionMonitor",
    "PrecisionSchedule", "SensitivityProbe", "instrument", "tensor_statistics",
]
