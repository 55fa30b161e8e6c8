"""Input pipelines of the recsys DCN pipeline.

One entry point, `make_datasets`, for three sources:

- "synthetic": an endless Criteo-shaped stream with a known ground-truth
  click model (`recsys.data.synthetic`);
- "criteo": raw Criteo Kaggle / 1TB TSV files, plain or gzip
  (`recsys.data.criteo`);
- "tfrecord": a directory written by `python -m recsys.prepare`
  (`recsys.data.tfrecord`), which reads back the exact rows of its source.

All of them yield batches in the format of `recsys.data.schema`.
"""

import dataclasses
import numbers
from typing import Optional

import tensorflow as tf

from recsys.data import criteo
from recsys.data import synthetic
from recsys.data import tfrecord

SOURCES = ("synthetic", "criteo", "tfrecord")
# Batch size of the reads that feed `prepare_tfrecords` (any size gives the
# same files).
_PREPARE_BATCH = 4096
DEFAULT_EVAL_ROWS = 65536
_REFERENCE_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """Train and eval datasets of one source, and what a model needs to know.

    Attributes:
        train: `tf.data.Dataset` of `(features, label)` training batches, in
            an order fixed by the source and seed. One pass over the training
            rows ("one epoch": call `.repeat()` for more), except for the
            synthetic source without `train_rows`, which never ends.
        eval: finite `tf.data.Dataset` of evaluation batches, the same on
            every iteration.
        vocab_sizes: 26 ints; `features["sparse"][:, i]` is in
            `[0, vocab_sizes[i])`.
        description: one line describing the source, for logs.
        bad_lines: for "criteo", the `criteo.BadLines` report of malformed
            lines skipped so far (call `report()` after training); None
            otherwise (a "tfrecord" description carries the counts of the
            source it was prepared from).
        shard: the `Shard` of the training rows, or None (all rows).
    """

    train: tf.data.Dataset
    eval: tf.data.Dataset
    vocab_sizes: list
    description: str
    bad_lines: Optional[criteo.BadLines] = None
    shard: Optional["Shard"] = None

    @property
    def global_batch_size(self):
        """Rows of a global training batch (all shards together)."""
        rows = self.train.element_spec[1].shape[0]
        if rows is None:
            return None
        return rows * (self.shard.count if self.shard is not None else 1)


