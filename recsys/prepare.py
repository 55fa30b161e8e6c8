r"""Converts a recsys data source into TFRecord shards.

Writes train-*-of-*.tfrecord, eval-*-of-*.tfrecord and metadata.json into
--output_dir. Reading that directory with --data=tfrecord then gives exactly
the batches of the source (same rows, same order) without parsing text or
generating rows again.

Usage:

    python -m recsys.prepare --data=synthetic --train_rows=1000000 \
        --output_dir=/tmp/synthetic_tfrecords
    python -m recsys.prepare --data=criteo --data_path='criteo/day_*.gz' \
        --output_dir=/tmp/criteo_tfrecords --rows_per_shard=1000000

--data_path (criteo) is a file, a directory (its regular, non-hidden files in
natural order), a glob or a comma-separated list. With several files the last
one is the eval split; with one file its last --eval_rows lines are.

Malformed lines are skipped and counted per split; reading stops with an
error when more than --max_malformed_fraction of a split's lines are
malformed, or at the first one with --strict. A truncated or corrupt gzip
file is an error that names it. The log and metadata.json report the lines
read, the malformed ones and the first of them, per split.

An --output_dir that already holds a metadata.json is refused. Anything an
interrupted or failed earlier run left there (hidden temporary files, shards
without metadata.json) is removed first, and a run that fails removes what it
wrote.

Errors are one line (the traceback with --verbosity=1); exit status 1 on an
error, 130 on Ctrl-C.
"""

import os

from absl import app
from absl import flags
from absl import logging

from recsys import data as data_lib
from recsys.data import accounting
from tfbf16.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "synthetic", ["synthetic", "criteo"], "Source to convert.")
flags.DEFINE_string("data_path", None,
                    "Criteo TSV file, directory, glob or comma-separated list "
                    "(for --data=criteo).")
flags.DEFINE_string("output_dir", None, "Directory to write (created if missing; "
                    "must not already hold a prepared dataset).")
flags.DEFINE_integer("train_rows", None, "Training rows to write (required for "
                     "--data=synthetic; for criteo, at most this many lines).",
                     lower_bound=1)
flags.DEFINE_integer("eval_rows", None, "Eval rows (for criteo: lines, malformed ones "
                     "included); see recsys.data.make_datasets for the default of "
                     "each source.", lower_bound=1)
flags.DEFINE_integer("rows_per_shard", 1_000_000, "Rows per TFRecord shard.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the synthetic stream.", lower_bound=0)
flags.DEFINE_float("vocab_scale", 1.0, "Cardinality multiplier of the synthetic stream.")
flags.DEFINE_list("num_buckets", None, "Criteo: one bucket count, or 26 comma-"
                  "separated ones (C1..C26), missing id included.")
flags.DEFINE_bool("strict", False, "Criteo: fail at the first malformed line instead "
                  "of skipping it.")
flags.DEFINE_float("max_malformed_fraction", accounting.DEFAULT_MAX_MALFORMED_FRACTION,
                   "Criteo: fail when more than this fraction of a split's lines "
                   "are malformed.", lower_bound=0.0, upper_bound=1.0)

flags.mark_flag_as_required("output_dir")
flags.register_multi_flags_validator(
    ["data", "data_path"],
    lambda f: (f["data"] == "criteo") == (f["data_path"] is not None),
    message="--data_path is required with --data=criteo and not used with "
            "--data=synthetic.")
flags.register_multi_flags_validator(
    ["data", "train_rows"],
    lambda f: f["data"] != "synthetic" or f["train_rows"] is not None,
    message="--data=synthetic is an endless stream: pass --train_rows.")
flags.register_multi_flags_validator(
    ["data", "vocab_scale", "num_buckets", "strict", "max_malformed_fraction"],
    lambda f: (f["data"] == "synthetic" or f["vocab_scale"] == 1.0) and (
        f["data"] == "criteo" or (
            f["num_buckets"] is None and not f["strict"]
            and f["max_malformed_fraction"] == accounting.DEFAULT_MAX_MALFORMED_FRACTION)),
    message="--vocab_scale only applies to --data=synthetic; --num_buckets, --strict "
            "and --max_malformed_fraction only to --data=criteo.")
flags.register_validator(
    "num_buckets",
    lambda v: v is None or (len(v) in (1, 26) and all(s.strip().isdigit() and int(s) >= 2
                                                      for s in v)),
    message="--num_buckets must be one int or 26 comma-separated ints, each >= 2.")
flags.register_validator(
    "vocab_scale", lambda v: v > 0, message="--vocab_scale must be > 0.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    options = {"train_rows": FLAGS.train_rows, "eval_rows": FLAGS.eval_rows}
    if FLAGS.data == "synthetic":
        options.update(seed=FLAGS.seed, vocab_scale=FLAGS.vocab_scale)
    else:
        buckets = [int(v) for v in FLAGS.num_buckets] if FLAGS.num_buckets else None
        options.update(data_path=FLAGS.data_path, strict=FLAGS.strict,
                       max_malformed_fraction=FLAGS.max_malformed_fraction,
                       num_buckets=buckets[0] if buckets and len(buckets) == 1 else buckets)
    metadata = data_lib.prepare_tfrecords(FLAGS.data, FLAGS.output_dir,
                                          rows_per_shard=FLAGS.rows_per_shard, **options)
    logging.info("Wrote %s: %s train / %s eval rows; source: %s",
                 os.path.abspath(FLAGS.output_dir), metadata["rows"]["train"],
                 metadata["rows"]["eval"],
                 accounting.describe_report(metadata["source_report"]))


if __name__ == "__main__":
    cli.run(main)
