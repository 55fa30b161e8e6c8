"""tfbf16.utils.tensorboard: the event files the callbacks (and recsys) write."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfbf16.utils import tensorboard


def test_scalars_and_histograms_round_trip(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    tensorboard.write_scalars(writer, 3, {"loss": 0.5, "eval/auc": np.float64(0.75),
                                          "tensor": tf.constant(2.0, tf.float64)})
    buckets = np.array([[-149.0, -126.0, 1.0], [0.0, 1.0, 4.0]])
    tensorboard.write_histograms(writer, 3, {"weights": buckets, "empty": np.zeros((0, 3))})
    tensorboard.write_scalars(writer, 7, {"loss": 0.25})
    events = tensorboard.read_events(tmp_path)  # on disk: the writer is not closed
    assert [(step, float(value)) for step, _, value in events["loss"]] == [(3, 0.5), (7, 0.25)]
    step, plugin, value = events["eval/auc"][0]
    assert (step, plugin, value.dtype, float(value)) == (3, "scalars", np.float32, 0.75)
    assert float(events["tensor"][0][2]) == 2.0
    step, plugin, value = events["weights"][0]
    assert (step, plugin) == (3, "histograms")
    np.testing.assert_array_equal(value, buckets)
    assert events["empty"][0][2].shape == (0, 3)
    assert [plugin for _, plugin, _ in events["loss"]] == ["scalars", "scalars"]


def test_bad_histogram_and_missing_events_are_refused(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"'h' must be an array of shape \[k, 3\]"):
        tensorboard.write_histograms(writer, 0, {"ok": [[0.0, 1.0, 1.0]], "h": [1.0, 2.0]})
    writer.flush()
    # Nothing was written: the histograms are checked before any is written.
    assert tensorboard.read_events(tmp_path / "run") == {}
    with pytest.raises(FileNotFoundError, match="holds no TensorBoard event file"):
        tensorboard.read_events(tmp_path)


def test_a_cut_off_event_file_is_an_error(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    tensorboard.write_scalars(writer, 0, {"loss": 1.0})
    tensorboard.write_scalars(writer, 1, {"loss": 2.0})
    writer.close()
    (path,) = [os.path.join(tmp_path, name) for name in os.listdir(tmp_path)]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(tf.errors.DataLossError):
        tensorboard.read_events(tmp_path)
