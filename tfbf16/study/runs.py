"""Run directories that are reused only for the same measurement.

A study is resumable: a run that finished is loaded instead of trained
again. That is only honest when the stored run is the same measurement:
same data (and the same bytes of it), model, training settings, precision
and seed. Each run directory therefore holds `identity.json`, the settings
and input fingerprints that determine its numbers; opening the directory
with other ones is refused with a message that names what differs, unless
the caller asks to overwrite (then the directory is emptied first).

Example:

>>> run_dir = RunDirectory("out/runs/rne_seed0", identity, overwrite=False)
>>> run_dir.open()           # raises RunMismatchError on other settings
>>> result = run_dir.read_json("result.json")
"""

import hashlib
import importlib.metadata
import json
import os
import shutil

from tfbf16.utils import files

IDENTITY = "identity.json"


def source_fingerprint(*packages):
    """SHA-256 of the Python sources of `packages` (modules with `__file__`).

    A run resumed or reused with other code would mix two implementations
    into one result, so the code that computes a run is part of its
    identity.
    """
    digest = hashlib.sha256()
    for package in packages:
        root = os.path.dirname(package.__file__)
        for directory, subdirectories, names in sorted(os.walk(root)):
            subdirectories.sort()
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    digest.update(f"{package.__name__}/{os.path.relpath(path, root)}".encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()


def package_versions(*distributions):
    """{distribution: installed version or None}, e.g. of "tensorflow", "keras"."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunMismatchError(ValueError):
    """A directory holds a run of other settings or other input data."""


def flatten(value, prefix=""):
    """{"a.b[0].c": leaf} of a nested JSON-like value."""
    if isinstance(value, dict):
        items = {}
        for key in value:
            items.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return items or {prefix: {}}
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return {prefix: list(value)}
        items = {}
        for index, item in enumerate(value):
            items.update(flatten(item, f"{prefix}[{index}]"))
        return items or {prefix: []}
    return {prefix: value}


def differences(old, new):
    """[(key, old value, new value)] of the leaves that differ (flattened keys)."""
    a, b = flatten(_plain(old)), flatten(_plain(new))
    missing = object()
    return [(key, a.get(key, missing), b.get(key, missing))
            for key in sorted(set(a) | set(b)) if a.get(key, missing) != b.get(key, missing)]


def _plain(value):
    """JSON round trip: tuples become lists, keys strings, as on disk."""
    return json.loads(json.dumps(value))


def _short(value, limit=80):
    if value is None:
        return "null"
    text = json.dumps(value) if not isinstance(value, str) else value
    if not isinstance(value, (str, int, float, bool, list, dict)):
        text = "(absent)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_differences(found, limit=4):
    """"eval_rows: 262144 -> 500; ..." for the first `limit` differences."""
    shown = []
    for key, old, new in found[:limit]:
        old_text = "(absent)" if not isinstance(old, (str, int, float, bool, list, dict, type(None))) else _short(old)
        new_text = "(absent)" if not isinstance(new, (str, int, float, bool, list, dict, type(None))) else _short(new)
        shown.append(f"{key}: {old_text} -> {new_text}")
    if len(found) > limit:
        shown.append(f"and {len(found) - limit} more")
    return "; ".join(shown)


class RunDirectory:
    """One run's directory, bound to the identity of its measurement.

    Args:
        path: the directory.
        identity: a JSON-ready dict of everything that determines the run's
            numbers (settings, input fingerprints, precision, seed).
        overwrite: empty the directory first instead of refusing another
            identity.
        writer: whether this process writes (False on non-chief workers,
            which only check).
        what_to_do: the end of the refusal message (how to use another
            directory or overwrite with this program's flags).
    """

    def __init__(self, path, identity, *, overwrite=False, writer=True,
                 what_to_do="Use another output directory, or overwrite it to start over."):
        self.path = os.fspath(path)
        self.identity = _plain(identity)
        self.overwrite = bool(overwrite)
        self.writer = bool(writer)
        self.what_to_do = what_to_do

    def file(self, name):
        """The path of a file of the run."""
        return os.path.join(self.path, name)

    def open(self):
        """Checks (or records) the identity; empties the directory to overwrite.

        Raises:
            RunMismatchError: if the directory holds a run of another
                identity, or files but no identity (not overwriting).
            NotADirectoryError: if the path is a file.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"{self.path} is a file; a run directory was expected "
                                     "there. Choose another output directory.")
        if self.overwrite and self.writer and os.path.isdir(self.path):
            shutil.rmtree(self.path)
        if self.writer:
            os.makedirs(self.path, exist_ok=True)
            files.remove_temporary_files(self.path)
        existing = files.read_json(self.file(IDENTITY))
        if existing is None:
            if not self.writer:
                return self  # the writer (another process) records it
            leftovers = [n for n in os.listdir(self.path)
                         if not n.startswith(files.TEMPORARY_PREFIX)]
            if leftovers:
                raise RunMismatchError(
                    f"{self.path} holds files ({', '.join(sorted(leftovers)[:3])}) but no "
                    f"{IDENTITY}, so what they measured is unknown. {self.what_to_do}")
            if self.writer:
                files.write_json(self.file(IDENTITY), self.identity, sort_keys=True)
            return self
        found = differences(existing, self.identity)
        if found:
            raise RunMismatchError(
                f"{self.path} holds a run with other settings or input data "
                f"({describe_differences(found)}). {self.what_to_do}")
        return self

    def read_json(self, name):
        """A JSON file of the run, or None if it is missing (corrupt: ValueError)."""
        return files.read_json(self.file(name))

    def write_json(self, name, value):
        """Writes a JSON file of the run atomically (only in the writer)."""
        if self.writer:
            files.write_json(self.file(name), value, sort_keys=True)
