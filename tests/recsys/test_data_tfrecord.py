"""Tests of the TFRecord encoding and of prepared-directory checks."""

import numpy as np
import pytest
import tensorflow as tf

from recsys.data import synthetic
from recsys.data import tfrecord


def test_encoding_is_a_standard_example():
    features, label = next(iter(synthetic.SyntheticCriteo(seed=2).blocks("eval", 64)))
    serialized = tfrecord.encode_examples(features, label).numpy()
    dense, sparse = features["dense"].numpy(), features["sparse"].numpy()
    for i in (0, 17, 63):
        expected = tf.train.Example(features=tf.train.Features(feature={
            "dense": tf.train.Feature(float_list=tf.train.FloatList(value=dense[i])),
            "sparse": tf.train.Feature(int64_list=tf.train.Int64List(value=sparse[i])),
            "label": tf.train.Feature(float_list=tf.train.FloatList(value=[label[i]])),
        }))
        assert tf.train.Example.FromString(serialized[i]) == expected
    decoded, decoded_label = tfrecord.decode_examples(serialized)
    np.testing.assert_array_equal(decoded["dense"], dense)
    np.testing.assert_array_equal(decoded["sparse"], sparse)
    np.testing.assert_array_equal(decoded_label, label)


def test_write_read_and_integrity_checks(tmp_path):
    stream = synthetic.SyntheticCriteo(seed=2)
    blocks = stream.blocks("train", 5000)
    rows, shards = tfrecord.write_split(blocks, str(tmp_path), "train", 2000)
    assert (rows, shards) == (5000, 3)
    rows, shards = tfrecord.write_split(stream.blocks("eval", 10), str(tmp_path), "eval", 2000)
    assert (rows, shards) == (10, 1)
    tfrecord.write_metadata(str(tmp_path), vocab_sizes=stream.vocab_sizes,
                            rows={"train": 5000, "eval": 10},
                            shards={"train": 3, "eval": 1}, source="test")
    assert sorted(p.name for p in tmp_path.glob("train-*")) == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    read = list(tfrecord.read_blocks(str(tmp_path), "train", max_rows=4500))
    assert sum(len(label) for _, label in read) == 4500
    np.testing.assert_array_equal(
        np.concatenate([f["sparse"] for f, _ in read]),
        np.concatenate([f["sparse"] for f, _ in blocks])[:4500])

    (tmp_path / "train-00001-of-00003.tfrecord").unlink()
    with pytest.raises(ValueError, match="incomplete or mixed"):
        tfrecord.read_metadata(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m recsys.prepare"):
        tfrecord.read_metadata(str(tmp_path / "missing"))
