"""Reading raw Criteo TSV files: Kaggle `train.txt` and Criteo 1TB `day_N`.

Format: one example per line, 40 tab-separated fields: label (0 or 1),
I1..I13 (integer counts, possibly negative or empty) and C1..C26 (hex hashes,
possibly empty). Files may be plain or gzip-compressed (detected from the
first two bytes, whatever the file name).

Preprocessing (see `schema`):

- dense: empty -> 0, negative -> 0, then `log(1 + x)`;
- categorical Ci: empty -> id 0; any other string s ->
  `1 + tf.strings.to_hash_bucket_fast(s, 2**63 - 1) % (num_buckets[i] - 1)`
  (FarmHash Fingerprint64, made non-negative, then reduced per feature, so
  one hashing op serves all 26 features). Values are not checked to be hex:
  any non-empty string hashes.

Malformed lines (a field count other than 40, a label other than "0"/"1", or
an integer field that is not an optionally signed run of 1 to 18 digits) are
skipped and counted by a `BadLineCounter`; in strict mode the first one stops
the pipeline with an error naming its file and 1-based line number. Lines
are parsed in chunks of `PARSE_CHUNK` by a parallel map, then a sequential map
does the counting, so counts and the reported example are deterministic.
"""

import gzip
import re

from absl import logging
import tensorflow as tf

from recsys.data import schema

PARSE_CHUNK = 4096
DEFAULT_MAX_BUCKETS = 2**16

# Per-feature default: Criteo Kaggle's cardinality (+1 for the missing id),
# capped at DEFAULT_MAX_BUCKETS; 571,704 ids in total.
DEFAULT_NUM_BUCKETS = [min(c + 1, DEFAULT_MAX_BUCKETS) for c in schema.KAGGLE_CARDINALITIES]

_INTEGER = r"-?[0-9]{1,18}"  # at most 18 digits: always fits in int64
# A valid line: the label, 13 possibly empty integers, 26 tab-free fields.
_VALID_LINE = r"[01](\t(" + _INTEGER + r")?){13}(\t[^\t]*){26}"
_READ_BUFFER = 1 << 22
_HASH_RANGE = 2**63 - 1  # to_hash_bucket_fast(s, _HASH_RANGE): a non-negative int64


def resolve_paths(data_path):
    """Expands a Criteo data path into an ordered list of files.

    Args:
        data_path: a file, a glob, or a comma-separated list of either.
            Matches of one glob are sorted naturally (`day_2` before
            `day_10`); list items keep their order.

    Returns:
        A list of file paths.

    Raises:
        FileNotFoundError: if an item matches nothing.
    """
    files = []
    for item in (p.strip() for p in str(data_path).split(",")):
        if not item:
            continue
        matches = tf.io.gfile.glob(item)
        if not matches:
            raise FileNotFoundError(
                f"Criteo data path {item!r} matches no file. Pass an existing "
                "file, a glob such as 'criteo/day_*.gz', or a comma-separated list."
            )
        files.extend(sorted(matches, key=_natural_key))
    if not files:
        raise FileNotFoundError(f"Criteo data path {data_path!r} names no file.")
    return files


