"""The Keras 3 back end (`KERAS3`), registered on import.

Modules: `backend` (the `Backend`), `wrapper` (its `BF16Wrapper`), and
`optimizer` (its `BF16Weights`, imported lazily by
`Backend.optimizer_class`).
"""

from tfbf16.backends import registry
from tfbf16.backends.keras3 import wrapper  # noqa: F401  (sets KERAS3.wrapper_class)
from tfbf16.backends.keras3.backend import KERAS3

registry.register(KERAS3)
