"""Running an absl program so that routine mistakes end in one line.

A missing file, a malformed data set or a flag that does not fit are not
bugs: the user needs one line that says what is wrong and what to do, not
thirty lines of traceback. `run(main)` is `absl.app.run(main)` with that
behaviour:

- a routine error (`ValueError`, `OSError`, `MemoryError`, TensorFlow's
  `OpError`) prints `<program>: error: <message>` to stderr and exits with
  status 1; the traceback is printed only with `--verbosity=1` or higher;
- Ctrl-C prints one line (saying that the run can be resumed, for programs
  that resume) and exits with status 130.

Flag validation stays absl's: a flag that fails its validator stops the
program before `main` runs, with absl's one-line message.

Example:

>>> if __name__ == "__main__":
...     cli.run(main, resumable=True)
"""

import os
import re
import sys

from absl import app
from absl import logging

#: Exit status of a routine error and of an interruption (128 + SIGINT).
ERROR_STATUS = 1
INTERRUPTED_STATUS = 130


def program_name():
    """The name the user typed: `recsys.study` for `python -m recsys.study`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name
        return name[: -len(".__main__")] if name.endswith(".__main__") else name
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "program"


def _routine_errors():
    errors = (ValueError, OSError, MemoryError)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        errors += (tf.errors.OpError,)
    return errors


# TensorFlow appends graph context to op errors: "\n\t [[{{node ...}}]]" lines
# and "[Op:IteratorGetNext]" suffixes. They say nothing to a user.
_TF_CONTEXT = re.compile(r"\s*\[\[[^\]]*\]\]|\s*\[Op:[^\]]*\]|\s*name: [^\n]*$")


def error_message(error):
    """The user-facing text of an exception: its message without TF's node context."""
    message = getattr(error, "message", None) or str(error)
    message = _TF_CONTEXT.sub("", message).strip()
    # tf.debugging.Assert reports "assertion failed: [text]".
    found = re.search(r"assertion failed: \[(.*)\]", message, re.S)
    if found:
        message = found.group(1).strip()
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return message or type(error).__name__


def _show_traceback():
    return logging.get_verbosity() >= logging.DEBUG


def run(main, *, resumable=False):
    """`absl.app.run(main)`, with one-line errors and a one-line Ctrl-C.

    Args:
        main: the program's `main(argv)`.
        resumable: whether starting the same command again resumes the work
            (said when the program is interrupted).
    """

    def guarded_main(argv):
        name = program_name()
        try:
            return main(argv)
        except KeyboardInterrupt:
            if _show_traceback():
                raise
            hint = (" Run the same command again to resume where it stopped."
                    if resumable else "")
            sys.stdout.flush()
            sys.stderr.write(f"\n{name}: interrupted.{hint}\n")
            sys.stderr.flush()
            os._exit(INTERRUPTED_STATUS)  # noqa: SLF001  (no teardown tracebacks)
        except _routine_errors() as error:
            if _show_traceback():
                raise
            sys.stderr.write(f"{name}: error: {error_message(error)}\n"
                             "(Run with --verbosity=1 to see the traceback.)\n")
            sys.stderr.flush()
            sys.exit(ERROR_STATUS)

    app.run(guarded_main)
