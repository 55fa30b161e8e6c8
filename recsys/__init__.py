"""A Deep & Cross Network click-prediction pipeline for measuring BF16 effects.

`recsys.data` builds the input batches (synthetic stream, raw Criteo files or
prepared TFRecords); `recsys.prepare` converts a source to TFRecords.

tensorflow-recommenders needs `tf.keras` to be Keras 2, which TensorFlow only
provides when `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is first
imported, so this package sets it (unless the caller already chose) before any
of its modules import TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
