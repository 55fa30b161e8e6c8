"""Fingerprints of input data, to refuse results computed from other data.

A fingerprint is a JSON-ready dict whose "digest" (a SHA-256 hex string)
identifies the content of the input; the other keys say what was hashed.
Two inputs with different digests are different data; compare digests, not
whole dicts (the paths in them are informative only: the same files moved
elsewhere keep their digest).

Files (`files_fingerprint`): per file its path, size and a SHA-256 of

- all of its bytes, for files up to `FULL_HASH_BYTES` (256 MiB): any change
  of content is caught;
- above that, `SAMPLE_BLOCKS` blocks of `SAMPLE_BYTES` (1 MiB): the first,
  the last, and evenly spaced ones between, with their offsets and the file
  size. This reads 64 MiB of a 15 GiB Criteo day file instead of all of it.
  It catches any change of size (truncation, appended or dropped lines), a
  different file, and any change inside a sampled block; it misses a
  same-size change confined to the unsampled bytes (e.g. a few bytes edited
  in place in the middle of a large plain-text file). In a gzip file a
  changed line alters the compressed bytes from there to the end of its
  deflate block (tens of KiB), so an edit there is caught only if that
  stretch reaches a sampled block.

The digest of a list of files covers their order, sizes, hashes and how
they were hashed, not their names or modification times.

Example:

>>> fp = files_fingerprint(["day_0.gz", "day_1.gz"])
>>> sorted(fp), len(fp["digest"])
(['digest', 'files', 'kind'], 64)
"""

import hashlib
import json

import tensorflow as tf

#: Files up to this size are hashed whole.
FULL_HASH_BYTES = 256 << 20
#: Larger files are hashed on this many blocks of this many bytes.
SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 1 << 20
_READ_BYTES = 8 << 20


def digest(value):
    """SHA-256 hex digest of a JSON-ready value (canonical JSON)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_fingerprint(path, full_hash_bytes=FULL_HASH_BYTES):
    """Path, size and content hash of one file (see the module docstring).

    Args:
        path: the file.
        full_hash_bytes: files up to this size are hashed whole, larger ones
            on sampled blocks.

    Returns:
        `{"path": str, "bytes": int, "sha256": hex str, "hashed": "all" or
        "64 blocks of 1048576 bytes"}`.
    """
    size = tf.io.gfile.stat(path).length
    sha = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        if size <= full_hash_bytes:
            while chunk := f.read(_READ_BYTES):
                sha.update(chunk)
            hashed = "all"
        else:
            last = size - SAMPLE_BYTES
            for k in range(SAMPLE_BLOCKS):
                offset = last * k // (SAMPLE_BLOCKS - 1)
                f.seek(offset)
                sha.update(offset.to_bytes(8, "little"))
                sha.update(f.read(SAMPLE_BYTES))
            sha.update(size.to_bytes(8, "little"))
            hashed = f"{SAMPLE_BLOCKS} blocks of {SAMPLE_BYTES} bytes"
    return {"path": str(path), "bytes": size, "sha256": sha.hexdigest(), "hashed": hashed}


def files_fingerprint(paths, full_hash_bytes=FULL_HASH_BYTES):
    """Fingerprint of an ordered list of files.

    Returns:
        `{"kind": "files", "digest": hex str, "files": [file_fingerprint, ...]}`.
    """
    files = [file_fingerprint(p, full_hash_bytes) for p in paths]
    content = [[f["bytes"], f["sha256"], f["hashed"]] for f in files]
    return {"kind": "files", "digest": digest(content), "files": files}
