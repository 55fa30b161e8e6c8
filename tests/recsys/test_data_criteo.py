"""Tests of the raw Criteo TSV reader, on real Kaggle rows written to disk."""

import gzip
import math
from pathlib import Path
import re

import numpy as np
import pytest
import tensorflow as tf

from recsys.data import criteo
from recsys.data import make_datasets
from recsys.data import textlines

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "criteo_kaggle_sample.tsv"
BUCKETS = [1000] * 13 + [50] * 13  # small, uneven: exercises per-feature buckets


def raw_lines(path=SAMPLE):
    return Path(path).read_text().split("\n")[:-1]


def expected_rows(lines):
    """Parses raw Criteo lines in plain Python, independently of the reader."""
    fields = [line.split("\t") for line in lines]
    label = np.array([float(f[0]) for f in fields], np.float32)
    dense = np.array([[np.float32(math.log1p(max(int(v), 0))) if v else np.float32(0)
                       for v in f[1:14]] for f in fields], np.float32)
    cats = np.array([f[14:] for f in fields])
    hashed = tf.strings.to_hash_bucket_fast(cats, 2**63 - 1).numpy()
    sparse = np.where(cats == "", 0, 1 + hashed % (np.array(BUCKETS) - 1))
    return dense, sparse, label


def collect(dataset):
    """All rows of a dataset of batches, as numpy arrays."""
    parts = [(f["dense"].numpy(), f["sparse"].numpy(), l.numpy()) for f, l in dataset]
    return tuple(np.concatenate(p) for p in zip(*parts))


def criteo_bundle(path, **kwargs):
    kwargs.setdefault("eval_rows", 50)
    kwargs.setdefault("num_buckets", BUCKETS)
    return make_datasets("criteo", data_path=str(path), batch_size=16,
                         drop_remainder=False, **kwargs)


def assert_rows_equal(actual, expected):
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


@pytest.fixture(scope="session")  # built once per test worker
def sample():
    """The sample's bundle and its (train rows, eval rows)."""
    bundle = criteo_bundle(SAMPLE)
    return bundle, collect(bundle.train), collect(bundle.eval)


def test_sample_rows_match_raw_text(sample):
    lines = raw_lines()
    bundle, train, eval_ = sample
    assert len(train[2]) + len(eval_[2]) == 200
    assert len(eval_[2]) == 50
    dense, sparse, label = (np.concatenate(p) for p in zip(train, eval_))
    assert_rows_equal((dense, sparse, label), expected_rows(lines))

    # The reference above covers each preprocessing case; spot-check them.
    first, second = lines[0].split("\t"), lines[1].split("\t")
    assert first[1] == "" and dense[0, 0] == 0.0                   # missing I1
    assert first[2] == "3" and dense[0, 1] == np.float32(math.log1p(3))
    assert first[5] == "17668" and dense[0, 4] == np.float32(math.log1p(17668))
    assert second[2] == "-1" and dense[1, 1] == 0.0                # negative I2
    assert first[14 + 18] == "" and sparse[0, 18] == 0             # missing C19
    assert first[14] == "05db9164" and sparse[0, 0] == 1 + tf.strings.to_hash_bucket_fast(
        "05db9164", 2**63 - 1).numpy() % (BUCKETS[0] - 1)
    assert label[:3].tolist() == [0.0, 0.0, 0.0] and label.sum() == sum(
        line.startswith("1\t") for line in lines)
    assert sparse.min() >= 0 and (sparse < np.array(BUCKETS)).all()
    report = bundle.input_report()
    assert {split: report[split]["malformed"] for split in ("train", "eval")} == {
        "train": 0, "eval": 0}
    assert (report["train"]["read"], report["eval"]["read"]) == (150, 50)
    assert report["eval"]["requested"] == report["eval"]["available"] == 50


def test_train_rows_and_batching(sample):
    full = sample[1]
    bundle = make_datasets("criteo", data_path=str(SAMPLE), batch_size=8, eval_rows=50,
                           train_rows=30, num_buckets=BUCKETS)
    batches = list(bundle.train)
    assert [len(l) for _, l in batches] == [8, 8, 8]  # 30 rows, remainder dropped
    assert_rows_equal(collect(batches), tuple(a[:24] for a in full))
    assert bundle.train.element_spec[0]["dense"].shape.as_list() == [8, 13]


def test_gzip_copy_gives_same_batches(sample, tmp_path):
    packed = tmp_path / "sample.tsv.gz"
    packed.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert textlines.count_lines(str(packed)) == 200
    zipped = criteo_bundle(packed)
    assert_rows_equal(collect(zipped.train), sample[1])
    assert_rows_equal(collect(zipped.eval), sample[2])