def make_datasets(data, *, data_path=None, batch_size, seed=0, eval_rows=None,
                  train_rows=None, num_buckets=None, vocab_scale=1.0, strict=False,
                  drop_remainder=True, num_shards=1, shard_index=0):
    """Builds the train and eval datasets of a source.

    Row content never depends on `batch_size`: sources produce rows in blocks
    that are rebatched here. Rows are not shuffled: file sources are read in
    file order and synthetic rows are independent draws, so the order of
    training batches is fixed by the source (and the seed).

    Sharding (for data-parallel workers): with `num_shards` > 1, the
    training rows are cut into global batches of `num_shards * batch_size`
    rows, and shard `shard_index` yields the `shard_index`-th slice of
    `batch_size` rows of each. Together the shards' k-th batches are the
    k-th batch a single reader with the global batch size sees, so a
    data-parallel run trains on exactly the batches of a single-process
    run, and every shard has the same number of batches (a last, partial
    global batch is dropped). The synthetic stream generates only the
    shard's own rows when `batch_size` is a multiple of its block size
    (4,096 rows); prepared TFRecords decode only the shard's own records;
    raw Criteo text is parsed in full by every shard (a malformed line
    shifts the rows after it, so the split must come after parsing):
    prepare TFRecords for large multi-worker runs. The eval split is not
    sharded.

    Args:
        data: "synthetic", "criteo" or "tfrecord".
        data_path: for "criteo", a file, glob or comma-separated list of them;
            for "tfrecord", the prepared directory; None for "synthetic".
        batch_size: rows per batch.
        seed: seed of the synthetic stream (its ground truth and rows). File
            sources are read in file order, whatever the seed.
        eval_rows: evaluation rows. None means: 65,536 for "synthetic" and for
            a single Criteo file (its last lines are held out); the whole last
            file when "criteo" has several files; all prepared eval rows for
            "tfrecord". For "criteo", rows are counted as lines, malformed ones
            included.
        train_rows: use only the first `train_rows` training rows (lines, for
            "criteo"); None for all (an endless stream for "synthetic").
        num_buckets: "criteo" only: id space size per categorical feature
            (one int or 26 ints, missing id included); None for
            `criteo.DEFAULT_NUM_BUCKETS` (Kaggle cardinality + 1, capped at
            65,536).
        vocab_scale: "synthetic" only: multiplies its larger cardinalities
            (see `synthetic.vocab_sizes_for`).
        strict: "criteo" only: raise at the first malformed line (naming
            file and line) instead of skipping and counting it.
        drop_remainder: drop the last partial batch of finite datasets
            (default, so that every batch has exactly `batch_size` rows);
            must be True when sharded.
        num_shards: number of training-data shards (data-parallel input
            pipelines); 1 for no sharding.
        shard_index: which shard, in `[0, num_shards)`.

    Returns:
        A `DataBundle`.

    Raises:
        ValueError: on an unknown source or options that do not apply to it.
        FileNotFoundError: when `data_path` names nothing to read.

    Example:

    >>> bundle = make_datasets("synthetic", batch_size=512, seed=1)
    >>> features, label = next(iter(bundle.train))
    >>> features["dense"].shape, features["sparse"].shape, label.shape
    (TensorShape([512, 13]), TensorShape([512, 26]), TensorShape([512]))
    >>> len(bundle.vocab_sizes)
    26
    """
    _check_options(data, data_path, batch_size, train_rows, eval_rows, num_buckets,
                   vocab_scale, strict)
    shard = _check_shard(num_shards, shard_index, batch_size, drop_remainder)
    bad_lines = None
    if data == "synthetic":
        train, eval_, vocab_sizes, description = _synthetic(
            seed, vocab_scale, train_rows, eval_rows or DEFAULT_EVAL_ROWS, shard)
    elif data == "criteo":
        train, eval_, vocab_sizes, description, bad_lines = criteo.make_splits(
            data_path, num_buckets=num_buckets, train_rows=train_rows,
            eval_rows=eval_rows, default_eval_rows=DEFAULT_EVAL_ROWS, strict=strict)
        if shard is not None:
            train = shard.slice_rows(train)
    else:
        train, eval_, vocab_sizes, description = tfrecord.make_splits(
            data_path, train_rows=train_rows, eval_rows=eval_rows, shard=shard)

    def batch(blocks):
        return blocks.rebatch(batch_size, drop_remainder=drop_remainder).prefetch(
            tf.data.AUTOTUNE)

    return DataBundle(batch(train), batch(eval_), list(vocab_sizes), description, bad_lines,
                      shard)


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` of the training rows (see `make_datasets`).

    Attributes:
        count: number of shards.
        index: this shard, in `[0, count)`.
        rows: rows of each shard's slice of a global batch (the shard's
            batch size); a global batch has `count * rows` rows.
    """

    count: int
    index: int
    rows: int

    @property
    def global_rows(self):
        """Rows of a global batch."""
        return self.count * self.rows

    def owns(self, first_row):
        """Whether the row at position `first_row` (an int64 tensor) of the
        stream belongs to this shard."""
        return (first_row % self.global_rows) // self.rows == self.index

    def slice_rows(self, blocks):
        """This shard's rows of a dataset of row blocks (any nested
        structure of tensors with the rows first): the dataset cut into
        global batches (a last partial one dropped), each reduced to this
        shard's slice."""
        return self.slice_batches(blocks.rebatch(self.global_rows, drop_remainder=True))

    def slice_batches(self, batches):
        """This shard's slice of each element of a dataset of global batches."""
        start, stop = self.index * self.rows, (self.index + 1) * self.rows

        def own_slice(*parts):
            return tf.nest.map_structure(lambda t: t[start:stop],
                                         parts if len(parts) > 1 else parts[0])

        return batches.map(own_slice, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)


def _check_shard(num_shards, shard_index, batch_size, drop_remainder):
    for name, value in (("num_shards", num_shards), ("shard_index", shard_index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {value!r}.")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"Need num_shards >= 1 and 0 <= shard_index < num_shards; "
                         f"got num_shards={num_shards}, shard_index={shard_index}.")
    if num_shards == 1:
        return None
    if not drop_remainder:
        raise ValueError("A sharded dataset drops the last partial global batch so "
                         "that every shard has the same number of batches: "
                         "drop_remainder must be True.")
    return Shard(int(num_shards), int(shard_index), int(batch_size))


def _check_options(data, data_path, batch_size, train_rows, eval_rows, num_buckets,
                   vocab_scale, strict):
    if data not in SOURCES:
        raise ValueError(f"data must be one of {', '.join(SOURCES)}; got {data!r}.")
    for name, value, optional in (("batch_size", batch_size, False),
                                  ("train_rows", train_rows, True),
                                  ("eval_rows", eval_rows, True)):
        if value is None and optional:
            continue
        if not isinstance(value, numbers.Integral) or value < 1:
            allowed = "a positive int or None" if optional else "a positive int"
            raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    if (data == "synthetic") != (data_path is None):
        raise ValueError(
            "data_path is required for data='criteo' (TSV files) and "
            "data='tfrecord' (a prepared directory), and must be None for "
            f"data='synthetic'; got data={data!r}, data_path={data_path!r}.")
    for name, applies, given in (("num_buckets", "criteo", num_buckets is not None),
                                 ("vocab_scale", "synthetic", vocab_scale != 1.0),
                                 ("strict", "criteo", bool(strict))):
        if given and data != applies:
            raise ValueError(f"{name} only applies to data={applies!r}, not {data!r}.")


def _synthetic(seed, vocab_scale, train_rows, eval_rows, shard):
    stream = synthetic.SyntheticCriteo(seed, vocab_scale)
    reference = stream.reference_metrics("eval", min(eval_rows, _REFERENCE_ROWS))
    description = (
        f"{stream!r}; ground truth on the first {reference['rows']:,} eval rows: "
        f"click rate {reference['click_rate']:.4f}, log loss "
        f"{reference['log_loss']:.4f} (base-rate entropy {reference['entropy']:.4f})")
    if shard is None:
        train = stream.blocks("train", train_rows)
    elif shard.rows % synthetic.BLOCK_ROWS == 0:
        # Whole blocks belong to one shard: generate only this shard's.
        train = stream.blocks("train", train_rows, keep_block=lambda block: shard.owns(
            block * synthetic.BLOCK_ROWS))
        train = train.rebatch(shard.rows, drop_remainder=True)
        if train_rows is not None:
            train = train.take(train_rows // shard.global_rows)
    else:
        train = shard.slice_rows(stream.blocks("train", train_rows))
    return (train, stream.blocks("eval", eval_rows), stream.vocab_sizes, description)


def prepare_tfrecords(data, output_dir, *, rows_per_shard, **source_options):
    """Writes the train and eval rows of a source as a prepared directory.

    What `python -m recsys.prepare` runs; `make_datasets("tfrecord",
    data_path=output_dir, ...)` then reads back the source's exact rows.

    Args:
        data: "synthetic" or "criteo".
        output_dir: directory to write (see `tfrecord.write_prepared`).
        rows_per_shard: rows per TFRecord shard.
        **source_options: passed to `make_datasets` (data_path, seed,
            train_rows, eval_rows, num_buckets, vocab_scale, strict).

    Returns:
        The metadata dict written to `metadata.json`.

    Example:

    >>> prepare_tfrecords("synthetic", "/tmp/synth", rows_per_shard=100_000,
    ...                   train_rows=300_000, eval_rows=10_000)["rows"]
    {'train': 300000, 'eval': 10000}
    """
    if data == "tfrecord":
        raise ValueError("The source is already a prepared TFRecord directory; "
                         "prepare reads 'synthetic' or 'criteo'.")
    bundle = make_datasets(data, batch_size=_PREPARE_BATCH, drop_remainder=False,
                           **source_options)
    return tfrecord.write_prepared(bundle, output_dir, rows_per_shard)
