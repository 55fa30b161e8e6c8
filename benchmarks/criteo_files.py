"""Generated files in the raw Criteo format, for the input benchmarks.

`write_criteo_tsv(path, rows)` writes random lines shaped like the Criteo
Kaggle / 1TB logs (label, 13 counts, 26 hashed categories, tab-separated,
some fields empty); `write_criteo_tsv_of_size` writes a file of about a given
size. The rows are random, not real clicks: these files measure how fast and
in how much memory the readers of `recsys.data` go, not what a model learns.

Example:

>>> lines, size = write_criteo_tsv_of_size("/tmp/day_0.tsv", mib=20)
>>> bundle = recsys.data.make_datasets("criteo", data_path="/tmp/day_0.tsv",
...                                    batch_size=512, eval_rows=1000)
"""

import os

import numpy as np

_WRITE_CHUNK = 1 << 18  # rows drawn at a time
_FORMAT_CHUNK = 1 << 15  # rows formatted at a time
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_PROBE_LINES = 20_000  # lines written to measure the bytes per line


def _field_bytes(values, missing, kind):
    """Formats `[N, F]` ints as `[N, F * W]` bytes: per field a tab and its text.

    kind "decimal": optionally negative, no leading zeros; "hex": exactly 8
    lowercase hex digits (values in [0, 2**32)). Missing fields are just the
    tab. Unused positions are 0 bytes, for the caller to drop. (Formatting
    with NumPy instead of `str` per value: it is what makes writing a GiB
    take seconds, not minutes.)
    """
    if kind == "hex":
        width = 8
        shifts = np.arange(4 * (width - 1), -1, -4, dtype=np.uint32)
        digits = _HEX_DIGITS[(values.astype(np.uint32)[..., None] >> shifts) & 15]
    else:
        magnitude = np.abs(values)
        width = len(str(int(magnitude.max(initial=0))))
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        digits = (ord("0") + (magnitude[..., None] // powers) % 10).astype(np.uint8)
        digits[(magnitude[..., None] < powers) & (powers > 1)] = 0  # leading zeros
    out = np.zeros(values.shape + (2 + width,), np.uint8)
    out[..., 0] = ord("\t")
    if kind != "hex":
        out[..., 1] = np.where(values < 0, ord("-"), 0)
    out[..., 2:] = digits
    out[missing, 1:] = 0
    return out.reshape(len(values), -1)


def write_criteo_tsv(path, rows, seed=0):
    """Writes `rows` random lines in the raw Criteo format.

    Each line: a label (25% ones), 13 log-normal counts (20% empty; I2 is
    sometimes -1, as in Criteo) and 26 categories as 8-digit hex hashes of
    Zipf-distributed ids (10% empty), about 240 bytes. Values are drawn and
    formatted in chunks, so memory stays bounded (~0.4 GB) whatever `rows`.

    Args:
        path: the file to write (replaced if it exists).
        rows: number of lines.
        seed: seed of the random values; the same seed and `rows` write the
            same bytes.

    Returns:
        The number of bytes written.
    """
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "wb") as f:
        for start in range(0, rows, _WRITE_CHUNK):
            n = min(_WRITE_CHUNK, rows - start)
            labels = rng.random(n) < 0.25
            counts = np.floor(np.exp(rng.normal(1.0, 1.6, (n, 13)))).astype(np.int64)
            counts[:, 1] -= (rng.random(n) < 0.05)  # I2 is sometimes -1 in Criteo
            dense_missing = rng.random((n, 13)) < 0.2
            ids = rng.zipf(1.3, (n, 26)) % (1 << 32)  # Zipf-like value frequencies
            hashes = (ids * 2654435761 + np.arange(26)) % (1 << 32)  # spread to 8 hex digits
            cat_missing = rng.random((n, 26)) < 0.1
            for part in range(0, n, _FORMAT_CHUNK):
                rows_of = slice(part, min(part + _FORMAT_CHUNK, n))
                lines = np.concatenate([
                    (ord("0") + labels[rows_of]).astype(np.uint8)[:, None],
                    _field_bytes(counts[rows_of], dense_missing[rows_of], "decimal"),
                    _field_bytes(hashes[rows_of], cat_missing[rows_of], "hex"),
                    np.full((len(labels[rows_of]), 1), ord("\n"), np.uint8),
                ], axis=1).ravel()
                data = lines[lines != 0].tobytes()
                f.write(data)
                written += len(data)
    return written


def write_criteo_tsv_of_size(path, mib, *, min_lines=1, seed=0):
    """Writes a Criteo-format file of about `mib` MiB (at least `min_lines` lines).

    The bytes per line are measured on a probe file of 20,000 lines, written
    beside `path` and removed.

    Args:
        path: the file to write.
        mib: the size wanted, in MiB (2**20 bytes).
        min_lines: the fewest lines to write, whatever `mib`.
        seed: as in `write_criteo_tsv`.

    Returns:
        `(lines, bytes)` written.
    """
    probe = f"{path}.probe"
    try:
        bytes_per_line = write_criteo_tsv(probe, _PROBE_LINES, seed) / _PROBE_LINES
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    lines = max(int(min_lines), round(mib * 2**20 / bytes_per_line))
    return lines, write_criteo_tsv(path, lines, seed)
