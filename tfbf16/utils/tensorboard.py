"""TensorBoard scalars and histograms, written without the tensorboard package.

`tf.summary.scalar` and `tf.summary.histogram` import the `tensorboard`
package. The core op `tf.summary.write` does not: given the metadata of
TensorBoard's scalar or histogram plugin, it writes the same event records,
and TensorBoard displays them as usual. These functions write through a
`tf.summary.create_file_writer` writer.

Example:

>>> writer = tf.summary.create_file_writer("logs/train")
>>> write_scalars(writer, 100, {"loss": 0.4412, "auc": 0.79})
>>> write_histograms(writer, 100, {"weights": [[-1.0, 0.0, 3.0], [0.0, 1.0, 5.0]]})
"""

import numpy as np
import tensorflow as tf

from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)
_HISTOGRAM_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histograms")
)


def write_scalars(writer, step, values, *, flush=True):
    """Writes `{tag: number}` as TensorBoard scalars at `step`.

    Args:
        writer: a `tf.summary` writer (`tf.summary.create_file_writer`).
        step: the global step (an int) the values belong to.
        values: dict from tag to a number (Python, NumPy or a scalar
            tensor); stored as float32, as `tf.summary.scalar` stores them.
        flush: flush the writer afterwards, so that the events are on disk
            (False lets a caller that writes often flush once, later).

    Example:

    >>> write_scalars(writer, step, {"eval/log_loss": 0.4412})
    """
    with writer.as_default(step=step):
        for tag, value in values.items():
            value = tf.cast(tf.convert_to_tensor(value), tf.float32)
            tf.summary.write(tag, value, metadata=_SCALAR_METADATA)
    if flush:
        writer.flush()


def write_histograms(writer, step, histograms, *, flush=True):
    """Writes `{tag: buckets}` as TensorBoard histograms at `step`.

    Args:
        writer: a `tf.summary` writer (`tf.summary.create_file_writer`).
        step: the global step (an int) the histograms belong to.
        histograms: dict from tag to buckets: an array of shape [k, 3] whose
            rows are (left edge, right edge, count), TensorBoard's own layout
            (e.g. `tfbf16.statistics.histogram_buckets`); k may be 0.
        flush: flush the writer afterwards.

    Raises:
        ValueError: if some buckets are not of shape [k, 3].

    Example:

    >>> write_histograms(writer, step, {"grads_log2": [[-10.0, -9.0, 12.0]]})
    """
    checked = {}
    for tag, buckets in histograms.items():
        buckets = np.asarray(buckets, np.float64)
        if buckets.ndim != 2 or buckets.shape[1] != 3:
            raise ValueError(
                f"The histogram {tag!r} must be an array of shape [k, 3] (left edge, "
                f"right edge, count); got shape {buckets.shape}."
            )
        checked[tag] = buckets
    with writer.as_default(step=step):
        for tag, buckets in checked.items():
            tf.summary.write(tag, tf.constant(buckets, tf.float64), metadata=_HISTOGRAM_METADATA)
    if flush:
        writer.flush()
