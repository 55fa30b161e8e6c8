"""tfbf16.utils: atomic writes, JSON reading, and one-line program errors."""

import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tfbf16.utils import cli
from tfbf16.utils import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"log_loss": 0.44})
    assert files.read_json(path) == {"log_loss": 0.44}
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as open() would make it
    with pytest.raises(RuntimeError, match="crash"):
        with files.atomic_write(path) as f:
            f.write('{"log_loss": 0.')
            raise RuntimeError("crash in the middle of a write")
    assert files.read_json(path) == {"log_loss": 0.44}  # the old file, whole
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary left
    with files.atomic_write(tmp_path / "plot.png", "wb") as f:
        f.write(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with files.atomic_write(path, "a"):
            pass
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with files.atomic_write(tmp_path):
            pass


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    (tmp_path / (files.TEMPORARY_PREFIX + "abc")).write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    assert files.remove_temporary_files(tmp_path) == [files.TEMPORARY_PREFIX + "abc"]
    assert os.listdir(tmp_path) == ["keep.json"]


def test_read_json_names_a_missing_empty_or_corrupt_file(tmp_path):
    assert files.read_json(tmp_path / "missing.json") is None
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        files.read_json(tmp_path / "missing.json", missing_ok=False)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match="empty.json is empty"):
        files.read_json(tmp_path / "empty.json")
    (tmp_path / "cut.json").write_text('{"a": [1, 2')
    with pytest.raises(ValueError, match="cut.json is not valid JSON"):
        files.read_json(tmp_path / "cut.json")


def test_error_message_drops_tensorflows_graph_context():
    @tf.function
    def check(x):
        tf.debugging.Assert(x > 0, ["Malformed line data.tsv:17: label is not 0 or 1."])
        return x

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        check(tf.constant(-1))
    assert cli.error_message(raised.value) == "Malformed line data.tsv:17: label is not 0 or 1."
    error = FileNotFoundError(2, "No such file or directory", "/data/day_0.gz")
    assert cli.error_message(error) == "[Errno 2] No such file or directory: '/data/day_0.gz'"


_PROGRAM = textwrap.dedent("""
    import sys
    from absl import flags
    from tfbf16.utils import cli

    flags.DEFINE_string("what", "value", "What to raise.")

    def main(argv):
        if flags.FLAGS.what == "value":
            raise ValueError("--data_path=/nope matches no file. Pass an existing file.")
        if flags.FLAGS.what == "interrupt":
            raise KeyboardInterrupt()
        if flags.FLAGS.what == "bug":
            raise ZeroDivisionError("a bug keeps its traceback")
        print("done")

    if __name__ == "__main__":
        cli.run(main, resumable=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("args, code, stderr_has, stderr_lacks", [
    (["--what=value"], 1, "program.py: error: --data_path=/nope matches no file. Pass an "
     "existing file.\n(Run with --verbosity=1 to see the traceback.)", "Traceback"),
    (["--what=value", "--verbosity=1"], 1, "Traceback", None),
    (["--what=interrupt"], 130, "program.py: interrupted. Run the same command again to resume "
     "where it stopped.", "Traceback"),
    (["--what=bug"], 1, "ZeroDivisionError: a bug keeps its traceback", None),
    (["--what=none"], 0, "", "program.py: error"),
])
def test_programs_end_routine_errors_in_one_line(tmp_path, args, code, stderr_has, stderr_lacks):
    script = tmp_path / "program.py"
    script.write_text(_PROGRAM)
    done = subprocess.run([sys.executable, str(script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == code, done.stderr[-2000:]
    assert stderr_has in done.stderr
    if stderr_lacks:
        assert stderr_lacks not in done.stderr
