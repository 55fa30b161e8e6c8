"""The batches a run trains and evaluates on, from a `DataConfig`.

`make_bundle(data_config, distribution)` builds the `recsys.data.DataBundle`
of a config (this worker's shard of the training rows under a multi-worker
strategy); `with_cached_eval` and `with_cached_train` keep the batches in
memory when many runs read the same ones (a study).

Example:

>>> bundle = with_cached_eval(make_bundle(DataConfig(batch_size=512)))
>>> features, labels = next(iter(bundle.train))
"""

import dataclasses

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from recsys import data as data_lib


def make_bundle(data_config, distribution=None):
    """The `DataBundle` of a `DataConfig`.

    The data seed picks the synthetic stream (its ground truth and rows);
    file sources are read in file order whatever the seed.

    Args:
        data_config: a `recsys.config.DataConfig`.
        distribution: a `recsys.distribute.Distribution`; with several input
            pipelines (multi-worker), the bundle's training rows are this
            worker's shard (`batch_size` is the global batch size, split
            evenly between the workers).

    Raises:
        ValueError: if the global batch size does not split evenly.
    """
    dc = data_config
    kwargs = {}
    if dc.source == "synthetic":
        kwargs["vocab_scale"] = dc.vocab_scale
    if dc.source == "criteo":
        kwargs.update(strict=dc.strict, max_malformed_fraction=dc.max_malformed_fraction)
        if dc.num_buckets is not None:
            kwargs["num_buckets"] = dc.num_buckets
    shards, index = 1, 0
    if distribution is not None and not distribution.uses_coordinator:
        shards, index = (distribution.num_input_pipelines,
                         distribution.input_pipeline_index)
        if dc.batch_size % distribution.num_replicas:
            raise ValueError(
                f"--batch_size={dc.batch_size} (the global batch) does not split evenly "
                f"over {distribution.num_replicas} replicas; choose a multiple.")
    return data_lib.make_datasets(
        dc.source, data_path=dc.data_path, batch_size=dc.batch_size // shards,
        seed=dc.data_seed, eval_rows=dc.eval_rows, num_shards=shards, shard_index=index,
        **kwargs)


def with_cached_eval(bundle):
    """`bundle` with its eval set cached in memory after one full pass.

    Periodic evaluations then read the same rows without regenerating or
    re-reading them (a synthetic eval set of 2**18 rows takes ~70 MB).
    """
    cached = bundle.eval.cache()
    for _ in cached:  # fill the cache completely before partial reads
        pass
    return dataclasses.replace(bundle, eval=cached)


def with_cached_train(bundle, steps):
    """`bundle` whose training stream is its first `steps` batches, in memory.

    A study trains every (precision, seed) on the same batches; making them
    once instead of once per run leaves the CPU to training (on 2 cores the
    synthetic generator running beside training takes about half of it, see
    `benchmarks/recsys_throughput.py`). A run longer than `steps` would see
    these batches again, so pass the run length.

    Args:
        bundle: a `DataBundle`.
        steps: number of training batches to keep.

    Returns:
        The bundle with `train` replaced by the cached batches.
    """
    cached = bundle.train.take(steps).cache()
    for _ in cached:  # fill the cache once, up front
        pass
    return dataclasses.replace(bundle, train=cached)
