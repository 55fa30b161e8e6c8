"""TensorBoard scalars and histograms, written without the tensorboard package.

`tf.summary.scalar` and `tf.summary.histogram` import the `tensorboard`
package. The core op `tf.summary.write` does not: given the metadata of
TensorBoard's scalar or histogram plugin, it writes the same event records,
and TensorBoard displays them as usual. These functions write through a
`tf.summary.create_file_writer` writer; what they wrote is on disk when
they return (`writer.as_default()` flushes the writer on exit), and
`read_events` reads it back.

Example:

>>> writer = tf.summary.create_file_writer("logs/train")
>>> write_scalars(writer, 100, {"loss": 0.4412, "auc": 0.79})
>>> write_histograms(writer, 100, {"weights": [[-1.0, 0.0, 3.0], [0.0, 1.0, 5.0]]})
"""

import os

import numpy as np
import tensorflow as tf

from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)
_HISTOGRAM_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histograms")
)


def write_scalars(writer, step, values):
    """Writes `{tag: number}` as TensorBoard scalars at `step`.

    Args:
        writer: a `tf.summary` writer (`tf.summary.create_file_writer`).
        step: the global step (an int) the values belong to.
        values: dict from tag to a number (Python, NumPy or a scalar
            tensor); stored as float32, as `tf.summary.scalar` stores them.

    Example:

    >>> write_scalars(writer, step, {"eval/log_loss": 0.4412})
    """
    with writer.as_default(step=step):
        for tag, value in values.items():
            value = tf.cast(tf.convert_to_tensor(value), tf.float32)
            tf.summary.write(tag, value, metadata=_SCALAR_METADATA)


def write_histograms(writer, step, histograms):
    """Writes `{tag: buckets}` as TensorBoard histograms at `step`.

    Args:
        writer: a `tf.summary` writer (`tf.summary.create_file_writer`).
        step: the global step (an int) the histograms belong to.
        histograms: dict from tag to buckets: an array of shape [k, 3] whose
            rows are (left edge, right edge, count), TensorBoard's own layout
            (e.g. `tfbf16.statistics.histogram_buckets`); k may be 0.

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


def read_events(log_dir):
    """What was written to the event files of a log directory, by tag.

    Reads every `events.*` file of `log_dir` (not its subdirectories) in name
    order, e.g. to check what `write_scalars` and `write_histograms` wrote.

    Args:
        log_dir: the directory a `tf.summary.create_file_writer` wrote to.

    Returns:
        `{tag: [(step, plugin_name, value), ...]}` in the order written;
        `value` is a NumPy array (0-d for a scalar, [k, 3] for a histogram),
        `plugin_name` "scalars", "histograms" or "" where the event carries
        no plugin metadata.

    Raises:
        FileNotFoundError: if `log_dir` holds no event file.
        tf.errors.DataLossError: if an event file is corrupt or cut off.

    Example:

    >>> read_events("logs/train")["loss"][-1]
    (100, 'scalars', array(0.4412, dtype=float32))
    """
    paths = sorted(tf.io.gfile.glob(os.path.join(os.fspath(log_dir), "events.*")))
    if not paths:
        raise FileNotFoundError(f"{log_dir} holds no TensorBoard event file (events.*).")
    found = {}
    for path in paths:
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name,
                     tf.make_ndarray(value.tensor))
                )
    return found
