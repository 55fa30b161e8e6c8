"""Bad input, tried as a new user would: every case ends in a clear one-line
error (or a loud report), and nothing is written or reused that should not be.

One table per program. Each row: the files on disk, the command line, the
expected exit code, a fragment of what the program must say, and what must
not have been written or changed. The rows of a program run in one process
(`_DRIVER`: each row is a real `cli.run(main)` with its own argv, as the
command line would run it), which keeps the table fast. Library calls that
must refuse what they cannot honour are in the last table, in-process.

The Criteo files are generated in the raw format (`benchmarks.criteo_files`),
so the module needs nothing outside the repository.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from benchmarks import criteo_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--batch_size=16", "--eval_rows=40", "--embedding_dim=2",
        "--deep_layers=4", "--num_cross_layers=1", "--train_steps=2", "--eval_every=0",
        "--log_every=1", "--checkpoint_every=2"]

_DRIVER = """
import contextlib, hashlib, io, json, os, sys
from absl import flags
from tfbf16.utils import cli
program, rows_file = sys.argv[1], sys.argv[2]
module = __import__(program, fromlist=["main"])

def digest(path):
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

def run(argv):
    flags.FLAGS.unparse_flags()
    sys.argv = [program] + argv
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            cli.run(module.main)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, err.getvalue(), out.getvalue()

results = []
for row in json.load(open(rows_file)):
    for argv in row["before"]:
        code, err, _ = run(argv)
        assert code == 0, err[-3000:]
    for destination, source in row["replace"].items():
        os.replace(source, destination)
    before = {p: digest(p) for p in row["unchanged"]}
    code, err, out = run(row["args"])
    results.append({"code": code, "stderr": err, "stdout": out, "before": before,
                    "after": {p: digest(p) for p in row["unchanged"]}})
