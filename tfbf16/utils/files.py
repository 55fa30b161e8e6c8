"""Atomic file writes, and JSON reading whose errors name the file.

A result file that a crash left half-written is worse than no file: a later
run could read it as a result. Every output of tfbf16's programs is therefore
written to a temporary file in the same directory, flushed to disk and
renamed over the destination, so a reader sees the old file or the new one,
never a part.

Example:

>>> with atomic_write("results.json") as f:
...     json.dump(results, f)
>>> read_json("results.json")["summary"]
"""

import contextlib
import json
import os
import tempfile

#: Prefix of the temporary files `atomic_write` creates (and removes on failure).
TEMPORARY_PREFIX = ".tfbf16-tmp-"


def _umask():
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_local(path):
    return "://" not in str(path)


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Opens a temporary file that replaces `path` when the block ends.

    On an exception inside the block the temporary file is removed and
    `path` is left as it was. Local paths are flushed and fsync'ed before the
    rename; other file systems (`gs://...`) are written through
    `tf.io.gfile` (whose rename is a copy there, but still never exposes a
    partial file under the final name).

    Args:
        path: the destination file.
        mode: "w" (text) or "wb" (binary).
        encoding: the text encoding (text mode only).

    Yields:
        A writable file object.

    Raises:
        ValueError: for a mode other than "w" or "wb".
        IsADirectoryError: if `path` is a directory.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
    path = os.fspath(path)
    if _is_local(path):
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a directory; a file was expected there.")
        directory = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
        try:
            # mkstemp makes the file private (0600); give it the mode that
            # open() would: readable by others as the umask allows.
            os.chmod(temporary, 0o666 & ~_umask())
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        return
    import tensorflow as tf  # only for remote file systems

    temporary = f"{path}{TEMPORARY_PREFIX}{os.getpid()}"
    try:
        with tf.io.gfile.GFile(temporary, mode) as f:
            yield f
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            tf.io.gfile.remove(temporary)
        raise


def write_json(path, value, **dump_kwargs):
    """Writes `value` as JSON to `path`, atomically (see `atomic_write`).

    Args:
        path: the destination file.
        value: a JSON-serializable value.
        **dump_kwargs: passed to `json.dump` (default `indent=1`).
    """
    dump_kwargs.setdefault("indent", 1)
    with atomic_write(path) as f:
        json.dump(value, f, **dump_kwargs)
        f.write("\n")


def remove_temporary_files(directory):
    """Removes what interrupted `atomic_write`s left in `directory`.

    A process killed with SIGKILL cannot clean up; its temporary files are
    hidden (they start with `TEMPORARY_PREFIX`) and are removed here.

    Returns:
        The names removed.
    """
    if not _is_local(directory) or not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(TEMPORARY_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def read_json(path, missing_ok=True):
    """Reads a JSON file; a corrupt file is an error that names it.

    Args:
        path: the file.
        missing_ok: return None for a missing file (else FileNotFoundError).

    Returns:
        The decoded value, or None for a missing file when `missing_ok`.

    Raises:
        ValueError: if the file is empty or not valid JSON, naming the file
            and saying what to do.
    """
    path = os.fspath(path)
    if _is_local(path):
        if not os.path.exists(path):
            if missing_ok:
                return None
            raise FileNotFoundError(f"{path} does not exist.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            if missing_ok:
                return None
            raise FileNotFoundError(f"{path} does not exist.")
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    if not text.strip():
        raise ValueError(
            f"{path} is empty (a write was cut off?). Delete it, or the run "
            "directory that holds it, and run again.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}). Delete it, or the run "
            "directory that holds it, and run again.") from None
