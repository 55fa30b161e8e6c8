"""Damaged and unusual Criteo input, written to disk: every case is an error
naming the file, or a report that says what was skipped. Nothing is lost
without a word."""

import bz2
import gzip
import os
from pathlib import Path
import re

import numpy as np
import pytest
import tensorflow as tf

from recsys.data import make_datasets
from recsys.data import prepare_tfrecords
from recsys.data import textlines

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "criteo_kaggle_sample.tsv"
HEAD10K = REPO.parent / "shared" / "data" / "criteo_kaggle_head10k.tsv"
BUCKETS = 1000


def sample_lines():
    return SAMPLE.read_text().split("\n")[:-1]


def head10k_lines():
    if not HEAD10K.exists():
        pytest.skip(f"{HEAD10K} is absent: it holds the first 10,000 lines of the Criteo "
                    "Kaggle train.txt (`head -n 10000 train.txt`); not in the repository.")
    return HEAD10K.read_text().split("\n")[:-1]


def text(lines):
    return ("\n".join(lines) + "\n").encode()


def cut_short(line):
    """A line with its last field dropped: 39 fields."""
    return line.rsplit("\t", 1)[0]


def gzip_truncated(data):
    packed = gzip.compress(data)
    return packed[:len(packed) // 2]


def gzip_corrupt(data):
    packed = bytearray(gzip.compress(data))
    middle = len(packed) // 2
    packed[middle:middle + 16] = bytes(b ^ 0xFF for b in packed[middle:middle + 16])
    return bytes(packed)


def read_all(dataset):
    return sum(int(label.shape[0]) for _, label in dataset)


def bundle_of(path, **options):
    options.setdefault("eval_rows", 50)
    return make_datasets("criteo", data_path=str(path), batch_size=16,
                         num_buckets=BUCKETS, **options)


# (case, files {name: bytes}, data path (a glob or name in tmp_path), options,
#  (stage, exception, message pattern with {dir} for the directory)).
_SAMPLE = text(sample_lines()) if SAMPLE.exists() else b""
_ERRORS = [
    ("missing path", {}, "nothing_*.tsv", {},
     ("build", FileNotFoundError, r"matches no file")),
    ("empty file", {"day_0.tsv": b""}, "day_0.tsv", {},
     ("build", ValueError, r"{dir}/day_0\.tsv is empty \(0 bytes\)")),
    ("empty file in a glob", {"day_0.tsv": _SAMPLE, "day_1.tsv": b""}, "day_*.tsv", {},
     ("build", ValueError, r"{dir}/day_1\.tsv is empty")),
    ("bzip2 file", {"day_0.tsv.bz2": bz2.compress(_SAMPLE)}, "day_0.tsv.bz2", {},
     ("build", ValueError, r"day_0\.tsv\.bz2 is bzip2-compressed.*gzip")),
    ("empty directory", {"sub/.hidden": _SAMPLE}, "sub", {},
     ("build", FileNotFoundError, r"Directory {dir}/sub holds no regular, non-hidden file")),
    ("truncated gzip alone", {"day_0.tsv.gz": gzip_truncated(_SAMPLE)}, "day_0.tsv.gz", {},
     ("build", ValueError, r"{dir}/day_0\.tsv\.gz is truncated: .*end-of-stream marker")),
    ("corrupt gzip alone", {"day_0.tsv.gz": gzip_corrupt(_SAMPLE)}, "day_0.tsv.gz", {},
     ("build", ValueError, r"{dir}/day_0\.tsv\.gz is corrupt")),
    ("truncated gzip in a glob (train)",
     {"day_0.tsv.gz": gzip_truncated(_SAMPLE), "day_1.tsv.gz": gzip.compress(_SAMPLE)},
     "day_*.tsv.gz", {}, ("train", tf.errors.InvalidArgumentError,
                          r"{dir}/day_0\.tsv\.gz is truncated: .*after its first \d+ lines")),
    ("truncated gzip in a glob (eval)",
     {"day_0.tsv.gz": gzip.compress(_SAMPLE), "day_1.tsv.gz": gzip_truncated(_SAMPLE)},
     "day_*.tsv.gz", {"eval_rows": None},
     ("eval", tf.errors.InvalidArgumentError, r"{dir}/day_1\.tsv\.gz is truncated")),
    ("corrupt gzip in a glob",
     {"day_0.tsv.gz": gzip_corrupt(_SAMPLE), "day_1.tsv.gz": gzip.compress(_SAMPLE)},
     "day_*.tsv.gz", {}, ("train", tf.errors.InvalidArgumentError,
                          r"{dir}/day_0\.tsv\.gz is corrupt")),
    ("every line malformed",
     {"bad.tsv": text(cut_short(line) for line in sample_lines())} if SAMPLE.exists() else {},
     "bad.tsv", {}, ("train", tf.errors.InvalidArgumentError,
                     r"Every one of the 150 lines read for the train split is malformed.*"
                     r"first malformed one: {dir}/bad\.tsv:1: expected 40 tab-separated "
                     r"fields, got 39")),
    ("a few malformed lines, default fraction",  # 3 of 150 train lines: 2% > 1%
     {"few.tsv": text([cut_short(l) if i in (4, 50, 99) else l
                       for i, l in enumerate(sample_lines())]) if SAMPLE.exists() else b""},
     "few.tsv", {}, ("train", tf.errors.InvalidArgumentError,
                     r"Too many malformed lines in the train split: 3 of the 150 lines read "
                     r"so far \(2\.00%\) are malformed, more than max_malformed_fraction=0\.01 "
                     r"allows; the first: {dir}/few\.tsv:5: expected 40.*raise "
                     r"--max_malformed_fraction")),
    ("strict", {"few.tsv": text([cut_short(l) if i == 99 else l
                                 for i, l in enumerate(sample_lines())])
                if SAMPLE.exists() else b""},
     "few.tsv", {"strict": True},
     ("train", tf.errors.InvalidArgumentError,
      r"Malformed Criteo line {dir}/few\.tsv:100: expected 40 tab-separated fields, "
      r"got 39\. Fix or delete the line, or pass strict=False")),
    ("prepared directory read as criteo", "prepared", "prepared", {},
     ("build", ValueError, r"holds a metadata\.json.*data='tfrecord'")),
]


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} (200 real Criteo rows) is absent")
@pytest.mark.parametrize("files, data_path, options, expected",
                         [case[1:] for case in _ERRORS], ids=[case[0] for case in _ERRORS])
