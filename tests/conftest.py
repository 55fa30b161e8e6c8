"""Test-session set-up shared by every test module.

- `TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is imported so that
  tensorflow-recommenders (which needs `tf.keras` to be Keras 2) can be
  imported; Keras 3 tests use `import keras` directly, which is unaffected.
- The CPU is split into two logical devices so that
  `tf.distribute.MirroredStrategy` has two replicas to reduce across.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
