"""tfbf16: train any Keras model as if it ran in bfloat16, bit-exactly.

Public API:
- `round_bf16(x, rounding="rne", *, seed=None)`: round to bfloat16 values.
- `quantize(x, rounding="rne", grad_rounding="rne", *, seed=None)`: the
  emulation op, which also rounds the gradient.
- `ROUNDINGS`: the rounding modes, ("rne", "trunc", "stochastic").
"""

from tfbf16.rounding import ROUNDINGS, quantize, round_bf16, round_gradient

__version__ = "0.1.0"

__all__ = ["ROUNDINGS", "quantize", "round_bf16", "round_gradient"]
