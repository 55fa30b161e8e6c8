"""Input-pipeline throughput of the recsys data sources, side by side.

Prints rows/second delivered by `recsys.data.make_datasets` training batches
for

- "synthetic": the generated stream;
- "criteo TSV": a generated Criteo-format file of `--rows` lines (plain text,
  realistic field shapes, a few empty fields) written to a temporary dir;
- "tfrecord": the same rows, prepared with `recsys.prepare`;

measured in interleaved repetitions (median reported) in one run, so that
machine noise hits all sources alike. It also streams `--memory_rows`
synthetic rows and reports the resident memory before and after: the stream
runs in constant memory, so the two should be close.

Usage: python -m benchmarks.recsys_input [--rows N] [--batch_size B] [--repeats R]
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from recsys.data import make_datasets
from recsys.data import tfrecord

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 200_000, "Rows per measured pass (lines of the TSV file).",
                     lower_bound=10_000)
flags.DEFINE_integer("batch_size", 1024, "Rows per batch.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed passes per source.", lower_bound=1)
flags.DEFINE_integer("memory_rows", 2_000_000, "Synthetic rows streamed for the "
                     "memory check (0 to skip).", lower_bound=0)

_EVAL_LINES = 1000


_WRITE_CHUNK = 1 << 18  # rows drawn at a time
_FORMAT_CHUNK = 1 << 15  # rows formatted at a time
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _field_bytes(values, missing, kind):
    """Formats `[N, F]` ints as `[N, F * W]` bytes: per field a tab and its text.

    kind "decimal": optionally negative, no leading zeros; "hex": exactly 8
    lowercase hex digits (values in [0, 2**32)). Missing fields are just the
    tab. Unused positions are 0 bytes, for the caller to drop.
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

    Label (25% ones), 13 log-normal counts (20% empty, I2 sometimes -1) and
    26 hex hashes of Zipf-distributed ids (10% empty), ~240 bytes a line.
    Vectorized: values are drawn `_WRITE_CHUNK` rows at a time and formatted
    as bytes `_FORMAT_CHUNK` rows at a time, so memory stays bounded (~0.4
    GB peak) whatever `rows`; 1 GiB (4.5M lines) took 40 s here, about half
    the time of the former line-by-line writer, which also held every row's
    values in memory at once. Up to `_WRITE_CHUNK` rows it writes the same
    bytes as the former writer.

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


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_pass(dataset):
    """Seconds and rows of one full pass."""
    start = time.perf_counter()
    rows = 0
    for _, label in dataset:
        rows += int(label.shape[0])
    return time.perf_counter() - start, rows


def main(argv):
    del argv
    batches = FLAGS.rows // FLAGS.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, "day_0.tsv")
        start = time.perf_counter()
        write_criteo_tsv(tsv, FLAGS.rows + _EVAL_LINES)
        print(f"wrote {FLAGS.rows + _EVAL_LINES:,} TSV lines "
              f"({os.path.getsize(tsv) / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
        prepared = os.path.join(tmp, "prepared")
        start = time.perf_counter()
        tfrecord.write_prepared(
            make_datasets("criteo", data_path=tsv, batch_size=4096, eval_rows=_EVAL_LINES,
                          drop_remainder=False), prepared, rows_per_shard=100_000)
        print(f"prepared TFRecords in {time.perf_counter() - start:.1f} s")

        datasets = {
            "synthetic": make_datasets("synthetic", batch_size=FLAGS.batch_size,
                                       eval_rows=FLAGS.batch_size).train.take(batches),
            "criteo TSV": make_datasets("criteo", data_path=tsv, batch_size=FLAGS.batch_size,
                                        eval_rows=_EVAL_LINES).train,
            "tfrecord": make_datasets("tfrecord", data_path=prepared,
                                      batch_size=FLAGS.batch_size).train,
        }
        for dataset in datasets.values():  # warm up: trace functions, fill caches
            time_pass(dataset.take(2))
        seconds = {name: [] for name in datasets}
        rows = {}
        for _ in range(FLAGS.repeats):
            for name, dataset in datasets.items():
                elapsed, rows[name] = time_pass(dataset)
                seconds[name].append(elapsed)

        print(f"\nbatch size {FLAGS.batch_size}, {os.cpu_count()} CPUs, "
              f"median of {FLAGS.repeats} passes\n")
        print(f"{'source':<12} {'rows/pass':>10} {'rows/s':>12} {'vs synthetic':>13}")
        base = rows["synthetic"] / statistics.median(seconds["synthetic"])
        for name in datasets:
            rate = rows[name] / statistics.median(seconds[name])
            print(f"{name:<12} {rows[name]:>10,} {rate:>12,.0f} {rate / base:>12.2f}x")

    if FLAGS.memory_rows:
        stream = make_datasets("synthetic", batch_size=FLAGS.batch_size,
                               eval_rows=FLAGS.batch_size).train
        steps = FLAGS.memory_rows // FLAGS.batch_size
        before = None
        for step, _ in enumerate(stream.take(steps)):
            if step == steps // 10:
                before = rss_mb()
        print(f"\nsynthetic stream, {FLAGS.memory_rows:,} rows: resident memory "
              f"{before:.0f} MiB after 10%, {rss_mb():.0f} MiB at the end")


if __name__ == "__main__":
    app.run(main)
