"""Tests of the synthetic Criteo-like stream."""

import hashlib

import numpy as np
import pytest

from recsys.data import make_datasets
from recsys.data import synthetic


def rows(dataset, max_batches=None):
    """All (or the first `max_batches`) batches of a dataset, concatenated."""
    parts = [(f["dense"].numpy(), f["sparse"].numpy(), l.numpy())
             for f, l in dataset.take(max_batches or -1)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def row_keys(dense, sparse, label):
    return {a.tobytes() + b.tobytes() + c.tobytes() for a, b, c in zip(dense, sparse, label)}


@pytest.fixture(scope="session")  # built once per test worker
def bundle():
    return make_datasets("synthetic", batch_size=1000, seed=7, eval_rows=20_000)


def test_same_seed_same_batches_other_seed_other_batches(bundle):
    again = make_datasets("synthetic", batch_size=1000, seed=7, eval_rows=20_000)
    other = make_datasets("synthetic", batch_size=1000, seed=8, eval_rows=20_000)
    first, second, third = (rows(b.train, 5) for b in (bundle, again, other))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], third[1])
    assert not np.array_equal(first[0], third[0])
    for a, b in zip(rows(bundle.eval), rows(bundle.eval)):  # eval repeats exactly
        np.testing.assert_array_equal(a, b)


def test_rows_do_not_depend_on_batch_size_or_row_limit(bundle):
    small = make_datasets("synthetic", batch_size=96, seed=7, train_rows=9_000)
    limited = rows(small.train)
    assert len(limited[2]) == 9_000 // 96 * 96
    for a, b in zip(limited, rows(bundle.train, 9)):
        np.testing.assert_array_equal(a, b[:len(a)])


def test_train_and_eval_rows_are_disjoint(bundle):
    train, eval_ = rows(bundle.train, 20), rows(bundle.eval)
    assert len(eval_[2]) == 20_000
    eval_keys = row_keys(*eval_)
    assert len(eval_keys) == 20_000  # rows are distinct ...
    assert not row_keys(*train) & eval_keys  # ... and no eval row is a train row


def test_shapes_ranges_and_base_rate(bundle):
    dense, sparse, label = rows(bundle.eval)
    assert dense.dtype == np.float32 and sparse.dtype == np.int64 and label.dtype == np.float32
    assert dense.shape == (20_000, 13) and sparse.shape == (20_000, 26)
    assert np.isfinite(dense).all() and dense.min() == 0.0 and dense.max() > 5.0
    assert 0.05 < (dense == 0).mean() < 0.6  # missing / zero counts are common
    sizes = np.array(bundle.vocab_sizes)
    assert (sparse >= 0).all() and (sparse < sizes).all()
    assert ((sparse == 0).mean(0)[[18, 19, 21]] > 0.3).all()  # often-missing features
    assert set(np.unique(label)) == {0.0, 1.0}
    assert abs(label.mean() - 0.25) < 0.015
    assert "click rate 0.2" in bundle.description


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_vocab_scale_keeps_ids_in_range(scale):
    stream = synthetic.SyntheticCriteo(seed=1, vocab_scale=scale)
    sizes = np.array(stream.vocab_sizes)
    assert sizes.min() >= 2 and (sizes[sizes > 101] > 0).all()
    assert max(stream.vocab_sizes) == round(100 * (10131227 / 100) ** 0.6 * scale) + 1
    features, _ = next(iter(stream.blocks("train", 4096)))
    sparse = features["sparse"].numpy()
    assert (sparse >= 0).all() and (sparse < sizes).all()
    if scale > 1:  # the large features really use their large id range
        assert sparse[:, 2].max() > 100_000


def test_ground_truth_is_learnable_and_near_base_rate():
    for seed in (0, 3):
        metrics = synthetic.SyntheticCriteo(seed).reference_metrics("eval", 32_768)
        assert abs(metrics["click_rate"] - 0.25) < 0.015
        assert metrics["log_loss"] < metrics["entropy"] - 0.1


def test_default_vocab_sizes_are_modest():
    assert sum(synthetic.DEFAULT_VOCAB_SIZES) == 416_248
    assert 4 <= min(synthetic.DEFAULT_VOCAB_SIZES) and max(synthetic.DEFAULT_VOCAB_SIZES) < 200_000


def test_option_errors():
    with pytest.raises(ValueError, match="data must be one of"):
        make_datasets("csv", batch_size=4)
    with pytest.raises(ValueError, match="must be None for data='synthetic'"):
        make_datasets("synthetic", data_path="x", batch_size=4)
    with pytest.raises(ValueError, match="num_buckets only applies"):
        make_datasets("synthetic", batch_size=4, num_buckets=10)
    with pytest.raises(ValueError, match="seed must be"):
        synthetic.SyntheticCriteo(seed=-1)


def test_generator_version_names_the_rows():
    """Rows of seed 0 under the current `GENERATOR_VERSION`. If this fails, the
    generator now makes other rows: increment `synthetic.GENERATOR_VERSION`
    (results on the old rows are then refused) and record the new digest."""
    digests = {1: "98682c6332c39aa1558bd308dc5f2401f7bb879a5fd5eaccbd243f6984cfe154"}
    stream = synthetic.SyntheticCriteo(seed=0)
    sha = hashlib.sha256()
    for split in ("train", "eval"):
        features, label = next(iter(stream.blocks(split, 1024)))
        sha.update(features["sparse"].numpy().astype("<i8").tobytes())
        sha.update(label.numpy().astype("<f4").tobytes())
    assert sha.hexdigest() == digests[synthetic.GENERATOR_VERSION]


def test_report_counts_generated_rows_once(bundle):
    for _ in range(2):
        for _ in bundle.eval:
            pass
    report = bundle.input_report()
    assert {k: report["eval"][k] for k in ("unit", "requested", "read", "rows", "malformed",
                                           "complete")} == {
        "unit": "row", "requested": 20_000, "read": 20_000, "rows": 20_000, "malformed": 0,
        "complete": True}
    assert report["train"]["requested"] is None and not report["train"]["complete"]
