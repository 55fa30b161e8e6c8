"""Fingerprints of input data: they change when the data does, and only then."""

from pathlib import Path

import pytest

from recsys.data import fingerprint
from recsys.data import make_datasets
from recsys.data import prepare_tfrecords

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "criteo_kaggle_sample.tsv"


def write_days(directory, lines):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "day_0.tsv").write_text("\n".join(lines[:150]) + "\n")
    (directory / "day_1.tsv").write_text("\n".join(lines[150:]) + "\n")
    return directory


def criteo_digest(path):
    return make_datasets("criteo", data_path=str(path), batch_size=16,
                         num_buckets=100).fingerprint()["digest"]


def test_criteo_files_fingerprint(tmp_path):
    lines = SAMPLE.read_text().split("\n")[:-1]
    original = write_days(tmp_path / "a", lines)
    digest = criteo_digest(original / "day_*.tsv")
    # Nothing changed (another bundle, the same files moved elsewhere): same digest.
    assert criteo_digest(original) == digest
    moved = write_days(tmp_path / "b", lines)
    assert criteo_digest(moved / "day_*.tsv") == digest
    fp = make_datasets("criteo", data_path=str(moved), batch_size=16,
                       num_buckets=100).fingerprint()
    assert [f["path"] for f in fp["files"]] == [str(moved / "day_0.tsv"),
                                                str(moved / "day_1.tsv")]
    assert [f["hashed"] for f in fp["files"]] == ["all", "all"]
    assert fp["files"][0]["bytes"] == (moved / "day_0.tsv").stat().st_size
    # One line of one file changed, same line count (and same size): another digest.
    changed = list(lines)
    changed[170] = ("1" if lines[170][0] == "0" else "0") + lines[170][1:]  # its label
    write_days(tmp_path / "c", changed)
    assert (tmp_path / "c" / "day_1.tsv").stat().st_size == (moved / "day_1.tsv").stat().st_size
    assert criteo_digest(tmp_path / "c" / "day_*.tsv") != digest
    # The same files in another order are other data.
    assert criteo_digest(f"{moved / 'day_1.tsv'},{moved / 'day_0.tsv'}") != digest


def test_large_files_are_sampled(tmp_path):
    """Above the full-hash size, blocks are sampled: a size change or an edit in
    a sampled block is caught; a same-size edit between samples is not."""
    size = 70 * fingerprint.SAMPLE_BYTES  # 64 samples of 1 MiB, ~97 KiB apart
    path = tmp_path / "big.tsv"
    path.write_bytes(b"x" * size)
    large = size - 1  # a full-hash limit that makes this file "large"
    base = fingerprint.file_fingerprint(str(path), full_hash_bytes=large)
    assert base["hashed"] == "64 blocks of 1048576 bytes" and base["bytes"] == size
    assert fingerprint.file_fingerprint(str(path), full_hash_bytes=large) == base
    whole = fingerprint.file_fingerprint(str(path))
    assert whole["hashed"] == "all" and whole["sha256"] != base["sha256"]

    def sha_with_byte_changed(offset):
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"y")
        sha = fingerprint.file_fingerprint(str(path), full_hash_bytes=large)["sha256"]
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"x")
        return sha

    spacing = (size - fingerprint.SAMPLE_BYTES) // (fingerprint.SAMPLE_BLOCKS - 1)
    assert sha_with_byte_changed(0) != base["sha256"]                   # first block
    assert sha_with_byte_changed(size - 1) != base["sha256"]            # last block
    assert sha_with_byte_changed(spacing + 10) != base["sha256"]        # a sampled block
    gap = spacing + fingerprint.SAMPLE_BYTES + 10                       # between samples
    assert sha_with_byte_changed(gap) == base["sha256"]                 # missed, as documented
    with open(path, "r+b") as f:
        f.seek(gap)
        f.write(b"y")
    assert fingerprint.file_fingerprint(str(path))["sha256"] != whole["sha256"]  # seen whole
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    assert fingerprint.file_fingerprint(str(path), full_hash_bytes=large)["sha256"] != (
        base["sha256"])


def test_synthetic_fingerprint():
    def fp(**options):
        return make_datasets("synthetic", batch_size=64, eval_rows=64, **options).fingerprint()

    base = fp(seed=3)
    assert base["generator_version"] >= 1 and base["seed"] == 3
    assert fp(seed=3)["digest"] == base["digest"]
    assert fp(seed=4)["digest"] != base["digest"]
    assert fp(seed=3, vocab_scale=0.5)["digest"] != base["digest"]


def test_prepared_fingerprint_follows_the_records_and_the_source(tmp_path):
    def prepare(name, **options):
        options = {"seed": 1, "train_rows": 3000, "eval_rows": 500, **options}
        metadata = prepare_tfrecords("synthetic", str(tmp_path / name), rows_per_shard=2000,
                                     **options)
        bundle = make_datasets("tfrecord", data_path=str(tmp_path / name), batch_size=64)
        assert bundle.fingerprint() == metadata["fingerprint"]
        return metadata["fingerprint"]

    base = prepare("a")
    assert prepare("b")["digest"] == base["digest"]  # the same records
    assert prepare("c", train_rows=2999)["digest"] != base["digest"]
    other = prepare("d", seed=2)
    assert other["digest"] != base["digest"] and other["source_digest"] != base["source_digest"]
