"""Sharded training data: the shards' batches together are the global batches."""

from pathlib import Path

import numpy as np
import pytest

from recsys.data import make_datasets
from recsys.data import prepare_tfrecords
from recsys.data import synthetic

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "criteo_kaggle_sample.tsv"


def _rows(dataset):
    return [np.concatenate([f["dense"].numpy(), f["sparse"].numpy().astype(np.float64),
                            label.numpy()[:, None]], axis=1) for f, label in dataset]


def _check_shards_make_global_batches(global_batch, shards, **source):
    whole = make_datasets(batch_size=global_batch, **source)
    assert whole.shard is None and whole.global_batch_size == global_batch
    full = _rows(whole.train)
    parts = []
    for index in range(shards):
        bundle = make_datasets(batch_size=global_batch // shards, num_shards=shards,
                               shard_index=index, **source)
        assert bundle.shard.index == index and bundle.global_batch_size == global_batch
        assert bundle.description == whole.description
        parts.append(_rows(bundle.train))
    assert full and all(len(part) == len(full) for part in parts)
    for k, batch in enumerate(full):
        np.testing.assert_array_equal(np.concatenate([part[k] for part in parts]), batch)
    # Evaluation is not sharded (only batched smaller: compare the rows).
    whole_eval, shard_eval = (np.concatenate(_rows(b.eval)) for b in (whole, bundle))
    rows = min(len(whole_eval), len(shard_eval))
    assert rows >= len(whole_eval) - global_batch
    np.testing.assert_array_equal(whole_eval[:rows], shard_eval[:rows])
    return len(full)


def test_synthetic_shards_of_whole_blocks():
    # 2 shards of 4,096 rows = whole blocks: each generates only its blocks;
    # 5 blocks of rows = 2 global batches (the partial third is dropped).
    rows = 5 * synthetic.BLOCK_ROWS
    assert _check_shards_make_global_batches(
        2 * synthetic.BLOCK_ROWS, 2, data="synthetic", train_rows=rows, eval_rows=9000,
        vocab_scale=0.01) == 2


def test_synthetic_shards_within_blocks():
    assert _check_shards_make_global_batches(
        600, 3, data="synthetic", train_rows=5000, eval_rows=1300, vocab_scale=0.01) == 8


def test_criteo_shards():
    assert _check_shards_make_global_batches(
        32, 2, data="criteo", data_path=str(SAMPLE), eval_rows=40, num_buckets=100) == 5


def test_tfrecord_shards(tmp_path):
    prepare_tfrecords("criteo", str(tmp_path), rows_per_shard=50, data_path=str(SAMPLE),
                      eval_rows=40, num_buckets=100)
    assert _check_shards_make_global_batches(
        24, 3, data="tfrecord", data_path=str(tmp_path)) == 6


@pytest.mark.parametrize("options, message", [
    (dict(num_shards=2, shard_index=2), "shard_index < num_shards"),
    (dict(num_shards=0, shard_index=0), "num_shards >= 1"),
    (dict(num_shards=2, shard_index=0, drop_remainder=False), "drop_remainder must be True"),
    (dict(num_shards=2.0, shard_index=0), "num_shards must be an int"),
])
def test_bad_shards(options, message):
    with pytest.raises(ValueError, match=message):
        make_datasets("synthetic", batch_size=8, train_rows=100, eval_rows=10,
                      vocab_scale=0.01, **options)
