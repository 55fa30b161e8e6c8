"""Reading raw Criteo TSV files: Kaggle `train.txt` and Criteo 1TB `day_N`.

Format: one example per line, 40 tab-separated fields: label (0 or 1),
I1..I13 (integer counts, possibly negative or empty) and C1..C26 (hex hashes,
possibly empty). Files may be plain or gzip-compressed (detected from the
first two bytes, whatever the file name); they are found and read by
`recsys.data.textlines`, so a truncated or corrupt gzip file is an error
that names it, and a directory stands for its files.

Preprocessing (see `schema`):

- dense: empty -> 0, negative -> 0, then `log(1 + x)`;
- categorical Ci: empty -> id 0; any other string s ->
  `1 + tf.strings.to_hash_bucket_fast(s, 2**63 - 1) % (num_buckets[i] - 1)`
  (FarmHash Fingerprint64, made non-negative, then reduced per feature, so
  one hashing op serves all 26 features). Values are not checked to be hex:
  any non-empty string hashes.

Malformed lines (a field count other than 40, a label other than "0"/"1", or
an integer field that is not an optionally signed run of 1 to 18 digits) are
skipped and counted per split by an `accounting.SplitCounter`, which also
stops the reading when too many are malformed (`max_malformed_fraction`), or
at the first one in strict mode, with an error naming file, 1-based line
number and reason. A first line whose fields are all names (such as
"label<TAB>I1<TAB>...") is a header line: skipped and counted apart, not
malformed. Lines are parsed in chunks by a parallel map, then a sequential
map does the counting, so counts and the reported example are deterministic.
"""

import os

from absl import logging
import tensorflow as tf

from recsys.data import accounting
from recsys.data import fingerprint
from recsys.data import schema
from recsys.data import textlines

DEFAULT_MAX_BUCKETS = 2**16

# Per-feature default: Criteo Kaggle's cardinality (+1 for the missing id),
# capped at DEFAULT_MAX_BUCKETS; 571,704 ids in total.
DEFAULT_NUM_BUCKETS = [min(c + 1, DEFAULT_MAX_BUCKETS) for c in schema.KAGGLE_CARDINALITIES]

_INTEGER = r"-?[0-9]{1,18}"  # at most 18 digits: always fits in int64
# A valid line: the label, 13 possibly empty integers, 26 tab-free fields.
_VALID_LINE = r"[01](\t(" + _INTEGER + r")?){13}(\t[^\t]*){26}"
# A header line: at least two fields, each a name.
_NAME = r"[A-Za-z_][A-Za-z0-9_ .-]*"
_HEADER_LINE = f"{_NAME}(\t{_NAME})+"
_HASH_RANGE = 2**63 - 1  # to_hash_bucket_fast(s, _HASH_RANGE): a non-negative int64


def parse_lines(lines, num_buckets):
    """Parses a chunk of raw Criteo lines.

    Args:
        lines: string tensor `[N]`, one raw line each (no newline).
        num_buckets: list of 26 ints, the id space size of each feature.

    Returns:
        `(features, label, valid)`: the `schema` block of all N rows, where
        malformed rows (`valid` false, a bool `[N]`) hold placeholder values.
    """
    valid = tf.strings.regex_full_match(lines, _VALID_LINE)
    # Swap malformed lines for a well-formed one, so every row splits into
    # exactly 40 fields and every integer field parses.
    placeholder = "0" + "\t" * (schema.NUM_FIELDS - 1)
    fields = tf.strings.split(tf.where(valid, lines, placeholder), "\t")
    table = tf.reshape(fields.flat_values, [-1, schema.NUM_FIELDS])
    ints = table[:, 1:1 + schema.NUM_DENSE]
    cats = table[:, 1 + schema.NUM_DENSE:]

    counts = tf.strings.to_number(tf.where(ints == "", "0", ints), tf.float64)
    dense = schema.dense_transform(counts)
    hashed = tf.strings.to_hash_bucket_fast(cats, _HASH_RANGE)
    values = 1 + hashed % (tf.constant(num_buckets, tf.int64) - 1)
    sparse = tf.where(cats == "", tf.constant(schema.MISSING_ID, tf.int64), values)
    label = tf.cast(table[:, 0] == "1", tf.float32)
    return (*schema.make_block(dense, sparse, label), valid)


