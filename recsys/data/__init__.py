"""Input pipelines of the recsys DCN pipeline.

One entry point, `make_datasets`, for three sources:

- "synthetic": an endless Criteo-shaped stream with a known ground-truth
  click model (`recsys.data.synthetic`);
- "criteo": raw Criteo Kaggle / 1TB TSV files, plain or gzip
  (`recsys.data.criteo`);
- "tfrecord": a directory written by `python -m recsys.prepare`
  (`recsys.data.tfrecord`), which reads back the exact rows of its source.

All of them yield batches in the format of `recsys.data.schema`, and every
`DataBundle` says what its input was and what was read of it:

- `DataBundle.input_report()`: per split, the lines (records, generated
  rows) read, the malformed ones skipped, header lines, the first malformed
  line as "file:line: reason", the rows asked for and available
  (`recsys.data.accounting`);
- `DataBundle.fingerprint()`: a JSON-ready identity of the input data
  (`recsys.data.fingerprint`), to refuse results computed from other data.

Nothing is lost without a word: a malformed fraction above
`max_malformed_fraction` (default 1%), a truncated or corrupt file, or an
input with no valid row stops the reading with an error that names the file.
"""

import dataclasses
import functools
import numbers
from typing import Any, Callable, Optional

import tensorflow as tf

from recsys import config
from recsys.data import accounting
from recsys.data import criteo
from recsys.data import synthetic
from recsys.data import tfrecord

SOURCES = config.DATA_SOURCES
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
            every iteration; its last batch may be partial, so that every
            eval row is scored.
        vocab_sizes: 26 ints; `features["sparse"][:, i]` is in
            `[0, vocab_sizes[i])`.
        description: one line describing the source, for logs.
        shard: the `Shard` of the training rows, or None (all rows).
        source: "synthetic", "criteo" or "tfrecord".
        counters: split -> `accounting.SplitCounter` of what was read.
        prepared_from: for "tfrecord", split -> the input report of the
            source when it was prepared; None otherwise.
        fingerprint_fn: returns the input's fingerprint (computed once).
    """

    train: tf.data.Dataset
    eval: tf.data.Dataset
    vocab_sizes: list
    description: str
    shard: Optional["Shard"] = None
    source: str = None
    counters: dict = dataclasses.field(default_factory=dict, repr=False)
    prepared_from: Optional[dict] = dataclasses.field(default=None, repr=False)
    fingerprint_fn: Optional[Callable[[], Any]] = dataclasses.field(
        default=None, repr=False, compare=False)

    def input_report(self):
        """What was read of the input so far, per split (JSON-ready).

        Counts are current as soon as the pipeline has read the lines (rows
        read ahead by prefetching included), and count each line once however
        often the data is iterated; read them after training / evaluating.

        Under a parameter-server strategy the workers run copies of the
        training pipeline: their reading is not counted here.

        Returns:
            `{"train": {...}, "eval": {...}}`, each split the dict of
            `accounting.SplitCounter.report`: "unit" ("line" for
            Criteo text, where `eval_rows` / `train_rows` count lines,
            malformed ones included; "record" for prepared TFRecords; "row"
            for synthetic data), "requested", "available", "read", "rows",
            "malformed", "header_lines", "malformed_fraction",
            "first_malformed", "complete". For "tfrecord" each split also has
            "prepared_from": the source's report when it was prepared.

        Example:

        >>> bundle.input_report()["eval"]["rows"]  # after a full eval pass
        """
        report = {}
        for split, counter in self.counters.items():
            report[split] = counter.report()
            if self.prepared_from is not None:
                report[split]["prepared_from"] = self.prepared_from[split]
        return report

    def describe_input(self):
        """`input_report()` as one human-readable line, for logs."""
        return accounting.describe_report(self.input_report())

    def fingerprint(self):
        """JSON-ready identity of the input data; compare its "digest".

        Files: path, size and SHA-256 of each (sampled above 256 MiB; see
        `recsys.data.fingerprint`); prepared TFRecords: the fingerprint
        recorded at prepare time (records' SHA-256 and the source's digest);
        synthetic: generator version, seed and vocab_scale. Split options
        (`eval_rows`, `train_rows`, `num_buckets`, ...) are not part of it.
        """
        return self.fingerprint_fn()

    @property
    def remote_readable(self):
        """Whether `train` still works when serialized and rebuilt in another
        process (parameter-server workers). False for "criteo": its files are
        read by Python code (`textlines`), which exists only in this process;
        prepare TFRecords (`python -m recsys.prepare`) for such runs."""
        return self.source != "criteo"

    @property
    def global_batch_size(self):
        """Rows of a global training batch (all shards together)."""
        rows = self.train.element_spec[1].shape[0]
        if rows is None:
            return None
        return rows * (self.shard.count if self.shard is not None else 1)


def make_datasets(data, *, data_path=None, batch_size, seed=0, eval_rows=None,
                  train_rows=None, num_buckets=None, vocab_scale=1.0, strict=False,
                  max_malformed_fraction=accounting.DEFAULT_MAX_MALFORMED_FRACTION,
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
        data_path: for "criteo", a file, a directory (its regular, non-hidden
            files in natural order), a glob, or a comma-separated list of
            them; for "tfrecord", the prepared directory; None for
            "synthetic".
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
            file, line and reason) instead of skipping and counting it.
        max_malformed_fraction: "criteo" only: largest tolerated fraction of
            malformed lines per split, in [0, 1]; above it, reading stops
            with an error (see `recsys.data.accounting` for when it is
            checked).
        drop_remainder: drop the last partial training batch of a finite
            train split (default, so that every training batch has exactly
            `batch_size` rows); must be True when sharded. The eval split
            always keeps its last partial batch: every eval row is scored.
        num_shards: number of training-data shards (data-parallel input
            pipelines); 1 for no sharding.
        shard_index: which shard, in `[0, num_shards)`.

    Returns:
        A `DataBundle`.

    Raises:
        ValueError: on an unknown source or options that do not apply to it,
            an empty file, a file compressed other than with gzip, or (for
            a single Criteo file, whose lines are counted first) a
            truncated or corrupt file.
        FileNotFoundError: when `data_path` names nothing to read.
        PermissionError: when a file cannot be read.
        tf.errors.InvalidArgumentError: not here but when iterating the
            datasets, with a message naming the file: a truncated or corrupt
            file (gzip file, TFRecord shard), a malformed line in strict
            mode, too many malformed lines, or no valid line at all. The
            `input_report()` then holds the counts up to that point.

    Example:

    >>> bundle = make_datasets("synthetic", batch_size=512, seed=1)
    >>> features, label = next(iter(bundle.train))
    >>> features["dense"].shape, features["sparse"].shape, label.shape
    (TensorShape([512, 13]), TensorShape([512, 26]), TensorShape([512]))
    >>> len(bundle.vocab_sizes)
    26
    """
    _check_options(data, data_path, batch_size, train_rows, eval_rows, num_buckets,
                   vocab_scale, strict, max_malformed_fraction)
    shard = _check_shard(num_shards, shard_index, batch_size, drop_remainder)
    if data == "synthetic":
        parts = _synthetic(seed, vocab_scale, train_rows, eval_rows or DEFAULT_EVAL_ROWS,
                           shard)
    elif data == "criteo":
        parts = criteo.make_splits(
            data_path, num_buckets=num_buckets, train_rows=train_rows,
            eval_rows=eval_rows, default_eval_rows=DEFAULT_EVAL_ROWS, strict=strict,
            max_malformed_fraction=max_malformed_fraction)
        if shard is not None:
            parts["train"] = shard.slice_rows(parts["train"])
    else:
        parts = tfrecord.make_splits(data_path, train_rows=train_rows,
                                     eval_rows=eval_rows, shard=shard)

    def batch(blocks, drop):
        return blocks.rebatch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)

    return DataBundle(
        batch(parts["train"], drop_remainder), batch(parts["eval"], False),
        list(parts["vocab_sizes"]), parts["description"], shard, source=data,
        counters=parts["counters"], prepared_from=parts.get("prepared_from"),
        fingerprint_fn=functools.cache(parts["fingerprint"]))


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
                   vocab_scale, strict, max_malformed_fraction):
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
    accounting.check_fraction(max_malformed_fraction)
    for name, applies, given in (
            ("num_buckets", "criteo", num_buckets is not None),
            ("vocab_scale", "synthetic", vocab_scale != 1.0),
            ("strict", "criteo", bool(strict)),
            ("max_malformed_fraction", "criteo",
             max_malformed_fraction != accounting.DEFAULT_MAX_MALFORMED_FRACTION)):
        if given and data != applies:
            raise ValueError(f"{name} only applies to data={applies!r}, not {data!r}.")


