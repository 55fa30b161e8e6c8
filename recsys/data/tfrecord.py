"""Prepared TFRecord shards of any recsys source, and their metadata.

A prepared directory holds

- `train-00000-of-000NN.tfrecord` ... and `eval-00000-of-000MM.tfrecord` ...:
  one `tf.train.Example` per row with features "dense" (13 floats),
  "sparse" (26 int64 ids) and "label" (1 float), rows in source order;
- `metadata.json`: vocab sizes, row and shard counts per split, the source
  description and the source's malformed-line counts.

Rows are stored already preprocessed, so reading them back gives exactly the
batches of the source they were written from. Examples are serialized in the
graph with `tf.io.encode_proto` (byte-identical to `Example.SerializeToString`
and several times faster than building protos in Python).
"""

import json
import os

from absl import logging
import tensorflow as tf

from recsys.data import schema

METADATA = "metadata.json"
FORMAT = "recsys-criteo-tfrecord-v1"
SPLITS = ("train", "eval")

_DECODE_CHUNK = 4096
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
    `{split}-{i:05d}-of-{n:05d}.tfrecord` once the total is known.

    Args:
        batches: a finite `tf.data.Dataset` of `(features, label)` batches.
        output_dir: existing directory to write into.
        split: "train" or "eval".
        rows_per_shard: rows per shard (the last shard may have fewer).

    Returns:
        `(rows, shards)`: the number of rows and shard files written.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}.")
    temporary = []
    writer, in_shard, rows = None, 0, 0
    encoded = batches.map(lambda f, l: encode_examples(f, l),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        for records in encoded.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            for record in records:
                if writer is None:
                    temporary.append(os.path.join(
                        output_dir, f".{split}-{len(temporary):05d}.tfrecord.tmp"))
                    writer = tf.io.TFRecordWriter(temporary[-1])
                writer.write(record)
                in_shard += 1
                rows += 1
                if in_shard == rows_per_shard:
                    writer.close()
                    writer, in_shard = None, 0
            logging.log_every_n_seconds(logging.INFO, "%s: %d rows written", 30, split, rows)
    finally:
        if writer is not None:
            writer.close()
    for i, path in enumerate(temporary):
        final = os.path.join(output_dir, f"{split}-{i:05d}-of-{len(temporary):05d}.tfrecord")
        tf.io.gfile.rename(path, final, overwrite=True)
    logging.info("%s: %d rows in %d shards", split, rows, len(temporary))
    return rows, len(temporary)


def write_prepared(bundle, output_dir, rows_per_shard):
    """Writes the rows of a `DataBundle` as a prepared directory.

    Args:
        bundle: a `recsys.data.DataBundle` made with `drop_remainder=False` and
            a finite train split, so that every row gets written.
        output_dir: directory to write; created if missing, and must not
            already contain a prepared dataset.
        rows_per_shard: rows per TFRecord shard.

    Returns:
        The metadata dict written to `metadata.json`.
    """
    for split, dataset in (("train", bundle.train), ("eval", bundle.eval)):
        if dataset.element_spec[1].shape[0] is not None:
            raise ValueError(f"The {split} batches have a fixed size, so the last rows "
                             "would be lost: make the bundle with drop_remainder=False.")
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"The {split} split never ends: limit its rows "
                             "(train_rows / eval_rows).")
    tf.io.gfile.makedirs(output_dir)
    existing = [name for name in tf.io.gfile.listdir(output_dir)
                if name == METADATA or name.endswith(".tfrecord")]
    if existing:
        raise FileExistsError(
            f"{output_dir} already holds a prepared dataset ({existing[0]}); "
            "remove it or choose another output directory.")
    logging.info("Preparing %s", bundle.description)
    rows, shards = {}, {}
    for split, batches in (("train", bundle.train), ("eval", bundle.eval)):
        rows[split], shards[split] = write_split(batches, output_dir, split, rows_per_shard)
    bad_lines = None
    if bundle.bad_lines is not None:
        bad_lines = bundle.bad_lines.as_dict()
        logging.info("Malformed lines: %s", bundle.bad_lines.report())
    write_metadata(output_dir, vocab_sizes=bundle.vocab_sizes, rows=rows, shards=shards,
                   source=bundle.description, bad_lines=bad_lines)
    return read_metadata(output_dir)


