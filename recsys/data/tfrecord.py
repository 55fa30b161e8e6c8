"""Prepared TFRecord shards of any recsys source, and their metadata.

A prepared directory holds

- `train-00000-of-000NN.tfrecord` ... and `eval-00000-of-000MM.tfrecord` ...:
  one `tf.train.Example` per row with features "dense" (13 floats),
  "sparse" (26 int64 ids) and "label" (1 float), rows in source order;
- `metadata.json` (written last, atomically): vocab sizes; per split the
  rows, and each shard's rows and bytes; a SHA-256 of each split's records
  as written; the source's description, input report (lines read,
  malformed, first malformed line: `recsys.data.accounting`) and
  fingerprint; and the directory's own fingerprint.

Rows are stored already preprocessed, so reading them back gives exactly the
batches of the source they were written from. Examples are serialized in the
graph with `tf.io.encode_proto` (byte-identical to `Example.SerializeToString`
and several times faster than building protos in Python).

Integrity. Opening a directory checks each shard's size against
`metadata.json` (a truncated or replaced shard is an error naming it), and
reading checks each shard's record count at its end: TensorFlow verifies
every record's CRC, and a corrupt record ends its shard early, which the
count turns into an error naming the shard (TensorFlow's own error does not
name it). The records' SHA-256 is recorded for the fingerprint, not checked
on every read (that would cost a second pass).

Writing (`write_prepared`). Shards are written under hidden temporary names
(`tfbf16.utils.files.TEMPORARY_PREFIX`) and renamed when their split is
complete; `metadata.json` comes last, so a directory without it is not a
prepared dataset. A directory that holds a `metadata.json` is refused (remove
it or choose another); otherwise whatever an interrupted or failed earlier
run left (temporary files, shards without metadata) is removed before
writing, and a failing run removes what it wrote.
"""

import hashlib
import os
import re

from absl import logging
import tensorflow as tf

from recsys.data import accounting
from recsys.data import fingerprint
from recsys.data import schema
from tfbf16.utils import files as files_lib

METADATA = "metadata.json"
FORMAT = "recsys-criteo-tfrecord-v2"
SPLITS = ("train", "eval")
_SHARD_NAME = re.compile(r"(train|eval)-\d{5}-of-\d{5}\.tfrecord")

_CHUNK = 4096
_READ_BUFFER = 1 << 22
_FEATURE_SPEC = {
    schema.DENSE: tf.io.FixedLenFeature([schema.NUM_DENSE], tf.float32),
    schema.SPARSE: tf.io.FixedLenFeature([schema.NUM_SPARSE], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.float32),
}


def encode_examples(features, label):
    """Serializes a block of rows as `tf.train.Example` protos.

    Args:
        features: `{"dense": float32 [N, 13], "sparse": int64 [N, 26]}`.
        label: float32 `[N]`.

    Returns:
        A string tensor `[N]` of serialized Examples.
    """
    n = tf.shape(label)[0]
    one = tf.ones([n, 1], tf.int32)

    def encode(message, fields, values, sizes):
        return tf.io.encode_proto(sizes, values, fields, f"tensorflow.{message}")

    def feature(kind, values):
        width = values.shape[1]
        inner = encode(f"{kind.capitalize()}List", ["value"], [values], width * one)
        return encode("Feature", [f"{kind}_list"], [inner[:, None]], one)

    def entry(key, value):
        return encode("Features.FeatureEntry", ["key", "value"],
                      [tf.fill([n, 1], key), value[:, None]], tf.ones([n, 2], tf.int32))

    entries = tf.stack([
        entry(schema.DENSE, feature("float", features[schema.DENSE])),
        entry(schema.SPARSE, feature("int64", features[schema.SPARSE])),
        entry("label", feature("float", label[:, None])),
    ], axis=1)
    packed = encode("Features", ["feature"], [entries], 3 * one)
    return encode("Example", ["features"], [packed[:, None]], one)


def decode_examples(serialized):
    """Parses serialized Examples written by `encode_examples` into a block."""
    parsed = tf.io.parse_example(serialized, _FEATURE_SPEC)
    return schema.make_block(parsed[schema.DENSE], parsed[schema.SPARSE], parsed["label"])