def test_damaged_input_is_an_error_naming_the_file(tmp_path, files, data_path, options,
                                                   expected):
    if files == "prepared":
        prepare_tfrecords("criteo", str(tmp_path / "prepared"), rows_per_shard=100,
                          data_path=str(SAMPLE), eval_rows=50, num_buckets=BUCKETS)
    else:
        for name, data in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    stage, exception, pattern = expected
    pattern = pattern.replace("{dir}", re.escape(str(tmp_path)))
    if stage == "build":
        with pytest.raises(exception, match=pattern):
            bundle_of(tmp_path / data_path, **options)
        return
    bundle = bundle_of(tmp_path / data_path, **options)
    with pytest.raises(exception, match=pattern):
        read_all(bundle.train if stage == "train" else bundle.eval)


def test_forty_percent_malformed_stops_within_the_first_chunk(tmp_path):
    lines = head10k_lines()
    broken = [cut_short(line) if i % 5 < 2 else line for i, line in enumerate(lines)]
    path = tmp_path / "forty.tsv"
    path.write_bytes(text(broken))
    bundle = bundle_of(path, eval_rows=1000)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Too many malformed lines in the train split: \d+ of the \d+ "
                             r"lines read so far \(40\.\d\d%\)"):
        read_all(bundle.train)
    report = bundle.input_report()["train"]
    # Stopped after the first chunk of about 4,400 lines, not at the end.
    assert 4096 <= report["read"] < 9000 and not report["complete"]
    assert report["malformed"] == sum(1 for i in range(report["read"]) if i % 5 < 2)
    assert report["first_malformed"].startswith(f"{path}:1: expected 40")