def write_metadata(output_dir, *, vocab_sizes, rows, shards, source, bad_lines=None):
    """Writes `metadata.json`.

    Args:
        output_dir: the prepared directory.
        vocab_sizes: 26 ints.
        rows: dict split -> rows written.
        shards: dict split -> shard files written.
        source: description of the source.
        bad_lines: JSON-ready malformed-line counts of the source, or None.
    """
    metadata = {
        "format": FORMAT,
        "vocab_sizes": schema.check_vocab_sizes(vocab_sizes),
        "rows": dict(rows),
        "shards": dict(shards),
        "source": source,
        "bad_lines": bad_lines,
    }
    with tf.io.gfile.GFile(os.path.join(output_dir, METADATA), "w") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")


def read_metadata(output_dir):
    """Reads and checks `metadata.json` of a prepared directory.

    Raises:
        FileNotFoundError: if the directory has no metadata (not prepared).
        ValueError: if the metadata does not match the shards on disk.
    """
    path = os.path.join(output_dir, METADATA)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {output_dir!r} is not a prepared directory. "
            "Create one with `python -m recsys.prepare --output_dir ...`.")
    with tf.io.gfile.GFile(path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} has format {metadata.get('format')!r}, expected {FORMAT!r}.")
    for split in SPLITS:
        found = len(shard_paths(output_dir, split))
        if found != metadata["shards"][split]:
            raise ValueError(
                f"{output_dir} has {found} {split} shards but {path} lists "
                f"{metadata['shards'][split]}; prepare the directory again.")
    return metadata


def read_blocks(output_dir, split, max_rows=None, shard=None):
    """Rows of one split of a prepared directory, as a dataset of blocks.

    Args:
        output_dir: the prepared directory.
        split: "train" or "eval".
        max_rows: read at most this many leading rows, or None for all.
        shard: optional `recsys.data.Shard`: decode only its rows (the
            serialized records are sliced before decoding).

    Returns:
        A `tf.data.Dataset` of `(features, label)` blocks, in written order.
    """
    records = tf.data.TFRecordDataset(shard_paths(output_dir, split),
                                      buffer_size=_READ_BUFFER)
    if max_rows is not None:
        records = records.take(max_rows)
    if shard is not None:
        records = shard.slice_batches(
            records.batch(shard.global_rows, drop_remainder=True)).unbatch()
    return records.batch(_DECODE_CHUNK).map(
        decode_examples, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_splits(output_dir, *, train_rows=None, eval_rows=None, shard=None):
    """Train and eval blocks of a prepared directory.

    Args:
        output_dir: the prepared directory.
        train_rows: at most this many leading train rows, or None for all.
        eval_rows: at most this many leading eval rows, or None for all.
        shard: optional `recsys.data.Shard` of the train rows.

    Returns:
        `(train_blocks, eval_blocks, vocab_sizes, description)`.
    """
    metadata = read_metadata(output_dir)
    train = read_blocks(output_dir, "train", train_rows, shard)
    eval_ = read_blocks(output_dir, "eval", eval_rows)
    rows = metadata["rows"]
    description = (f"TFRecords in {output_dir} ({rows['train']:,} train / "
                   f"{rows['eval']:,} eval rows) of: {metadata['source']}")
    bad = metadata.get("bad_lines")
    if bad and any(s["count"] for s in bad.values()):
        description += "; malformed lines skipped when prepared: " + ", ".join(
            f"{split} {s['count']}" for split, s in bad.items())
    return train, eval_, metadata["vocab_sizes"], description
