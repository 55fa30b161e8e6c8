"""The tf_keras back end (`TF_KERAS`), registered on import.

Modules: `backend` (the `Backend`), `wrapper` (its `BF16Wrapper`),
`weights` (attribute views through which tf_keras layers read rounded
weights), and `optimizer` (its `BF16Weights`, imported lazily by
`Backend.optimizer_class`).
"""

from tfbf16.backends import registry
from tfbf16.backends.tf_keras import wrapper  # noqa: F401  (sets TF_KERAS.wrapper_class)
from tfbf16.backends.tf_keras.backend import TF_KERAS

registry.register(TF_KERAS)