def test_glob_over_two_files_sorted_naturally(tmp_path):
    lines = raw_lines()
    # Lexicographic order would put day_2 last; natural order puts day_10 last.
    (tmp_path / "day_2.tsv").write_text("\n".join(lines[:120]) + "\n")
    (tmp_path / "day_10.tsv").write_text("\n".join(lines[120:]))  # no final newline
    assert textlines.resolve_paths(str(tmp_path / "day_*.tsv"))[-1].endswith("day_10.tsv")
    dense, sparse, label = expected_rows(lines)
    for path in (tmp_path / "day_*.tsv", f"{tmp_path / 'day_2.tsv'},{tmp_path / 'day_10.tsv'}"):
        bundle = criteo_bundle(path, eval_rows=None)
        assert_rows_equal(collect(bundle.train), (dense[:120], sparse[:120], label[:120]))
        assert_rows_equal(collect(bundle.eval), (dense[120:], sparse[120:], label[120:]))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        criteo_bundle(tmp_path / "nothing_*.tsv")


def write_broken_copy(tmp_path):
    """The sample with malformed lines; returns (path, {line number: reason})."""
    lines = raw_lines()
    non_numeric = lines[9].split("\t")
    non_numeric[5] = "12x"
    broken = {
        3: ("\t".join(lines[2].split("\t")[:12]), "expected 40 tab-separated fields, got 12"),
        10: ("\t".join(non_numeric), "I5 is not an integer"),
        20: ("", "expected 40 tab-separated fields, got 1"),
        30: ("2" + lines[29][1:], "label is not 0 or 1"),
        190: (lines[189] + "\textra", "expected 40 tab-separated fields, got 41"),
    }
    for number, (text, _) in broken.items():
        lines[number - 1] = text
    path = tmp_path / "broken.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, {n: reason for n, (_, reason) in broken.items()}


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    path, broken = write_broken_copy(tmp_path)
    # 4 of 150 train lines are malformed: above the default 1%, allowed here.
    bundle = criteo_bundle(path, max_malformed_fraction=0.05)
    dense, sparse, label = expected_rows(raw_lines())
    keep = np.array([n not in broken for n in range(1, 201)])
    for _ in range(2):  # a second pass must not count the lines again
        train, eval_ = collect(bundle.train), collect(bundle.eval)
        report = bundle.input_report()
        assert {s: report[s]["malformed"] for s in ("train", "eval")} == {
            "train": 4, "eval": 1}
        assert {s: report[s]["read"] for s in ("train", "eval")} == {
            "train": 150, "eval": 50}
    assert_rows_equal(tuple(np.concatenate(p) for p in zip(train, eval_)),
                      (dense[keep], sparse[keep], label[keep]))
    assert report["train"]["first_malformed"].startswith(f"{path}:3: {broken[3]}")
    assert report["eval"]["first_malformed"].startswith(f"{path}:190: {broken[190]}")
    assert report["train"]["rows"] == 146 and report["train"]["malformed_fraction"] == 4 / 150
    line = bundle.describe_input()
    assert f"train: 150 lines read, 4 malformed skipped (2.67%, first: {path}:3: {broken[3]}" in line
    assert f"eval: 50 lines read, 1 malformed skipped (2.00%, first: {path}:190: {broken[190]}" in line
    # Every reason is detected.
    for number, reason in broken.items():
        line = raw_lines(path)[number - 1]
        assert criteo.describe_malformed(line).numpy().decode().startswith(reason)
        assert not criteo.parse_lines([line], BUCKETS)[2].numpy()[0]


def test_strict_mode_names_file_and_line(tmp_path):
    path, broken = write_broken_copy(tmp_path)
    bundle = criteo_bundle(path, strict=True)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(f"Malformed Criteo line {path}:3: {broken[3]}")
                       + ".*pass strict=False"):
        collect(bundle.train)


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="has 200 lines.*smaller eval_rows"):
        criteo_bundle(SAMPLE, eval_rows=200)
    with pytest.raises(ValueError, match="num_buckets must be one int or 26"):
        criteo_bundle(SAMPLE, num_buckets=[10, 10])
    with pytest.raises(ValueError, match="data_path is required"):
        make_datasets("criteo", batch_size=4)
    with pytest.raises(ValueError, match="vocab_scale only applies"):
        make_datasets("criteo", data_path=str(SAMPLE), batch_size=4, vocab_scale=2.0)