def _counted(blocks, counter):
    """`blocks` counted by `counter` (rows generated; none malformed)."""
    elements = blocks.map(accounting.rows_element)
    return accounting.window_rows(elements).map(counter.apply)


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
    counters = {
        # A shard counts its own rows only.
        "train": accounting.SplitCounter("train", "row", requested=train_rows,
                                         available=train_rows if shard is None else None),
        "eval": accounting.SplitCounter("eval", "row", requested=eval_rows,
                                        available=eval_rows)}
    return {
        "train": _counted(train, counters["train"]),
        "eval": _counted(stream.blocks("eval", eval_rows), counters["eval"]),
        "vocab_sizes": stream.vocab_sizes,
        "description": description,
        "counters": counters,
        "fingerprint": stream.fingerprint,
    }


def prepare_tfrecords(data, output_dir, *, rows_per_shard, **source_options):
    """Writes the train and eval rows of a source as a prepared directory.

    What `python -m recsys.prepare` runs; `make_datasets("tfrecord",
    data_path=output_dir, ...)` then reads back the source's exact rows.

    Args:
        data: "synthetic" or "criteo".
        output_dir: directory to write (see `tfrecord.write_prepared`).
        rows_per_shard: rows per TFRecord shard.
        **source_options: passed to `make_datasets` (data_path, seed,
            train_rows, eval_rows, num_buckets, vocab_scale, strict,
            max_malformed_fraction).

    Returns:
        The metadata dict written to `metadata.json`.

    Raises:
        ValueError, OSError: on options or paths that do not fit, checked
            before the source is read.
        tf.errors.InvalidArgumentError: on malformed or damaged input (see
            `make_datasets`); nothing is left in `output_dir` then.

    Example:

    >>> prepare_tfrecords("synthetic", "/tmp/synth", rows_per_shard=100_000,
    ...                   train_rows=300_000, eval_rows=10_000)["rows"]
    {'train': 300000, 'eval': 10000}
    """
    if data == "tfrecord":
        raise ValueError("The source is already a prepared TFRecord directory; "
                         "prepare reads 'synthetic' or 'criteo'.")
    if data == "synthetic" and source_options.get("train_rows") is None:
        raise ValueError("The synthetic stream never ends: pass train_rows.")
    tfrecord.check_output_dir(output_dir)
    bundle = make_datasets(data, batch_size=_PREPARE_BATCH, drop_remainder=False,
                           **source_options)
    return tfrecord.write_prepared(bundle, output_dir, rows_per_shard)