def test_header_and_byte_order_mark_are_reported_not_lost(tmp_path):
    lines = head10k_lines()
    names = "\t".join(["label"] + [f"I{i}" for i in range(1, 14)]
                      + [f"C{i}" for i in range(1, 27)])
    (tmp_path / "plain.tsv").write_bytes(text(lines))
    (tmp_path / "marked.tsv").write_bytes(b"\xef\xbb\xbf" + text([names] + lines))
    plain, marked = (bundle_of(tmp_path / name, eval_rows=1000)
                     for name in ("plain.tsv", "marked.tsv"))
    for a, b in ((plain.train, marked.train), (plain.eval, marked.eval)):
        for (fa, la), (fb, lb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(fa["dense"], fb["dense"])
            np.testing.assert_array_equal(fa["sparse"], fb["sparse"])
            np.testing.assert_array_equal(la, lb)
    report = marked.input_report()["train"]
    assert (report["read"], report["rows"], report["header_lines"], report["malformed"]) == (
        9001, 9000, 1, 0)
    assert "1 header line(s) skipped" in marked.describe_input()
    assert plain.input_report()["train"]["header_lines"] == 0
    # Only a first line whose fields are all names is a header.
    (tmp_path / "not_header.tsv").write_bytes(text(["x1\t2"] + lines[:300]))
    bundle = bundle_of(tmp_path / "not_header.tsv", max_malformed_fraction=0.01)
    read_all(bundle.train)
    report = bundle.input_report()["train"]
    assert (report["malformed"], report["header_lines"]) == (1, 0)


def test_every_requested_eval_row_is_scored(tmp_path):
    bundle = bundle_of(SAMPLE, eval_rows=50)
    assert [int(label.shape[0]) for _, label in bundle.eval] == [16, 16, 16, 2]
    assert [int(label.shape[0]) for _, label in bundle.train] == [16] * 9  # 150: full only
    report = bundle.input_report()["eval"]
    assert (report["unit"], report["requested"], report["available"], report["rows"]) == (
        "line", 50, 50, 50)
    # Several files: the last is eval; it holds fewer lines than asked for.
    lines = sample_lines()
    (tmp_path / "day_0.tsv").write_bytes(text(lines[:150]))
    (tmp_path / "day_1.tsv").write_bytes(text(lines[150:]))
    bundle = bundle_of(tmp_path / "day_*.tsv", eval_rows=80)
    assert read_all(bundle.eval) == 50
    report = bundle.input_report()["eval"]
    assert (report["requested"], report["available"], report["read"], report["complete"]) == (
        80, 50, 50, True)
    assert "only 50 of the 80 requested exist" in bundle.describe_input()


def test_directory_is_its_files_in_natural_order(tmp_path):
    lines = sample_lines()
    data = tmp_path / "criteo"
    (data / "sub").mkdir(parents=True)
    (data / "day_2.tsv").write_bytes(text(lines[:120]))
    (data / "day_10.tsv").write_bytes(text(lines[120:]))
    (data / ".day_1.tsv.part").write_bytes(b"garbage\n")
    (data / "sub" / "day_0.tsv").write_bytes(b"garbage\n")
    assert textlines.resolve_paths(str(data)) == [str(data / "day_2.tsv"),
                                                  str(data / "day_10.tsv")]
    by_dir = bundle_of(data, eval_rows=None)
    by_glob = bundle_of(data / "day_*.tsv", eval_rows=None)
    for a, b in ((by_dir.train, by_glob.train), (by_dir.eval, by_glob.eval)):
        for (fa, la), (fb, lb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(fa["sparse"], fb["sparse"])
            np.testing.assert_array_equal(la, lb)
    assert by_dir.input_report()["eval"]["rows"] == 80


def test_gzip_variants_give_the_same_rows(tmp_path):
    """Multi-member gzip and CRLF line ends read as the plain file does."""
    lines = sample_lines()
    data = text(lines)
    (tmp_path / "multi.gz").write_bytes(gzip.compress(text(lines[:77]))
                                        + gzip.compress(text(lines[77:])))
    (tmp_path / "crlf.gz").write_bytes(gzip.compress(data.replace(b"\n", b"\r\n")))
    (tmp_path / "no_final_newline.tsv").write_bytes(data[:-1])
    reference = bundle_of(SAMPLE)
    expected = [(f["sparse"].numpy(), l.numpy()) for f, l in reference.train]
    for name in ("multi.gz", "crlf.gz", "no_final_newline.tsv"):
        assert textlines.count_lines(str(tmp_path / name)) == 200
        bundle = bundle_of(tmp_path / name)
        got = [(f["sparse"].numpy(), l.numpy()) for f, l in bundle.train]
        assert len(got) == len(expected)
        for (sa, la), (sb, lb) in zip(got, expected):
            np.testing.assert_array_equal(sa, sb)
            np.testing.assert_array_equal(la, lb)
        assert bundle.input_report()["train"]["malformed"] == 0


def test_truncated_file_among_many_is_not_a_shorter_data_set(tmp_path):
    """The lines before the cut come through, then the error: never a quiet end."""
    lines = head10k_lines()
    (tmp_path / "day_0.gz").write_bytes(gzip.compress(text(lines[:6000])))
    (tmp_path / "day_1.gz").write_bytes(gzip_truncated(text(lines[6000:9000])))
    (tmp_path / "day_2.gz").write_bytes(gzip.compress(text(lines[9000:])))
    bundle = bundle_of(tmp_path / "day_*.gz", eval_rows=None)
    rows = 0
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"{tmp_path}/day_1.gz is truncated")):
        for _, label in bundle.train:
            rows += int(label.shape[0])
    assert 6000 // 16 * 16 <= rows < 9000
    assert read_all(bundle.eval) == 1000  # the eval file is intact


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a file whatever its permissions")
def test_unreadable_file_is_refused_up_front(tmp_path):
    path = tmp_path / "day_0.tsv"
    path.write_bytes(_SAMPLE)
    path.chmod(0)
    with pytest.raises(PermissionError, match=re.escape(f"{path} cannot be read: permission")):
        bundle_of(path)


def test_criteo_pipelines_run_python_code():
    assert not bundle_of(SAMPLE).remote_readable
    assert make_datasets("synthetic", batch_size=8, eval_rows=8).remote_readable


def test_endless_line_is_not_read_into_memory(tmp_path):
    path = tmp_path / "binary.dat"
    path.write_bytes(b"\0" * 10_000)
    with pytest.raises(ValueError, match="a line longer than 4,096 bytes: is it a text file"):
        list(textlines.newline_blocks(str(path), block_bytes=1024, max_line_bytes=4096))
