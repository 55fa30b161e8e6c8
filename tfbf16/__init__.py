"""tfbf16: train any Keras model as if it ran in bfloat16, bit-exactly.

Rounding op:
- `round_bf16(x, rounding="rne", *, seed=None)`: round to bfloat16 values.
- `quantize(x, rounding="rne", grad_rounding="rne", *, seed=None)`: the
  emulation op, which also rounds the gradient.
- `ROUNDINGS`: ("rne", "trunc", "stochastic").

Models (Keras 3 and tf_keras):
- `wrap(model, rounding="rne", *, grad_rounding=None, policy=None)` and
  `unwrap(model)`; `BF16Wrapper(layer, ...)` for one layer; `BF16Policy` for
  what is rounded where; `summary(model)`; `set_rounding(model, ...)` to
  switch roundings between steps without retracing.
- `tfbf16.backends`: the registry of what differs between the two Kerases
  (`backends.backend_of(layer_model_or_optimizer)`).
- Recommenders: tensorflow-recommenders' `Cross` (tf_keras) and keras-rs'
  `FeatureCross` and `DotInteraction` (Keras 3, optional) are emulated.
- `bf16_hardware()`: whether `rounding="native"` runs on real bfloat16 units.

Can my model train in BF16?
- `compare(build_model, train, eval, precisions=..., seeds=...)`: the paired
  FP32-vs-BF16 study of any Keras model (`tfbf16.study.compare`), with means,
  paired differences and their intervals, verdicts, Markdown, JSON and plots.
- `tfbf16.study`: the paired-seed study core it shares with recsys.study and
  the paper experiments (statistics, summaries, plots, run directories).

Training with BF16 (submodules):
- `tfbf16.callbacks`: `PrecisionMonitor`, `PrecisionSchedule`,
  `SensitivityProbe`, `NonFiniteGuard` (Keras 3 and tf_keras `fit`).
- `tfbf16.optimizers.BF16Weights(optimizer, update_rounding=...)`: weights
  stored in BF16 after every step ("rne", "trunc", "stochastic", "kahan").
- `tfbf16.statistics`: `tensor_statistics` (what BF16 rounding does to a
  tensor, as sums), `summarize`, `histogram_buckets`.
"""

# The back ends register themselves; everything below dispatches through them.
from tfbf16.backends import keras3 as _keras3_backend  # noqa: F401
from tfbf16.backends import tf_keras as _tf_keras_backend  # noqa: F401
from tfbf16.hardware import BF16Hardware, bf16_hardware
from tfbf16.policy import BF16Policy, LayerRounding
from tfbf16.rounding import ROUNDINGS, quantize, round_bf16, round_gradient
from tfbf16.summary import summary
from tfbf16.wrap import set_rounding, unwrap, wrap
from tfbf16.wrapper_base import BF16Wrapper
from tfbf16 import backends, callbacks, optimizers  # noqa: E402  (after the names they use)
from tfbf16.study.compare import compare  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BF16Hardware", "BF16Policy", "BF16Wrapper", "LayerRounding", "ROUNDINGS",
    "bf16_hardware", "compare", "quantize", "round_bf16", "round_gradient", "set_rounding",
    "summary", "unwrap", "wrap", "backends", "callbacks", "optimizers",
]
