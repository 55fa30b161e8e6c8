"""Tests of `python -m recsys.prepare`: TFRecords give back the source's batches."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from recsys.data import make_datasets
from recsys.data import prepare_tfrecords

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "criteo_kaggle_sample.tsv"


def assert_same_batches(a, b):
    count = 0
    for (fa, la), (fb, lb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa["dense"], fb["dense"])
        np.testing.assert_array_equal(fa["sparse"], fb["sparse"])
        np.testing.assert_array_equal(la, lb)
        count += 1
    return count


def test_synthetic_round_trip(tmp_path):
    options = dict(seed=5, train_rows=10_000, eval_rows=3_000)
    metadata = prepare_tfrecords("synthetic", str(tmp_path), rows_per_shard=4_000, **options)
    assert metadata["rows"] == {"train": 10_000, "eval": 3_000}
    assert metadata["shards"] == {"train": 3, "eval": 1}
    assert json.loads((tmp_path / "metadata.json").read_text()) == metadata

    source = make_datasets("synthetic", batch_size=512, **options)
    prepared = make_datasets("tfrecord", data_path=str(tmp_path), batch_size=512)
    assert prepared.vocab_sizes == source.vocab_sizes
    assert "SyntheticCriteo(seed=5" in prepared.description
    assert assert_same_batches(source.train, prepared.train) == 10_000 // 512
    assert assert_same_batches(source.eval, prepared.eval) == 3_000 // 512

    with pytest.raises(FileExistsError, match="already holds a prepared dataset"):
        prepare_tfrecords("synthetic", str(tmp_path), rows_per_shard=4_000, **options)


def test_criteo_sample_round_trip_with_malformed_lines(tmp_path):
    lines = SAMPLE.read_text().split("\n")
    lines[4] = "1\tnot-a-number" + lines[4][lines[4].index("\t", 2):]
    source_file = tmp_path / "sample.tsv"
    source_file.write_text("\n".join(lines))
    options = dict(data_path=str(source_file), eval_rows=40, num_buckets=1000)
    out = tmp_path / "prepared"
    metadata = prepare_tfrecords("criteo", str(out), rows_per_shard=64, **options)
    assert metadata["rows"] == {"train": 159, "eval": 40}
    assert metadata["shards"] == {"train": 3, "eval": 1}
    assert metadata["bad_lines"]["train"]["count"] == 1
    assert metadata["bad_lines"]["train"]["first"].startswith(
        f"{source_file}:5: I1 is not an integer")
    assert metadata["vocab_sizes"] == [1000] * 26

    source = make_datasets("criteo", batch_size=16, **options)
    prepared = make_datasets("tfrecord", data_path=str(out), batch_size=16)
    assert "malformed lines skipped when prepared: train 1, eval 0" in prepared.description
    assert assert_same_batches(source.train, prepared.train) == 159 // 16
    assert assert_same_batches(source.eval, prepared.eval) == 40 // 16


def run_prepare(*flags):
    return subprocess.run([sys.executable, "-m", "recsys.prepare", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_command_line(tmp_path):
    done = run_prepare("--data=synthetic", "--train_rows=5000", "--eval_rows=1000",
                       "--rows_per_shard=2000", f"--output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eval-00000-of-00001.tfrecord", "metadata.json", "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord"]


_VALIDATION_CASES = [
    (["--data=criteo"], "--data_path is required with --data=criteo"),
    (["--data=synthetic"], "pass --train_rows"),
    (["--data=synthetic", "--train_rows=5", "--strict"], "--strict only to --data=criteo"),
    (["--data=criteo", "--data_path=x", "--num_buckets=5,6"], "one int or 26"),
]
_VALIDATE = """
import json, sys
from absl import flags
from recsys import prepare
for argv in json.loads(sys.argv[1]):
    try:
        prepare.FLAGS(["prepare", "--output_dir=/nonexistent/unused", *argv])
        print("ACCEPTED")
    except flags.IllegalFlagValueError as e:
        print("REFUSED", str(e).replace(chr(10), " "))
    prepare.FLAGS.unparse_flags()
"""


def test_flag_validation(tmp_path):
    # In its own process: the CLI modules define their absl flags at import,
    # as absl apps do, so they are not imported into the test process. (One
    # process for all cases; `test_command_line` runs the real command.)
    done = subprocess.run([sys.executable, "-c", _VALIDATE,
                           json.dumps([argv for argv, _ in _VALIDATION_CASES])],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = done.stdout.strip().splitlines()
    assert len(verdicts) == len(_VALIDATION_CASES)
    for (argv, message), verdict in zip(_VALIDATION_CASES, verdicts):
        assert verdict.startswith("REFUSED") and message in verdict, (argv, verdict)


def test_tfrecord_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="already a prepared TFRecord directory"):
        prepare_tfrecords("tfrecord", str(tmp_path), rows_per_shard=10, data_path="x")
