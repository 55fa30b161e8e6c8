"""What the reader of each split read, so that nothing is lost without a word.

Every source hands its blocks to a `SplitCounter` (one per split, "train"
and "eval"), which counts, inside the `tf.data` pipeline,

- the units read: lines (Criteo text), records (prepared TFRecords) or
  generated rows (synthetic);
- the malformed ones, skipped, and the first of them as `"file:line: reason"`;
- header lines (the first line of a text file that names the columns),
  skipped and counted apart: they are not data, and not an error;
- whether the split was read to its end at least once.

Each unit counts once however many times the dataset is iterated (epochs,
restarts, partial periodic evaluations): a unit counts only if its position
in the split's stream lies beyond the furthest position already seen. The
counting runs in a sequential `Dataset.map`, so the counts and the reported
first malformed line are deterministic.

When the malformed fraction is checked. A split fails (`InvalidArgumentError`
from the iterator, with the counts, the first malformed line and what to do)
when its malformed fraction, over the units read so far, exceeds
`max_malformed_fraction`:

- after every block, once at least `check_after` units (4,096, about one
  parse chunk of Criteo text) were read, so that a 40%-malformed file stops
  within its first chunks rather than after a whole pass, and a few bad
  lines among the first ones do not stop a good file;
- at the end of every pass over the split (an end marker that
  `window_rows` appends to the stream), whatever the number read, so that a
  small file is checked too.

A header line is not malformed, so it never trips the check. A split whose
every unit was malformed (or a header) fails at its end whatever the
threshold: there is nothing to train or evaluate on. In strict mode the first
malformed unit fails at once. Read errors found by a source (a truncated or
corrupt file) travel in the stream as `READ_ERROR` elements and fail when the
counter reaches them, in order, after the rows before them.

Example:

>>> counter = SplitCounter("eval", "line", requested=1000)
>>> rows = window_rows(elements).map(counter.apply)  # elements of a source
>>> counter.report()["malformed"]
0
"""

import tensorflow as tf

from recsys import config

#: Default largest tolerated fraction of malformed units in a split.
DEFAULT_MAX_MALFORMED_FRACTION = config.MAX_MALFORMED_FRACTION
#: Units read before the fraction is checked block by block (one parse chunk).
CHECK_AFTER = 4096

#: Event of a stream element: rows, a read error (with its message), or the
#: end of the split.
ROWS, READ_ERROR, END = 0, 1, 2

_INT64_MAX = 2**63 - 1


# The functions given to tf.data here use no Python control flow on tensors:
# tracing them without AutoGraph is faster.
_not_convert = tf.autograph.experimental.do_not_convert


@_not_convert
def rows_element(*rows):
    """Maps a dataset of row blocks to `window_rows` elements (for `Dataset.map`)."""
    return (rows if len(rows) > 1 else rows[0]), tf.constant(ROWS), tf.constant("")


def window_rows(elements, skip=0, take=None):
    """Rows `[skip, skip + take)` of a stream, numbered, with an end marker.

    Args:
        elements: a `tf.data.Dataset` of `(rows, event, message)`: `rows` a
            nested structure of tensors with the rows first, `event` an int32
            scalar (`ROWS`, or `READ_ERROR` for an element that carries no
            rows and the error's `message`).
        skip: rows to skip at the start of the stream.
        take: rows to keep after them, or None for all.

    Returns:
        A dataset of `(position, rows, event, message)`, where `position` is
        the int64 `[n]` 1-based position of each kept row in the window.
        Blocks left empty by the window are dropped; `READ_ERROR` elements
        inside the window are kept, those after it dropped; one last element
        with no rows and event `END` follows the window's last rows.
    """
    end = skip + take if take is not None else _INT64_MAX
    whole = not skip and take is None

    @_not_convert
    def step(start, element):
        rows, event, message = element
        n = tf.shape(tf.nest.flatten(rows)[0], out_type=tf.int64)[0]
        position = start + tf.range(n, dtype=tf.int64)
        if whole:
            return start + n, (position + 1, rows, event, message)
        keep = (position >= skip) & (position < end)
        rows = tf.nest.map_structure(lambda t: tf.boolean_mask(t, keep), rows)
        position = tf.boolean_mask(position, keep)
        return start + n, (start, position - skip + 1, rows, event, message)

    # Each stage costs per element: the whole stream takes the scan alone.
    windowed = elements.scan(tf.constant(0, tf.int64), step)
    if not whole:
        if take is not None:
            windowed = windowed.take_while(_not_convert(lambda start, *_: start < end))
        windowed = windowed.filter(_not_convert(
            lambda _, position, rows, event, message: (tf.size(position) > 0)
            | (event != ROWS)))
        windowed = windowed.map(_not_convert(lambda _, *element: element))
    no_rows = tf.nest.map_structure(
        lambda spec: tf.zeros([0] + spec.shape[1:].as_list(), spec.dtype),
        windowed.element_spec[1])
    marker = (tf.zeros([0], tf.int64), no_rows, tf.constant(END, tf.int32),
              tf.constant("", tf.string))
    return windowed.concatenate(tf.data.Dataset.from_tensors(marker))