print("RESULTS " + json.dumps(results))
"""


@dataclasses.dataclass
class Row:
    """One bad input of a program.

    Attributes:
        name: what the user does (the test id).
        args: the command line; "{dir}" is the row's own directory.
        files: {relative path: bytes or a function of the directory} to
            write first.
        code: the expected exit code.
        says: a fragment the program must print (stderr for errors, stdout
            for success), "{dir}" replaced.
        absent: paths (relative) that must not exist afterwards.
        unchanged: paths (relative) whose bytes must not change in this run.
        before: command lines run first (to succeed), e.g. a finished run.
        replace: {relative path: relative path of a file in `files`} moved
            over it after the `before` runs (a file changed between runs).
        result: for successful runs, {json path: expected} checks on the
            written result file `result.json` (train) or `results.json`.
    """

    name: str
    args: list
    files: dict = dataclasses.field(default_factory=dict)
    code: int = 1
    says: str = ""
    absent: tuple = ()
    unchanged: tuple = ()
    before: list = dataclasses.field(default_factory=list)
    replace: dict = dataclasses.field(default_factory=dict)
    result: dict = dataclasses.field(default_factory=dict)


def _criteo(rows, seed=0):
    """`rows` generated Criteo lines, as bytes."""
    def make(directory):
        path = os.path.join(directory, f".gen{seed}_{rows}.tsv")
        criteo_files.write_criteo_tsv(path, rows, seed=seed)
        with open(path, "rb") as f:
            data = f.read()
        os.remove(path)
        return data
    return make


def _lines(make, edit):
    """The generated lines with `edit(index, line) -> line` applied."""
    def made(directory):
        lines = make(directory).split(b"\n")[:-1]
        return b"\n".join(edit(i, line) for i, line in enumerate(lines)) + b"\n"
    return made


def _cut(line):
    return line.rsplit(b"\t", 1)[0]  # 39 fields


def _gzip(make, truncate=False):
    def made(directory):
        packed = gzip.compress(make(directory))
        return packed[:len(packed) // 2] if truncate else packed
    return made


def _same_lines_other_content(make):
    """As `make`, with the label of every line flipped: other data, same line count."""
    def flip(i, line):
        return (b"1" if line[:1] == b"0" else b"0") + line[1:]
    return _lines(make, flip)


CRITEO = _criteo(300)
RUN = ["--model_dir={dir}/run"]
CRITEO_ARGS = ["--data=criteo", "--num_buckets=1000", "--data_path={dir}/day_0.tsv"]

TRAIN_ROWS = [
    Row("40 percent of the lines have the wrong field count",
        RUN + CRITEO_ARGS + TINY,
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l) if i % 5 < 2 else l)},
        says=r"recsys.train: error: Too many malformed lines in the (train|eval) split: \d+ of the "
             r"\d+ lines read so far \(4\d\.\d\d%\)", absent=("run/result.json",)),
    Row("a few malformed lines are skipped, counted and reported",
        RUN + CRITEO_ARGS + TINY,
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l) if i == 6 else l)}, code=0,
        says=r"train: 260 lines read, 1 malformed skipped \(0.38%, first: {dir}/day_0.tsv:7: "
             r"expected 40 tab-separated fields, got 39\)",
        result={("input", "train", "malformed"): 1,
                ("input", "train", "first_malformed"):
                    "{dir}/day_0.tsv:7: expected 40 tab-separated fields, got 39"}),
    Row("--strict stops at the first malformed line",
        RUN + CRITEO_ARGS + TINY + ["--strict"],
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l) if i == 6 else l)},
        says=r"recsys.train: error: Malformed Criteo line {dir}/day_0.tsv:7: expected 40",
        absent=("run/result.json",)),
    Row("every line is malformed", RUN + CRITEO_ARGS + TINY,
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l))},
        says=r"error: .*Every one of the \d+ lines read for the train split is malformed",
        absent=("run/result.json",)),
    Row("a glob of gzip files, one cut off mid-download",
        RUN + ["--data=criteo", "--num_buckets=1000", "--data_path={dir}/day_*.gz"] + TINY,
        {"day_0.gz": _gzip(_criteo(300, 1), truncate=True), "day_1.gz": _gzip(CRITEO)},
        says=r"recsys.train: error: {dir}/day_0.gz is truncated", absent=("run/result.json",)),
    Row("the only file is a gzip cut off mid-download",
        RUN + ["--data=criteo", "--num_buckets=1000", "--data_path={dir}/day_0.gz"] + TINY,
        {"day_0.gz": _gzip(CRITEO, truncate=True)},
        says=r"recsys.train: error: {dir}/day_0.gz is truncated", absent=("run",)),
    Row("--eval_rows=500 with --batch_size=256 scores all 500 rows",
        RUN + TINY + ["--vocab_scale=0.01", "--eval_rows=500", "--batch_size=256"], code=0,
        says=r"\(500 eval rows\)", result={("final", "count"): 500}),
    Row("a directory as --data_path reads its files",
        RUN + ["--data=criteo", "--num_buckets=1000", "--data_path={dir}/days"] + TINY,
        {"days/day_0.tsv": _criteo(200, 2), "days/day_1.tsv": CRITEO}, code=0,
        says=r"eval log loss", result={("final", "count"): 40}),
    Row("a UTF-8 byte order mark and a header line", RUN + CRITEO_ARGS + TINY,
        {"day_0.tsv": lambda d: b"\xef\xbb\xbflabel\t" + b"\t".join(
            [b"I%d" % i for i in range(1, 14)] + [b"C%d" % i for i in range(1, 27)])
            + b"\n" + CRITEO(d)}, code=0,
        says=r"1 header line\(s\) skipped",
        result={("input", "train", "header_lines"): 1, ("input", "train", "malformed"): 0}),
    Row("a missing data path", RUN + ["--data=criteo", "--num_buckets=1000", "--data_path={dir}/nope.tsv"] + TINY,
        says=r"recsys.train: error: .*nope.tsv.* matches no file", absent=("run",)),
    Row("an empty data file", RUN + CRITEO_ARGS + TINY, {"day_0.tsv": b""},
        says=r"recsys.train: error: {dir}/day_0.tsv is empty", absent=("run",)),
    Row("--model_dir is a file", ["--model_dir={dir}/taken"] + TINY + ["--vocab_scale=0.01"],
        {"taken": b"x"}, says=r"recsys.train: error: {dir}/taken is a file",
        unchanged=("taken",)),
    Row("a zero-length result.json in --model_dir", RUN + TINY + ["--vocab_scale=0.01"],
        {"empty": b""}, before=[RUN + TINY + ["--vocab_scale=0.01"]],
        replace={"run/result.json": "empty"},
        says=r"recsys.train: error: {dir}/run/result.json is empty",
        unchanged=("run/identity.json", "run/result.json")),
    Row("a rerun with other --eval_rows", RUN + TINY + ["--vocab_scale=0.01", "--eval_rows=32"],
        before=[RUN + TINY + ["--vocab_scale=0.01"]],
        says=r"recsys.train: error: {dir}/run holds a run with other settings or input data "
             r"\(data.eval_rows: 40 -> 32[;)].*--overwrite",
        unchanged=("run/result.json", "run/identity.json")),
    Row("a rerun after the data file was replaced by other data of the same line count",
        RUN + CRITEO_ARGS + TINY,
        {"day_0.tsv": CRITEO, "other.tsv": _same_lines_other_content(CRITEO)},
        before=[RUN + CRITEO_ARGS + TINY], replace={"day_0.tsv": "other.tsv"},
        says=r"recsys.train: error: {dir}/run holds a run with other settings or input data "
             r"\(data.input\.",
        unchanged=("run/result.json",)),
]

STUDY = ["--output_dir={dir}/study", "--seeds=0", "--precisions=fp32"]
STUDY_ROWS = [
    Row("--threshold=-0.001", STUDY + ["--threshold=-0.001"],
        says=r"FATAL Flags parsing error: flag --threshold=-0.001: --threshold must be > 0",
        absent=("study",)),
    Row("--confidence=1.5", STUDY + ["--confidence=1.5"],
        says=r"--confidence must be strictly between 0 and 1", absent=("study",)),
    Row("--output_dir is a file", ["--output_dir={dir}/taken", "--seeds=0",
                                    "--precisions=fp32"] + TINY + ["--vocab_scale=0.01"],
        {"taken": b"x"}, says=r"recsys.study: error: --output_dir={dir}/taken is a file",
        unchanged=("taken",)),
    Row("precisions without the fp32 baseline", STUDY + ["--precisions=rne,trunc"],
        says=r"recsys.study: error: The precisions must include 'fp32'", absent=("study",)),
    Row("a rerun with other --eval_rows", STUDY + TINY + ["--vocab_scale=0.01", "--eval_rows=32"],
        before=[STUDY + TINY + ["--vocab_scale=0.01"]],
        says=r"recsys.study: error: .*holds a run with other settings or input data "
             r"\(data.eval_rows: 40 -> 32[;)]",
        unchanged=("study/results.json", "study/runs/fp32_seed0/result.json")),
    Row("40 percent malformed lines", STUDY + CRITEO_ARGS + TINY,
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l) if i % 5 < 2 else l)},
        says=r"recsys.study: error: Too many malformed lines in the eval split",
        absent=("study/results.json",)),
    Row("a study reports the malformed lines of each split",
        STUDY + CRITEO_ARGS + TINY + ["--max_malformed_fraction=0.05"],
        {"day_0.tsv": _lines(CRITEO, lambda i, l: _cut(l) if i in (3, 280) else l)}, code=0,
        says=r"Input: train: 260 lines read, 1 malformed skipped .*eval: 40 lines read, 1 "
             r"malformed skipped",
        result={("input", "eval", "malformed"): 1, ("input", "train", "malformed"): 1}),
]


def _prepare(rows, directory):
    specs = []
    for index, row in enumerate(rows):
        row_dir = os.path.join(directory, f"row{index}")
        os.makedirs(row_dir)
        for name, content in row.files.items():
            path = os.path.join(row_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content(row_dir) if callable(content) else content)
        fill = lambda args: [a.replace("{dir}", row_dir) for a in args]  # noqa: E731
        specs.append({"args": fill(row.args), "before": [fill(a) for a in row.before],
                      "replace": {os.path.join(row_dir, d): os.path.join(row_dir, s)
                                  for d, s in row.replace.items()},
                      "unchanged": [os.path.join(row_dir, p) for p in row.unchanged]})
    return specs


def _run_table(program, rows, directory):
    specs = _prepare(rows, directory)
    rows_file = os.path.join(directory, "rows.json")
    with open(rows_file, "w") as f:
        json.dump(specs, f)
    done = subprocess.run([sys.executable, "-c", _DRIVER, program, rows_file], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.split("RESULTS ", 1)[1])


@pytest.fixture(scope="session")  # built once per test worker
def train_table(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("train"))
    return directory, _run_table("recsys.train", TRAIN_ROWS, directory)


@pytest.fixture(scope="session")  # built once per test worker
def study_table(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("study"))
    return directory, _run_table("recsys.study", STUDY_ROWS, directory)


def _check(rows, table, index, result_file):
    directory, results = table
    row, got = rows[index], results[index]
    row_dir = os.path.join(directory, f"row{index}")
    text = got["stderr"] if row.code else got["stdout"] + got["stderr"]
    assert got["code"] == row.code, got["stderr"][-3000:]
    assert __import__("re").search(row.says.replace("{dir}", row_dir), text), text[-3000:]
    if row.code:
        assert "Traceback" not in got["stderr"], got["stderr"][-3000:]
    for path in row.absent:
        assert not os.path.exists(os.path.join(row_dir, path)), path
    assert got["after"] == got["before"], "a file that must not change changed"
    if row.result:
        with open(os.path.join(row_dir, result_file)) as f:
            written = json.load(f)
        for keys, expected in row.result.items():
            value = written
            for key in keys:
                value = value[key]
            if isinstance(expected, str):
                expected = expected.replace("{dir}", row_dir)
            assert value == expected, (keys, value)
    leftovers = [n for _, _, names in os.walk(row_dir) for n in names
                 if n.startswith(".tfbf16-tmp-")]
    assert not leftovers  # every output was written atomically


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(TRAIN_ROWS)), ids=[r.name for r in TRAIN_ROWS])
@pytest.mark.xdist_group("bad_inputs_train")  # shares a session fixture: one worker builds it
def test_recsys_train(train_table, index):
    _check(TRAIN_ROWS, train_table, index, "run/result.json")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(STUDY_ROWS)), ids=[r.name for r in STUDY_ROWS])
@pytest.mark.xdist_group("bad_inputs_study")  # shares a session fixture: one worker builds it
def test_recsys_study(study_table, index):
    _check(STUDY_ROWS, study_table, index, "study/results.json")


def _dense_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense_a"),
                             keras.layers.Dense(2, name="dense_b")])


# (what a user calls, the exception, a fragment of its message)
LIBRARY_ROWS = [
    ("round_gradient with an unknown rounding",
     lambda: tfbf16.round_gradient(tf.ones([2]), "bogus"), ValueError, "Unknown rounding 'bogus'"),
    ("round_bf16 with a seed outside int64",
     lambda: tfbf16.round_bf16(tf.ones([2]), "stochastic", seed=2**63), ValueError, "seed"),
    ("a policy whose include pattern matches no layer",
     lambda: tfbf16.wrap(_dense_model(), policy=tfbf16.BF16Policy(include=["nomatch"])),
     ValueError, "nomatch"),
    ("a policy whose layer_roundings key matches no layer",
     lambda: tfbf16.wrap(_dense_model(), policy=tfbf16.BF16Policy(
         layer_roundings={"dense_c": "trunc"})), ValueError, "dense_c"),
    ("summary of something that is not a model",
     lambda: tfbf16.summary(np.ones(3)), TypeError, "model"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in LIBRARY_ROWS],
                         ids=[row[0] for row in LIBRARY_ROWS])
def test_library_refuses_what_it_cannot_honour(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_an_exclude_that_leaves_nothing_emulated_warns():
    with pytest.warns(UserWarning, match="emulat"):
        tfbf16.wrap(_dense_model(), policy=tfbf16.BF16Policy(exclude=[".*"]))
