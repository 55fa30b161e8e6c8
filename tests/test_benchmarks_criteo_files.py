"""Tests of `benchmarks.criteo_files` and `benchmarks.input_sources`: generated
Criteo files, read by the real `recsys.data` readers."""

import os

import pytest

from benchmarks import criteo_files
from benchmarks import input_sources
from recsys import config
from recsys.data import make_datasets


def _check_line(line):
    fields = line.split("\t")
    assert len(fields) == 40
    assert fields[0] in ("0", "1")
    for count in fields[1:14]:
        if count:  # empty: missing
            assert str(int(count)) == count  # an integer without leading zeros or "+"
            assert int(count) >= -1
    for category in fields[14:]:
        if category:
            assert len(category) == 8 and int(category, 16) >= 0
            assert category == category.lower()


def test_lines_have_the_criteo_format(tmp_path):
    path = tmp_path / "day_0.tsv"
    rows = 40_000  # more than one formatting chunk (32,768 rows)
    size = criteo_files.write_criteo_tsv(str(path), rows, seed=1)
    data = path.read_bytes()
    assert len(data) == size
    lines = data.decode("ascii").split("\n")
    assert lines[-1] == "" and len(lines) == rows + 1  # every line ends in a newline
    for line in lines[:-1]:
        _check_line(line)
    fields = [line.split("\t") for line in lines[:-1]]
    labels = sum(f[0] == "1" for f in fields) / rows
    empty_counts = sum(v == "" for f in fields for v in f[1:14]) / (13 * rows)
    empty_categories = sum(v == "" for f in fields for v in f[14:]) / (26 * rows)
    assert 0.23 < labels < 0.27
    assert 0.19 < empty_counts < 0.21
    assert 0.09 < empty_categories < 0.11
    assert any(f[2] == "-1" for f in fields)  # I2 is sometimes -1, as in Criteo


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (tmp_path / name for name in ("a.tsv", "b.tsv", "c.tsv"))
    criteo_files.write_criteo_tsv(str(a), 1000, seed=5)
    criteo_files.write_criteo_tsv(str(b), 1000, seed=5)
    criteo_files.write_criteo_tsv(str(c), 1000, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_the_criteo_reader_reads_every_line(tmp_path):
    path = tmp_path / "day_0.tsv"
    criteo_files.write_criteo_tsv(str(path), 5000, seed=2)
    bundle = make_datasets("criteo", data_path=str(path), batch_size=512, eval_rows=1000,
                           drop_remainder=False, strict=True)
    assert input_sources.count_rows(bundle.train) == 4000
    assert input_sources.count_rows(bundle.eval) == 1000
    report = bundle.input_report()
    assert report["train"]["malformed"] == report["eval"]["malformed"] == 0


@pytest.mark.parametrize("mib", [1, 4])
def test_file_of_size(tmp_path, mib):
    path = tmp_path / "day_0.tsv"
    lines, size = criteo_files.write_criteo_tsv_of_size(str(path), mib, seed=3)
    assert os.path.getsize(path) == size
    assert abs(size / 2**20 - mib) < 0.05 * mib
    assert path.read_bytes().count(b"\n") == lines
    assert os.listdir(tmp_path) == ["day_0.tsv"]  # the probe file is gone


def test_file_of_size_keeps_min_lines(tmp_path):
    path = tmp_path / "day_0.tsv"
    lines, _ = criteo_files.write_criteo_tsv_of_size(str(path), 0.01, min_lines=3000)
    assert lines == 3000 == path.read_bytes().count(b"\n")


def test_file_sources_read_the_same_rows(tmp_path):
    data_config = config.DataConfig(batch_size=256, data_seed=4)
    sources = input_sources.file_sources(str(tmp_path), 3000, data_config)
    assert list(sources) == ["criteo TSV", "tfrecord"]
    passes = {name: list(bundle.train) for name, bundle in sources.items()}
    tsv, records = passes["criteo TSV"], passes["tfrecord"]
    assert len(tsv) == len(records) == 3000 // 256  # the last partial batch dropped
    for (tsv_features, tsv_labels), (features, labels) in zip(tsv, records):
        assert (tsv_labels.numpy() == labels.numpy()).all()
        for key in tsv_features:
            assert (tsv_features[key].numpy() == features[key].numpy()).all()
    # The data seed is the file's seed; eval lines are written beyond the rows.
    expected = tmp_path / "expected.tsv"
    criteo_files.write_criteo_tsv(str(expected), 3000 + input_sources.EVAL_LINES, seed=4)
    assert (tmp_path / "day_0.tsv").read_bytes() == expected.read_bytes()
