"""Tests of the TFRecord encoding, prepared directories and their integrity checks."""

import hashlib
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from recsys.data import make_datasets
from recsys.data import prepare_tfrecords
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


def test_write_split_shards_and_records_hash(tmp_path):
    stream = synthetic.SyntheticCriteo(seed=2)
    blocks = stream.blocks("train", 5000)
    written = tfrecord.write_split(blocks, str(tmp_path), "train", 2000)
    assert (written["rows"], written["shard_rows"]) == (5000, [2000, 2000, 1000])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]  # no temporary file left
    assert written["shard_bytes"] == [
        (tmp_path / f"train-0000{i}-of-00003.tfrecord").stat().st_size for i in range(3)]
    records = list(tf.data.TFRecordDataset(sorted(str(p) for p in tmp_path.iterdir())))
    sha = hashlib.sha256()
    for record in records:
        sha.update(len(record.numpy()).to_bytes(8, "little") + record.numpy())
    assert written["records_sha256"] == sha.hexdigest() and len(records) == 5000


@pytest.fixture
def prepared(tmp_path):
    """A prepared directory of 5,000 train / 1,000 eval synthetic rows."""
    prepare_tfrecords("synthetic", str(tmp_path), rows_per_shard=2000, seed=2,
                      train_rows=5000, eval_rows=1000)
    return tmp_path


def read_rows(bundle_or_dataset):
    dataset = getattr(bundle_or_dataset, "train", bundle_or_dataset)
    return sum(int(label.shape[0]) for _, label in dataset)


def test_read_back_rows_and_report(prepared):
    source = make_datasets("synthetic", batch_size=512, seed=2, train_rows=5000,
                           eval_rows=1000, drop_remainder=False)
    bundle = make_datasets("tfrecord", data_path=str(prepared), batch_size=512,
                           train_rows=4500, drop_remainder=False)
    read = [f["sparse"].numpy() for f, _ in bundle.train]
    np.testing.assert_array_equal(
        np.concatenate(read), np.concatenate([f["sparse"] for f, _ in source.train])[:4500])
    assert read_rows(bundle.eval) == 1000
    report = bundle.input_report()
    assert (report["train"]["unit"], report["train"]["read"], report["train"]["requested"],
            report["train"]["available"]) == ("record", 4500, 4500, 4500)
    assert report["eval"]["rows"] == 1000 and report["eval"]["complete"]
    # What was read of the source when it was prepared comes along.
    assert report["train"]["prepared_from"]["unit"] == "row"
    assert report["train"]["prepared_from"]["read"] == 5000
    assert report["eval"]["prepared_from"]["malformed"] == 0
    metadata = json.loads((prepared / "metadata.json").read_text())
    assert bundle.fingerprint() == metadata["fingerprint"]
    assert metadata["source_fingerprint"] == source.fingerprint()
    assert metadata["fingerprint"]["source_digest"] == source.fingerprint()["digest"]


def test_damaged_shards_are_errors_naming_them(prepared):
    shard = prepared / "train-00001-of-00003.tfrecord"
    data = shard.read_bytes()
    # Same size, one flipped byte: TensorFlow's record CRC catches it, the
    # record count names the shard.
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(corrupt))
    bundle = make_datasets("tfrecord", data_path=str(prepared), batch_size=512)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"{shard} is corrupt or truncated: only ") + r"\d+ of its 2000 records"):
        read_rows(bundle)
    assert bundle.input_report()["train"]["read"] < 4000
    # Truncated: refused when opened, by size.
    shard.write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match=re.escape(f"{shard} has {len(data) // 3:,} bytes but")
                       + ".*truncated or replaced"):
        make_datasets("tfrecord", data_path=str(prepared), batch_size=512)
    shard.unlink()
    with pytest.raises(ValueError, match="incomplete or mixed"):
        tfrecord.read_metadata(str(prepared))


@pytest.mark.parametrize("change, error, message", [
    (lambda d: (d / "metadata.json").unlink(), FileNotFoundError, "python -m recsys.prepare"),
    (lambda d: (d / "metadata.json").write_text('{"format": "recsys-criteo-tf'),
     ValueError, "metadata.json is not valid JSON"),
    (lambda d: (d / "metadata.json").write_text(
        json.dumps({"format": "recsys-criteo-tfrecord-v1"})),
     ValueError, "prepared by another version of recsys.prepare. Prepare it again"),
])
def test_bad_metadata_is_refused(prepared, change, error, message):
    change(prepared)
    with pytest.raises(error, match=re.escape(message)):
        make_datasets("tfrecord", data_path=str(prepared), batch_size=512)


def test_data_path_that_is_a_file_is_refused(prepared):
    path = prepared / "train-00000-of-00003.tfrecord"
    with pytest.raises(NotADirectoryError, match="is a file, not a directory prepared"):
        make_datasets("tfrecord", data_path=str(path), batch_size=512)
