"""Test-session set-up shared by every test module.

- `TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is imported so that
  tensorflow-recommenders (which needs `tf.keras` to be Keras 2) can be
  imported; Keras 3 tests use `import keras` directly, which is unaffected.
- Each TensorFlow process (test worker or a program a test starts: they
  inherit the environment) runs its kernels on one intra-op thread: the
  suite runs three workers on two cores, and kernels of several threads in
  every process only contend (measured on three test files: 197 s with two
  workers and TensorFlow's default threads, 157 s with three workers and
  one intra-op thread each).
- Tests marked `xdist_group` share an expensive session fixture and must
  run in one worker (pyproject's `--dist=loadgroup`); if pytest-xdist does
  not group them (it silently stops with pytest 9.2: pytest-xdist#1386),
  the run is refused instead of building every such fixture in every worker.
- The CPU is split into two logical devices so that
  `tf.distribute.MirroredStrategy` has two replicas to reduce across.
"""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


def pytest_collection_finish(session):
    if not getattr(session.config.option, "loadgroup", False):
        return  # not a pytest-xdist worker running --dist=loadgroup
    ungrouped = [item.nodeid for item in session.items
                 if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not group {ungrouped[0]} by its xdist_group mark "
            "(pytest 9.2 breaks --dist=loadgroup, pytest-dev/pytest-xdist#1386): "
            "install the test extra's pytest (pip install -e '.[test]')."
        )