class SplitCounter:
    """Counts (and checks) what the reader of one split read; see the module doc.

    Args:
        split: "train" or "eval", for reports and errors.
        unit: what is counted: "line", "record" or "row".
        requested: units asked for (e.g. `eval_rows`), or None for all.
        available: units the split holds, when known before reading.
        strict: fail at the first malformed unit.
        max_malformed_fraction: largest tolerated fraction of malformed units
            (in [0, 1]).
        check_after: units read before the fraction is checked block by block.
        what: name of a unit in messages, e.g. "Criteo line".
    """

    def __init__(self, split, unit, *, requested=None, available=None, strict=False,
                 max_malformed_fraction=DEFAULT_MAX_MALFORMED_FRACTION,
                 check_after=CHECK_AFTER, what=None):
        check_fraction(max_malformed_fraction)
        self.split, self.unit = split, unit
        self.requested, self.available = requested, available
        self.strict = bool(strict)
        self.max_malformed_fraction = float(max_malformed_fraction)
        self.check_after = int(check_after)
        self.what = what or unit
        with tf.init_scope():
            zero = tf.constant(0, tf.int64)
            self._furthest = tf.Variable(zero, trainable=False)
            self._read = tf.Variable(zero, trainable=False)
            self._malformed = tf.Variable(zero, trainable=False)
            self._headers = tf.Variable(zero, trainable=False)
            self._first = tf.Variable("", dtype=tf.string, trainable=False)
            self._complete = tf.Variable(False, trainable=False)

    @_not_convert
    def apply(self, position, rows, event, message, malformed=None, header=None,
              describe=None):
        """Counts a `window_rows` element and returns its rows to keep.

        Args:
            position, rows, event, message: an element of `window_rows`.
            malformed: bool `[n]`, the malformed rows (None: none are).
            header: bool `[n]`, the header lines (None: none are).
            describe: `i -> "file:line: reason"` (a string tensor) of row `i`
                (any int64 scalar; for an element without rows it must still
                return a string); required with `malformed`.

        Returns:
            `rows` without the malformed rows and header lines.

        Raises:
            tf.errors.InvalidArgumentError: (when iterating) on a read error,
                on a malformed unit in strict mode, when the malformed
                fraction is too high, or when a whole split was malformed.
        """
        drops = malformed is not None or header is not None
        n = tf.size(position)
        no = tf.zeros([n], tf.bool)
        malformed = no if malformed is None else malformed
        header = no if header is None else header
        new = position > self._furthest
        count = lambda mask: tf.reduce_sum(tf.cast(mask & new, tf.int64))
        self._read.assign_add(count(tf.ones([n], tf.bool)))
        self._malformed.assign_add(count(malformed))
        self._headers.assign_add(count(header))
        self._furthest.assign(tf.maximum(self._furthest, tf.reduce_max(
            tf.concat([position, [0]], 0))))
        # Index of a mask's first true element (0 if none, or if empty).
        first_of = lambda mask: tf.argmax(tf.cast(tf.concat([mask, [False]], 0), tf.int32),
                                          output_type=tf.int64)
        if describe is not None:
            record = tf.equal(self._first.value(), "") & tf.reduce_any(malformed & new)
            self._first.assign(tf.where(record, describe(first_of(malformed & new)),
                                        self._first.value()))
        ended = event == END
        self._complete.assign(self._complete.value() | ended)

        read, bad = self._read.value(), self._malformed.value()
        kept = read - bad - self._headers.value()
        too_many = tf.cast(bad, tf.float64) > self.max_malformed_fraction * tf.cast(
            read, tf.float64)
        # (condition, message) in order of precedence; the messages are built
        # only on failure, in one branch.
        failures = [
            (event == READ_ERROR, lambda: message),
            (ended & (read == 0), lambda: tf.constant(
                f"The {self.split} split is empty: no {self.unit} was read (an empty "
                "file?). Check the input.")),
            (ended & (read > 0) & (kept <= 0), lambda: tf.strings.join([
                "Every one of the ", tf.strings.as_string(read),
                f" {self.unit}s read for the {self.split} split is malformed (or a "
                "header line); the first malformed one: ", self._first.value(),
                ". Is the input really in this format?"])),
            ((ended | (read >= self.check_after)) & too_many,
             lambda: self._too_many_message(read, bad)),
        ]
        if self.strict and describe is not None:
            failures.insert(1, (tf.reduce_any(malformed), lambda: tf.strings.join([
                f"Malformed {self.what} ", describe(first_of(malformed)),
                ". Fix or delete the line, or pass strict=False (no --strict) to "
                "skip and count malformed lines."])))

        def fail():
            text = tf.constant("")
            for condition, failure in reversed(failures):  # the first listed wins
                text = tf.where(condition, failure(), text)
            tf.debugging.Assert(False, [text])
            return tf.constant(False)

        failed = tf.reduce_any(tf.stack([condition for condition, _ in failures]))
        tf.cond(failed, fail, lambda: tf.constant(True))
        if not drops:
            return rows
        keep = ~(malformed | header)
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, keep), rows)

    def _too_many_message(self, read, bad):
        fraction = 100.0 * tf.cast(bad, tf.float64) / tf.cast(tf.maximum(read, 1), tf.float64)
        counts = tf.strings.join([
            tf.strings.as_string(bad), " of the ", tf.strings.as_string(read),
            f" {self.unit}s read so far (", tf.strings.as_string(fraction, precision=2),
            "%) are malformed"])
        every = tf.strings.join([
            "every one of the ", tf.strings.as_string(read),
            f" {self.unit}s read so far is malformed"])
        return tf.strings.join([
            f"Too many malformed {self.unit}s in the {self.split} split: ",
            tf.where(bad == read, every, counts), ", more than ",
            f"max_malformed_fraction={self.max_malformed_fraction:g} allows; the first: ",
            self._first.value(), ". Fix the input, or raise --max_malformed_fraction "
            f"(now {self.max_malformed_fraction:g}) to skip and count them."])

    def report(self):
        """JSON-ready counts of the split so far.

        Returns:
            A dict with "unit"; "requested" and "available" (units, or None
            when not bounded / not known: after a complete pass "available"
            is the number read); "read"; "rows" (units kept: read minus
            malformed and header lines); "malformed"; "header_lines";
            "malformed_fraction" (of the units read; 0.0 when none);
            "first_malformed" (`"file:line: reason"` or None) and "complete"
            (read to its end at least once).
        """
        read, bad, headers = (int(v.numpy()) for v in
                              (self._read, self._malformed, self._headers))
        complete = bool(self._complete.numpy())
        first = self._first.numpy().decode("utf-8", "replace") or None
        available = self.available
        if available is None and complete:
            available = read
        return {
            "unit": self.unit,
            "requested": self.requested,
            "available": available,
            "read": read,
            "rows": read - bad - headers,
            "malformed": bad,
            "header_lines": headers,
            "malformed_fraction": bad / read if read else 0.0,
            "first_malformed": first,
            "complete": complete,
        }


def check_fraction(value, name="max_malformed_fraction"):
    """Raises ValueError unless `value` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


def describe_report(report):
    """One human-readable line of an input report (`DataBundle.input_report()`)."""
    parts = []
    for split in ("train", "eval"):
        r = report.get(split)
        if r is None:
            continue
        text = f"{split}: {r['read']:,} {r['unit']}s read"
        if r["malformed"]:
            text += (f", {r['malformed']:,} malformed skipped "
                     f"({100 * r['malformed_fraction']:.2f}%, first: {r['first_malformed']})")
        else:
            text += ", none malformed"
        if r["header_lines"]:
            text += f", {r['header_lines']} header line(s) skipped"
        if r["requested"] is not None and r["complete"] and r["read"] < r["requested"]:
            text += f" (only {r['read']:,} of the {r['requested']:,} requested exist)"
        source = r.get("prepared_from")
        if source is not None:
            text += (f"; prepared from {source['read']:,} {source['unit']}s, "
                     f"{source['malformed']:,} malformed skipped then")
        parts.append(text)
    return "; ".join(parts)