def describe_malformed(line):
    """Why a line is malformed, as a scalar string tensor (TF ops only).

    Made of plain ops (no conditionals) so that it is cheap to trace; a valid
    line gets a meaningless description.
    """
    split = tf.strings.split(line, "\t")
    num_fields = tf.size(split)
    fields = tf.concat([split, tf.fill([schema.NUM_FIELDS], "")], 0)
    ints_ok = tf.strings.regex_full_match(
        fields[1:1 + schema.NUM_DENSE], "(" + _INTEGER + ")?")
    column = tf.strings.as_string(tf.argmin(tf.cast(ints_ok, tf.int32)) + 1)
    return tf.where(
        num_fields != schema.NUM_FIELDS,
        tf.strings.join([f"expected {schema.NUM_FIELDS} tab-separated fields, got ",
                         tf.strings.as_string(num_fields)]),
        tf.where(tf.strings.regex_full_match(fields[0], "[01]"),
                 tf.strings.join(["I", column, " is not an integer of at most 18 digits"]),
                 "label is not 0 or 1"))


def read_blocks(files, num_buckets, counter, skip_lines=0, max_lines=None):
    """Parsed rows of Criteo files as a dataset of blocks.

    Args:
        files: paths to read, in order (see `textlines.resolve_paths`).
        num_buckets: list of 26 per-feature id space sizes.
        counter: the `accounting.SplitCounter` of these lines.
        skip_lines: number of leading lines (over all files) to skip.
        max_lines: read at most this many lines after the skipped ones.

    Returns:
        A `tf.data.Dataset` of `(features, label)` blocks of the valid rows,
        in file order. Iterating it raises `tf.errors.InvalidArgumentError`
        on a truncated or corrupt file and on malformed lines as `counter`
        is told to (see `accounting`).
    """
    paths = tf.constant([str(f) for f in files])
    windowed = accounting.window_rows(textlines.line_chunks(files), skip_lines, max_lines)

    @tf.autograph.experimental.do_not_convert
    def parse(position, rows, event, message):
        file_index, line_number, lines = rows
        features, label, valid = parse_lines(lines, num_buckets)
        header = (line_number == 1) & ~valid & tf.strings.regex_full_match(
            lines, _HEADER_LINE)
        return position, (file_index, line_number, lines, features, label, valid,
                          header), event, message

    @tf.autograph.experimental.do_not_convert
    def count(position, parsed, event, message):
        file_index, line_number, lines, features, label, valid, header = parsed
        # Padded, so that an element without lines has something to describe.
        pad = lambda t, value: tf.concat([t, [value]], 0)
        file_index, line_number, lines = (
            pad(file_index, 0), pad(line_number, 0), pad(lines, ""))

        def describe(i):
            return tf.strings.join([tf.gather(paths, file_index[i]), ":",
                                    tf.strings.as_string(line_number[i]), ": ",
                                    describe_malformed(lines[i])])

        return counter.apply(position, (features, label), event, message,
                             malformed=~valid & ~header, header=header, describe=describe)

    parsed = windowed.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return parsed.map(count)  # sequential: it updates the counts