def _natural_key(path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def is_gzip(path):
    """Whether a file starts with the gzip magic bytes."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def count_lines(path):
    """Number of lines `tf.data.TextLineDataset` reads from a file.

    A last line without a trailing newline counts; gzip files are
    decompressed on the fly.
    """
    with tf.io.gfile.GFile(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if is_gzip(path) else raw
        count, last = 0, b"\n"
        while chunk := stream.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


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


class BadLineCounter:
    """Counts, skips (or rejects) the malformed lines of one split.

    Each line is counted once however many times the dataset is iterated:
    a line counts only if it lies beyond the furthest line of its file
    already seen. State lives in `tf.Variable`s updated by a sequential
    `Dataset.map`, so it is current as soon as the lines have been read.

    Args:
        files: the files of the split, in reading order.
        strict: raise on the first malformed line instead of skipping it.
    """

    def __init__(self, files, strict=False):
        self.files = list(files)
        self.strict = strict
        n = len(self.files)
        with tf.init_scope():
            self._paths = tf.constant(self.files)
            self._count = tf.Variable(tf.constant(0, tf.int64), trainable=False)
            self._seen = tf.Variable(tf.zeros([n], tf.int64), trainable=False)
            self._first_line = tf.Variable(tf.constant(-1, tf.int64), trainable=False)
            self._first_message = tf.Variable("", dtype=tf.string, trainable=False)

    def filter(self, file_index, line_number, lines, features, label, valid):
        """Records the malformed rows of a parsed chunk and drops them.

        Args:
            file_index: int64 `[N]`, index of each row's file in `files`.
            line_number: int64 `[N]`, 1-based line number in that file.
            lines: string `[N]`, the raw lines.
            features, label: the parsed block.
            valid: bool `[N]`, false for malformed lines.

        Returns:
            The `(features, label)` block of the valid rows.

        Raises:
            tf.errors.InvalidArgumentError: (when iterating) in strict mode, at
                the first malformed line, naming its file and line number.
        """
        bad = ~valid
        any_bad = tf.reduce_any(bad)
        new = bad & (line_number > tf.gather(self._seen, file_index))
        self._count.assign_add(tf.reduce_sum(tf.cast(new, tf.int64)))
        furthest = tf.math.unsorted_segment_max(line_number, file_index, len(self.files))
        self._seen.assign(tf.maximum(self._seen, furthest))

        i = tf.argmax(tf.cast(bad, tf.int32))  # first malformed row of the chunk
        message = tf.strings.join([self._paths[file_index[i]], ":",
                                   tf.strings.as_string(line_number[i]), ": ",
                                   describe_malformed(lines[i])])
        record = (self._first_line < 0) & tf.reduce_any(new)
        self._first_message.assign(tf.where(record, message, self._first_message))
        self._first_line.assign(tf.where(record, line_number[i], self._first_line))
        if self.strict:
            tf.debugging.Assert(
                ~any_bad,
                [tf.strings.join([
                    "Malformed Criteo line ", message, ". Fix or delete the line, "
                    "or pass strict=False to skip and count malformed lines."])],
            )
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, valid), (features, label))

    @property
    def count(self):
        """Number of distinct malformed lines read so far."""
        return int(self._count.numpy())

    @property
    def first(self):
        """`"path:line: reason"` of the first malformed line read, or None."""
        if self._first_line.numpy() < 0:
            return None
        return self._first_message.numpy().decode("utf-8", "replace")


class BadLines:
    """Malformed-line report of a Criteo source, per split.

    Args:
        counters: dict from split name ("train", "eval") to `BadLineCounter`.

    Example:

    >>> bundle = make_datasets("criteo", data_path="day_*.gz", batch_size=512)
    >>> # ... train and evaluate ...
    >>> print(bundle.bad_lines.report())
    train: 2 malformed lines skipped, first: day_0.gz:17: ...; eval: none
    """

    def __init__(self, counters):
        self.counters = dict(counters)

    def counts(self):
        """Dict from split name to the number of malformed lines read so far."""
        return {split: c.count for split, c in self.counters.items()}

    def as_dict(self):
        """JSON-ready dict: split -> {"count": int, "first": str or None}."""
        return {split: {"count": c.count, "first": c.first}
                for split, c in self.counters.items()}

    def report(self):
        """One human-readable line summarizing the malformed lines so far."""
        parts = []
        for split, c in self.counters.items():
            if c.count:
                noun = "line" if c.count == 1 else "lines"
                parts.append(f"{split}: {c.count} malformed {noun} skipped, "
                             f"first: {c.first}")
            else:
                parts.append(f"{split}: none")
        return "; ".join(parts)


def _line_chunks(files, skip_lines=0, max_lines=None):
    """Dataset of `(file_index, line_number, lines)` chunks over files in order.

    Lines are batched per file (so a chunk never spans two files) and numbered
    from 1 in each file; `skip_lines` and `max_lines` count lines over all
    files together.
    """
    compressions = ["GZIP" if is_gzip(f) else "" for f in files]

    def one_file(index, path, compression):
        lines = tf.data.TextLineDataset(path, compression, buffer_size=_READ_BUFFER)

        def number(k, text):
            n = tf.size(text, out_type=tf.int64)
            return tf.fill([n], index), k * PARSE_CHUNK + 1 + tf.range(n), text

        return lines.batch(PARSE_CHUNK).enumerate().map(number)

    indices = tf.range(len(files), dtype=tf.int64)
    chunks = tf.data.Dataset.from_tensor_slices(
        (indices, files, compressions)).flat_map(one_file)
    if not skip_lines and max_lines is None:
        return chunks
    end = skip_lines + max_lines if max_lines is not None else 2**62

    def window(start, chunk):
        size = tf.size(chunk[1], out_type=tf.int64)
        position = start + tf.range(size)
        keep = (position >= skip_lines) & (position < end)
        return start + size, (start, tuple(tf.boolean_mask(t, keep) for t in chunk))

    chunks = chunks.scan(tf.constant(0, tf.int64), window)
    chunks = chunks.take_while(lambda start, _: start < end).map(lambda _, chunk: chunk)
    return chunks.filter(lambda _, number, __: tf.size(number) > 0)


def read_blocks(files, num_buckets, counter, skip_lines=0, max_lines=None):
    """Parsed rows of Criteo files as a dataset of blocks.

    Args:
        files: paths to read, in order.
        num_buckets: list of 26 per-feature id space sizes.
        counter: the `BadLineCounter` of these files.
        skip_lines: number of leading lines (over all files) to skip.
        max_lines: read at most this many lines after the skipped ones.

    Returns:
        A `tf.data.Dataset` of `(features, label)` blocks of the valid rows,
        in file order.
    """
    def parse(file_index, line_number, lines):
        return (file_index, line_number, lines, *parse_lines(lines, num_buckets))

    chunks = _line_chunks(files, skip_lines, max_lines).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return chunks.map(counter.filter)  # sequential: it updates the counts


def make_splits(data_path, *, default_eval_rows, num_buckets=None, train_rows=None,
                eval_rows=None, strict=False):
    """Train and eval blocks of Criteo files.

    With several files the last one is the eval split (its first `eval_rows`
    lines, or all of it if None). With one file, its lines are counted first
    and its last `eval_rows` (default `default_eval_rows`) lines are the eval
    split, never read for training. Eval blocks are cached in memory when
    `eval_rows` bounds them, so only the first eval pass reads the files.

    Args:
        data_path: see `resolve_paths`.
        default_eval_rows: eval lines held out of a single file by default.
        num_buckets: int or 26 ints, per-feature id space sizes (including the
            missing id 0); None for `DEFAULT_NUM_BUCKETS`.
        train_rows: read at most this many training lines, or None for all.
        eval_rows: see above.
        strict: raise on the first malformed line instead of skipping it.

    Returns:
        `(train_blocks, eval_blocks, vocab_sizes, description, bad_lines)`.
    """
    files = resolve_paths(data_path)
    buckets = schema.check_vocab_sizes(
        DEFAULT_NUM_BUCKETS if num_buckets is None else num_buckets, "num_buckets")
    if len(files) == 1:
        eval_rows = eval_rows or default_eval_rows
        logging.info("Counting the lines of %s to hold out its last %d ...",
                     files[0], eval_rows)
        total = count_lines(files[0])
        if total <= eval_rows:
            raise ValueError(
                f"{files[0]} has {total} lines, too few to hold out the last "
                f"eval_rows={eval_rows} for evaluation and still train; pass a "
                "smaller eval_rows, or several files (the last one is then eval).")
        train_lines = total - eval_rows
        train_counter = BadLineCounter(files, strict)
        eval_counter = BadLineCounter(files, strict)
        train = read_blocks(files, buckets, train_counter,
                            max_lines=min(train_lines, train_rows or train_lines))
        eval_ = read_blocks(files, buckets, eval_counter, skip_lines=train_lines)
        where = (f"{files[0]}: lines 1-{train_lines} train, "
                 f"{train_lines + 1}-{total} eval")
    else:
        train_counter = BadLineCounter(files[:-1], strict)
        eval_counter = BadLineCounter(files[-1:], strict)
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
    description = f"Criteo TSV ({where}; {sum(buckets):,} hashed ids)"
    bad_lines = BadLines({"train": train_counter, "eval": eval_counter})
    return train, eval_, buckets, description, bad_lines