def shard_paths(output_dir, split):
    """The shard files of a split of a prepared directory, in order."""
    paths = sorted(tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")))
    if paths:
        total = {p.rsplit("-of-", 1)[1] for p in paths}
        if len(total) != 1 or int(total.pop().split(".")[0]) != len(paths):
            raise ValueError(
                f"The {split} shards in {output_dir} are incomplete or mixed "
                f"({len(paths)} files); prepare the directory again.")
    return paths


def write_split(batches, output_dir, split, rows_per_shard):
    """Writes a dataset of batches as TFRecord shards.

    Shards are written under temporary names and renamed to
    `{split}-{i:05d}-of-{n:05d}.tfrecord` once the total is known; on an
    error the temporary files are removed.

    Args:
        batches: a finite `tf.data.Dataset` of `(features, label)` batches.
        output_dir: existing directory to write into.
        split: "train" or "eval".
        rows_per_shard: rows per shard (the last shard may have fewer).

    Returns:
        A dict with "rows" (written), "shard_rows" and "shard_bytes" (one int
        per shard) and "records_sha256" (of the records in order, each
        preceded by its length as 8 little-endian bytes).
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}.")
    temporary, shard_rows = [], []
    writer, in_shard, rows = None, 0, 0
    sha = hashlib.sha256()
    encoded = batches.map(lambda f, l: encode_examples(f, l),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        for records in encoded.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            for record in records:
                if writer is None:
                    temporary.append(os.path.join(
                        output_dir,
                        f"{files_lib.TEMPORARY_PREFIX}{split}-{len(temporary):05d}.tfrecord"))
                    writer = tf.io.TFRecordWriter(temporary[-1])
                writer.write(record)
                sha.update(len(record).to_bytes(8, "little"))
                sha.update(record)
                in_shard += 1
                rows += 1
                if in_shard == rows_per_shard:
                    writer.close()
                    writer, in_shard = None, 0
                    shard_rows.append(rows_per_shard)
            logging.log_every_n_seconds(logging.INFO, "%s: %d rows written", 30, split, rows)
        if writer is not None:
            writer.close()
            writer = None
            shard_rows.append(in_shard)
        sizes = [tf.io.gfile.stat(path).length for path in temporary]
        for i, path in enumerate(temporary):
            final = os.path.join(output_dir,
                                 f"{split}-{i:05d}-of-{len(temporary):05d}.tfrecord")
            tf.io.gfile.rename(path, final, overwrite=True)
    except BaseException:
        if writer is not None:
            writer.close()
        for path in temporary:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        raise
    logging.info("%s: %d rows in %d shards", split, rows, len(temporary))
    return {"rows": rows, "shard_rows": shard_rows, "shard_bytes": sizes,
            "records_sha256": sha.hexdigest()}


def check_output_dir(output_dir):
    """Raises unless `output_dir` can be written by `write_prepared`.

    Raises:
        NotADirectoryError: if it is a file.
        FileExistsError: if it already holds a prepared dataset.
    """
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise NotADirectoryError(f"Output directory {output_dir} is a file; choose a "
                                 "directory (it is created if missing).")
    if tf.io.gfile.exists(os.path.join(output_dir, METADATA)):
        raise FileExistsError(
            f"{output_dir} already holds a prepared dataset ({METADATA}); "
            "remove it or choose another output directory.")


def _clear_output_dir(output_dir):
    """Makes `output_dir` ready for writing; see the module docstring."""
    check_output_dir(output_dir)
    tf.io.gfile.makedirs(output_dir)
    leftovers = files_lib.remove_temporary_files(output_dir)
    for name in tf.io.gfile.listdir(output_dir):
        if _SHARD_NAME.fullmatch(name):
            tf.io.gfile.remove(os.path.join(output_dir, name))
            leftovers.append(name)
    if leftovers:
        logging.warning("Removed what an unfinished earlier run left in %s: %s",
                        output_dir, ", ".join(sorted(leftovers)))


def write_prepared(bundle, output_dir, rows_per_shard):
    """Writes the rows of a `DataBundle` as a prepared directory.

    Args:
        bundle: a `recsys.data.DataBundle` made with `drop_remainder=False` and
            a finite train split, so that every row gets written.
        output_dir: directory to write; created if missing. One that holds a
            `metadata.json` is refused; leftovers of an unfinished earlier run
            are removed (see the module docstring).
        rows_per_shard: rows per TFRecord shard.

    Returns:
        The metadata dict written to `metadata.json`.

    Raises:
        FileExistsError: if `output_dir` already holds a prepared dataset.
        NotADirectoryError: if `output_dir` is a file.
        ValueError: if the bundle would lose rows.
        tf.errors.OpError: from reading the source (malformed or damaged
            input; see `recsys.data.accounting`). Nothing is left behind.
    """
    for split, dataset in (("train", bundle.train), ("eval", bundle.eval)):
        if dataset.element_spec[1].shape[0] is not None:
            raise ValueError(f"The {split} batches have a fixed size, so the last rows "
                             "would be lost: make the bundle with drop_remainder=False.")
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"The {split} split never ends: limit its rows "
                             "(train_rows / eval_rows).")
    _clear_output_dir(output_dir)
    logging.info("Preparing %s", bundle.description)
    written = {}
    try:
        for split, batches in (("train", bundle.train), ("eval", bundle.eval)):
            written[split] = write_split(batches, output_dir, split, rows_per_shard)
    except BaseException:
        for name in tf.io.gfile.listdir(output_dir):
            if _SHARD_NAME.fullmatch(name):
                tf.io.gfile.remove(os.path.join(output_dir, name))
        raise
    report = bundle.input_report()
    logging.info("Source input: %s", accounting.describe_report(report))
    source_fingerprint = bundle.fingerprint()
    content = {
        "kind": "prepared", "format": FORMAT,
        "records_sha256": {s: written[s]["records_sha256"] for s in SPLITS},
        "source_digest": source_fingerprint["digest"],
    }
    metadata = {
        "format": FORMAT,
        "vocab_sizes": schema.check_vocab_sizes(bundle.vocab_sizes),
        "rows": {s: written[s]["rows"] for s in SPLITS},
        "shards": {s: len(written[s]["shard_rows"]) for s in SPLITS},
        "shard_rows": {s: written[s]["shard_rows"] for s in SPLITS},
        "shard_bytes": {s: written[s]["shard_bytes"] for s in SPLITS},
        "source": bundle.description,
        "source_report": {s: report[s] for s in SPLITS},
        "source_fingerprint": source_fingerprint,
        "fingerprint": {**content, "digest": fingerprint.digest(content)},
    }
    files_lib.write_json(os.path.join(output_dir, METADATA), metadata, indent=2)
    return read_metadata(output_dir)


def read_metadata(output_dir):
    """Reads `metadata.json` of a prepared directory and checks its shards.

    Raises:
        FileNotFoundError: if the directory has no metadata (not prepared).
        NotADirectoryError: if `output_dir` is a file.
        ValueError: if the metadata is corrupt or of another format, or does
            not match the shards on disk (a missing, extra, truncated or
            replaced shard is named).
    """
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise NotADirectoryError(
            f"{output_dir} is a file, not a directory prepared by recsys.prepare; pass "
            "the directory (or read the file with data='criteo').")
    path = os.path.join(output_dir, METADATA)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {output_dir!r} is not a prepared directory (or its "
            "preparation did not finish). Create one with `python -m recsys.prepare "
            "--output_dir ...`.")
    metadata = files_lib.read_json(path, missing_ok=False)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format {metadata.get('format')!r}, expected {FORMAT!r}: the "
            "directory was prepared by another version of recsys.prepare. Prepare it "
            "again.")
    for split in SPLITS:
        paths = shard_paths(output_dir, split)
        if len(paths) != metadata["shards"][split]:
            raise ValueError(
                f"{output_dir} has {len(paths)} {split} shards but {path} lists "
                f"{metadata['shards'][split]}; prepare the directory again.")
        for shard, expected in zip(paths, metadata["shard_bytes"][split]):
            size = tf.io.gfile.stat(shard).length
            if size != expected:
                raise ValueError(
                    f"{shard} has {size:,} bytes but {path} says {expected:,}: the shard "
                    "was truncated or replaced. Prepare the directory again.")
    return metadata


def _verified_records(output_dir, split, metadata):
    """`accounting.window_rows` elements of a split's serialized records.

    A shard that ends before its recorded record count (TensorFlow's reader
    stops a shard at a corrupt or truncated record, its error ignored here)
    becomes a READ_ERROR element that names it.
    """
    paths = shard_paths(output_dir, split)
    expected = metadata["shard_rows"][split]

    @tf.autograph.experimental.do_not_convert
    def shard_records(path, count):
        # The shard's chunks, then an empty one that marks its end (a chunk of
        # the shard is never empty).
        # (Errors are ignored per chunk, not per record, which costs less:
        # the chunk that hit one is dropped, and the count below says so.)
        chunks = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER).batch(
            _CHUNK).ignore_errors(log_warning=True).concatenate(
                tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))

        @tf.autograph.experimental.do_not_convert
        def check(read, records):
            read += tf.size(records, out_type=tf.int64)
            short = (tf.size(records) == 0) & (read != count)
            message = tf.strings.join([
                path, " is corrupt or truncated: only ", tf.strings.as_string(read),
                " of its ", tf.strings.as_string(count), " records could be read. Prepare "
                "the directory again."])
            event = tf.where(short, accounting.READ_ERROR, accounting.ROWS)
            return read, (records, event, message)

        return chunks.scan(tf.constant(0, tf.int64), check)

    shards = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(expected, tf.int64)))
    return shards.flat_map(shard_records)


def read_blocks(output_dir, split, counter, metadata, max_rows=None, shard=None):
    """Rows of one split of a prepared directory, as a dataset of blocks.

    Args:
        output_dir: the prepared directory.
        split: "train" or "eval".
        counter: the `accounting.SplitCounter` of the split's records.
        metadata: its `read_metadata`.
        max_rows: read at most this many leading rows, or None for all.
        shard: optional `recsys.data.Shard`: decode only its rows (the
            serialized records are sliced before decoding).

    Returns:
        A `tf.data.Dataset` of `(features, label)` blocks, in written order.
        Iterating it raises `tf.errors.InvalidArgumentError` naming a shard
        that turns out corrupt or truncated.
    """
    records = accounting.window_rows(
        _verified_records(output_dir, split, metadata), take=max_rows).map(counter.apply)
    if shard is not None:
        records = shard.slice_rows(records)
    return records.map(decode_examples, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def make_splits(output_dir, *, train_rows=None, eval_rows=None, shard=None):
    """Train and eval blocks of a prepared directory.

    Args:
        output_dir: the prepared directory.
        train_rows: at most this many leading train rows, or None for all.
        eval_rows: at most this many leading eval rows, or None for all.
        shard: optional `recsys.data.Shard` of the train rows.

    Returns:
        A dict with "train" and "eval" (datasets of blocks), "vocab_sizes",
        "description", "counters" (split -> `accounting.SplitCounter`),
        "fingerprint" (a function returning the directory's fingerprint)
        and "prepared_from" (split -> the source's input report).
    """
    metadata = read_metadata(output_dir)
    rows = metadata["rows"]
    counters = {
        split: accounting.SplitCounter(split, "record", requested=requested,
                                       available=min(rows[split], requested or rows[split]))
        for split, requested in (("train", train_rows), ("eval", eval_rows))}
    train = read_blocks(output_dir, "train", counters["train"], metadata, train_rows, shard)
    eval_ = read_blocks(output_dir, "eval", counters["eval"], metadata, eval_rows)
    description = (f"TFRecords in {output_dir} ({rows['train']:,} train / "
                   f"{rows['eval']:,} eval rows) of: {metadata['source']}")
    source = metadata["source_report"]
    if any(r["malformed"] for r in source.values()):
        description += "; malformed lines skipped when prepared: " + ", ".join(
            f"{split} {r['malformed']}" for split, r in source.items())
    return {
        "train": train,
        "eval": eval_,
        "vocab_sizes": metadata["vocab_sizes"],
        "description": description,
        "counters": counters,
        "fingerprint": lambda: metadata["fingerprint"],
        "prepared_from": source,
    }