def make_splits(data_path, *, default_eval_rows, num_buckets=None, train_rows=None,
                eval_rows=None, strict=False,
                max_malformed_fraction=accounting.DEFAULT_MAX_MALFORMED_FRACTION):
    """Train and eval blocks of Criteo files.

    With several files the last one is the eval split (its first `eval_rows`
    lines, or all of it if None). With one file, its lines are counted first
    (which also checks the whole file) and its last `eval_rows` (default
    `default_eval_rows`) lines are the eval split, never read for training.
    Rows are counted as lines, malformed ones included. Eval blocks are
    cached in memory when `eval_rows` bounds them, so only the first eval
    pass reads the files.

    Args:
        data_path: see `textlines.resolve_paths`.
        default_eval_rows: eval lines held out of a single file by default.
        num_buckets: int or 26 ints, per-feature id space sizes (including the
            missing id 0); None for `DEFAULT_NUM_BUCKETS`.
        train_rows: read at most this many training lines, or None for all.
        eval_rows: see above.
        strict: raise on the first malformed line instead of skipping it.
        max_malformed_fraction: see `accounting.SplitCounter`.

    Returns:
        A dict with "train" and "eval" (datasets of blocks), "vocab_sizes",
        "description", "counters" (split -> `accounting.SplitCounter`) and
        "fingerprint" (a function returning the files' fingerprint).

    Raises:
        FileNotFoundError, PermissionError, ValueError: for a path that names
            no readable, non-empty plain or gzip file, a prepared TFRecord
            directory, a single file too short for `eval_rows`, or a single
            file that is truncated or corrupt.
    """
    files = textlines.resolve_paths(data_path, "Criteo data path")
    if any(os.path.basename(f) == "metadata.json" for f in files):
        raise ValueError(
            f"Criteo data path {data_path!r} holds a metadata.json: is it a directory "
            "prepared by recsys.prepare? Read it with data='tfrecord' (--data=tfrecord).")
    buckets = schema.check_vocab_sizes(
        DEFAULT_NUM_BUCKETS if num_buckets is None else num_buckets, "num_buckets")

    def counter(split, requested, available):
        return accounting.SplitCounter(
            split, "line", requested=requested, available=available, strict=strict,
            max_malformed_fraction=max_malformed_fraction, what="Criteo line")

    if len(files) == 1:
        eval_rows = eval_rows or default_eval_rows
        logging.info("Counting the lines of %s to hold out its last %d ...",
                     files[0], eval_rows)
        total = textlines.count_lines(files[0])
        if total <= eval_rows:
            raise ValueError(
                f"{files[0]} has {total} lines, too few to hold out the last "
                f"eval_rows={eval_rows} for evaluation and still train; pass a "
                "smaller eval_rows, or several files (the last one is then eval).")
        train_lines = total - eval_rows
        train_counter = counter("train", train_rows, min(train_lines, train_rows or total))
        eval_counter = counter("eval", eval_rows, eval_rows)
        train = read_blocks(files, buckets, train_counter,
                            max_lines=min(train_lines, train_rows or train_lines))
        eval_ = read_blocks(files, buckets, eval_counter, skip_lines=train_lines)
        where = (f"{files[0]}: lines 1-{train_lines} train, "
                 f"{train_lines + 1}-{total} eval")
    else:
        train_counter = counter("train", train_rows, None)
        eval_counter = counter("eval", eval_rows, None)
        train = read_blocks(files[:-1], buckets, train_counter, max_lines=train_rows)
        eval_ = read_blocks(files[-1:], buckets, eval_counter, max_lines=eval_rows)
        where = (f"train: {len(files) - 1} file(s) {files[0]} .. {files[-2]}, "
                 f"eval: {files[-1]}")
        if eval_rows is not None:
            where += f" (first {eval_rows} lines)"
    if train_rows is not None:
        where += f"; at most {train_rows} train lines"
    if eval_rows is not None:
        eval_ = eval_.cache()
    return {
        "train": train,
        "eval": eval_,
        "vocab_sizes": buckets,
        "description": f"Criteo TSV ({where}; {sum(buckets):,} hashed ids)",
        "counters": {"train": train_counter, "eval": eval_counter},
        "fingerprint": lambda: fingerprint.files_fingerprint(files),
    }
