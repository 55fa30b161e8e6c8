"""Tests of `python -m recsys.prepare`: TFRecords give back the source's batches."""

import json
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

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
    # Every eval row is scored: the last eval batch is partial.
    assert assert_same_batches(source.eval, prepared.eval) == -(-3_000 // 512)

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
    source_report = metadata["source_report"]
    assert (source_report["train"]["malformed"], source_report["eval"]["malformed"]) == (1, 0)
    assert (source_report["train"]["read"], source_report["eval"]["read"]) == (160, 40)
    assert source_report["train"]["first_malformed"].startswith(
        f"{source_file}:5: I1 is not an integer")
    assert metadata["vocab_sizes"] == [1000] * 26
    assert metadata["source_fingerprint"]["files"][0]["path"] == str(source_file)

    source = make_datasets("criteo", batch_size=16, **options)
    prepared = make_datasets("tfrecord", data_path=str(out), batch_size=16)
    assert "malformed lines skipped when prepared: train 1, eval 0" in prepared.description
    assert prepared.input_report()["train"]["prepared_from"]["malformed"] == 1
    assert assert_same_batches(source.train, prepared.train) == 159 // 16
    assert assert_same_batches(source.eval, prepared.eval) == -(-40 // 16)


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
    (["--data=synthetic", "--train_rows=5", "--strict"],
     "--strict and --max_malformed_fraction only to --data=criteo"),
    (["--data=synthetic", "--train_rows=5", "--max_malformed_fraction=0.5"],
     "--strict and --max_malformed_fraction only to --data=criteo"),
    (["--data=criteo", "--data_path=x", "--max_malformed_fraction=1.5"],
     "1.5 is not a number in the range [0.0, 1.0]"),
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


def test_leftovers_of_an_unfinished_run_are_removed(tmp_path):
    # What a run killed while writing (or between the renames) leaves behind.
    leftovers = [".tfbf16-tmp-train-00000.tfrecord", "train-00000-of-00002.tfrecord",
                 "eval-00000-of-00001.tfrecord"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not ours")
    metadata = prepare_tfrecords("synthetic", str(tmp_path), rows_per_shard=4_000, seed=1,
                                 train_rows=5_000, eval_rows=1_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eval-00000-of-00001.tfrecord", "metadata.json", "notes.txt",
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert metadata["shard_rows"] == {"train": [4_000, 1_000], "eval": [1_000]}
    prepared = make_datasets("tfrecord", data_path=str(tmp_path), batch_size=1000)
    assert sum(int(label.shape[0]) for _, label in prepared.train) == 5_000


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    lines = SAMPLE.read_text().split("\n")[:-1]
    # Lines 1-100 fine, then malformed ones: train shards are written, then it fails.
    bad = [line if i < 100 else line.rsplit("\t", 1)[0] for i, line in enumerate(lines)]
    source = tmp_path / "bad.tsv"
    source.write_text("\n".join(bad) + "\n")
    out = tmp_path / "out"
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Too many malformed lines in the train split: 50 of the 150"):
        prepare_tfrecords("criteo", str(out), rows_per_shard=10, data_path=str(source),
                          eval_rows=50, num_buckets=100)
    assert list(out.iterdir()) == []
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"Malformed Criteo line {source}:101: expected 40 tab-separated fields, got 39")):
        prepare_tfrecords("criteo", str(out), rows_per_shard=10, data_path=str(source),
                          eval_rows=50, num_buckets=100, strict=True)
    assert list(out.iterdir()) == []


def test_output_dir_is_checked_before_reading(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_tfrecords("synthetic", str(tmp_path / "file"), rows_per_shard=10,
                          train_rows=10, eval_rows=10)
    with pytest.raises(ValueError, match="never ends: pass train_rows"):
        prepare_tfrecords("synthetic", str(tmp_path / "out"), rows_per_shard=10)


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "a_file").write_text("x")
    source = tmp_path / "bad.tsv"
    source.write_text("\n".join(line.rsplit("\t", 1)[0] for line in
                                SAMPLE.read_text().split("\n")[:-1]) + "\n")
    out = f"--output_dir={tmp_path / 'out'}"
    cases = [
        (["--data=criteo", f"--data_path={tmp_path / 'missing.tsv'}", out],
         "matches no file"),
        (["--data=criteo", f"--data_path={tmp_path / 'empty.tsv'}", out],
         f"{tmp_path / 'empty.tsv'} is empty (0 bytes)"),
        (["--data=synthetic", "--train_rows=10", f"--output_dir={tmp_path / 'a_file'}"],
         "is a file; choose a directory"),
        (["--data=criteo", f"--data_path={source}", "--eval_rows=50", out],
         "Every one of the 150 lines read for the train split is malformed"),
    ]
    for flags, message in cases:
        done = run_prepare(*flags)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, done.stderr[-2000:]
        assert lines[-2] == f"recsys.prepare: error: {lines[-2].split(': error: ', 1)[1]}"
        assert message in lines[-2], (flags, lines[-2])
        assert lines[-1] == "(Run with --verbosity=1 to see the traceback.)"
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_interrupted_command_says_so_in_one_line_and_cleans_up(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys.prepare", "--data=synthetic", "--train_rows=20000000",
         "--rows_per_shard=100000", f"--output_dir={tmp_path}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background jobs (pytest too)
        # with SIGINT ignored, which their children inherit: give the
        # program the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".tfbf16-tmp-*")):  # writing has begun
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prepare did not start writing: {process.communicate()[1][-3000:]}")
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "recsys.prepare: interrupted."
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
