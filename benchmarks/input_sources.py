"""The recsys input sources the throughput benchmarks time, on generated files.

`file_sources` writes a Criteo-format TSV file (`benchmarks.criteo_files`),
prepares it as TFRecords (`recsys.data.prepare_tfrecords`, what
`python -m recsys.prepare` runs) and returns the two `recsys.data` bundles
that read the same rows; `count_rows` runs one pass over a dataset.

Example:

>>> sources = file_sources("/tmp/inputs", 200_000, DataConfig(batch_size=2048))
>>> count_rows(sources["tfrecord"].train)
198656
"""

import dataclasses
import os

from benchmarks import criteo_files
from recsys import batches
from recsys import data as data_lib

#: Lines held out at the end of the generated file (its eval split).
EVAL_LINES = 1000
_ROWS_PER_SHARD = 100_000


def file_sources(directory, rows, data_config, eval_lines=EVAL_LINES):
    """Bundles of a generated Criteo TSV file and of its prepared TFRecords.

    Args:
        directory: where the files are written (`day_0.tsv`, `prepared/`).
        rows: training lines of the file; `eval_lines` more are written.
        data_config: a `recsys.config.DataConfig`: its batch size, and its
            data seed as the seed of the file's random values.
        eval_lines: lines held out at the end as the eval split.

    Returns:
        `{"criteo TSV": DataBundle, "tfrecord": DataBundle}` with the same
        training rows (the last partial batch dropped). The file is read
        strictly: a malformed line stops the reading (a generated file has
        none).
    """
    tsv = os.path.join(directory, "day_0.tsv")
    prepared = os.path.join(directory, "prepared")
    criteo_files.write_criteo_tsv(tsv, rows + eval_lines, seed=data_config.data_seed)
    data_lib.prepare_tfrecords("criteo", prepared, rows_per_shard=_ROWS_PER_SHARD,
                               data_path=tsv, eval_rows=eval_lines, strict=True)
    configs = {
        "criteo TSV": dataclasses.replace(data_config, source="criteo", data_path=tsv,
                                          eval_rows=eval_lines, strict=True),
        "tfrecord": dataclasses.replace(data_config, source="tfrecord", data_path=prepared,
                                        eval_rows=eval_lines),
    }
    return {name: batches.make_bundle(dc) for name, dc in configs.items()}


def count_rows(dataset):
    """Rows of one full pass over a dataset of `(features, labels)` batches."""
    return sum(int(labels.shape[0]) for _, labels in dataset)
