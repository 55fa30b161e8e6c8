"""Training the DCN on every row of a stream while its memory is sampled.

A phase of `benchmarks.streaming_memory`: `run_phase` builds the data (a
`recsys.data` bundle), the model at a precision (`recsys.trainer.Trainer`,
whose compiled `train_step` is the one `recsys.train` runs), traces the
step for every batch size it will see, then calls it on every batch, the
last partial one too, while a `benchmarks.rss.RssSampler` records resident
memory against the rows consumed, and analyzes the samples
(`benchmarks.rss.analyze`).

Example:

>>> with rss.RssSampler(1.0) as sampler:
...     result = run_phase(
...         "synthetic", lambda: synthetic_bundle(DataConfig(), rows=10**6), 10**6,
...         model_config=ModelConfig(), precision="fp32", batch_size=2048,
...         sampler=sampler, warmup_percent=2.0)
>>> result["verdict"], result["rows"]
('flat', 1000000)
"""

import collections
import gc
import math
import time

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import tensorflow as tf

from benchmarks import rss
from recsys import config
from recsys import trainer
from recsys.data import make_datasets

#: Training loss is reported as the mean over this many first and last steps.
LOSS_STEPS = 100


def synthetic_bundle(data_config, rows):
    """The first `rows` rows of the synthetic stream of `data_config`, every
    one of them in a batch (the last batch partial)."""
    dc = data_config
    return make_datasets("synthetic", batch_size=dc.batch_size, seed=dc.data_seed,
                         eval_rows=dc.batch_size, train_rows=rows,
                         vocab_scale=dc.vocab_scale, drop_remainder=False)


def criteo_bundle(data_config, path, eval_lines):
    """Every line of the Criteo file `path` but the last `eval_lines`, in
    batches of `data_config.batch_size` (the last partial). Strict: a
    malformed line stops the reading (a generated file has none)."""
    return make_datasets("criteo", data_path=path, batch_size=data_config.batch_size,
                         eval_rows=eval_lines, drop_remainder=False, strict=True)


def _batch_specs(element_spec, batch_size):
    return tf.nest.map_structure(
        lambda s: tf.TensorSpec([batch_size, *s.shape[1:]], s.dtype), element_spec)


def train_phase(name, dataset, train_step, sampler, warmup_rows, *, report_rows=None,
                loss_steps=LOSS_STEPS):
    """Calls `train_step` on every batch of `dataset`, reporting progress.

    Args:
        name: the phase, in the sampler's records and the progress lines.
        dataset: `(features, labels)` batches.
        train_step: `(features, labels) -> loss`.
        sampler: a started `rss.RssSampler`; it samples right when the
            warm-up rows are consumed and at the end.
        warmup_rows: rows after which the start sample is taken.
        report_rows: print a progress line every this many rows (None: never).
        loss_steps: the training loss is averaged over this many first and
            last steps.

    Returns:
        A dict: `rows` and `steps` consumed, `seconds`, `rows_per_second`,
        and `loss_first_steps`, `loss_last_steps`: the mean training loss of
        the first and of the last `loss_steps` steps.
    """
    rows = steps = 0
    first, last = [], collections.deque(maxlen=loss_steps)
    warm = False
    sampler.progress(name, 0)
    began = time.perf_counter()
    for features, labels in dataset:
        loss = train_step(features, labels)
        batch = int(labels.shape[0])
        rows += batch
        steps += 1
        sampler.progress(name, rows)
        if len(first) < loss_steps:
            first.append(loss)
        last.append(loss)
        if not warm and rows >= warmup_rows:
            sampler.sample()  # the start sample, right at the end of warm-up
            warm = True
        if report_rows and rows // report_rows > (rows - batch) // report_rows:
            elapsed = time.perf_counter() - began
            print(f"  {name}: {rows:,} rows in {elapsed:.0f} s ({rows / elapsed:,.0f} "
                  f"rows/s), RSS {rss.rss_mib():.0f} MiB", flush=True)
    seconds = time.perf_counter() - began
    sampler.sample()  # the end sample

    def mean(losses):
        return float(np.mean([float(v) for v in losses])) if losses else None

    return {"rows": rows, "steps": steps, "seconds": round(seconds, 2),
            "rows_per_second": round(rows / seconds) if seconds else None,
            "loss_first_steps": mean(first), "loss_last_steps": mean(last)}


def run_phase(name, make_bundle, rows_requested, *, model_config, precision, batch_size,
              sampler, warmup_percent, flat_mib=rss.FLAT_MIB, loss_steps=LOSS_STEPS):
    """Builds a phase's data and model, trains on every row and analyzes RSS.

    Args:
        name: the phase name in samples and results.
        make_bundle: callable returning the phase's `recsys.data.DataBundle`
            (built while sampling, so setup memory shows in the samples at 0
            rows), whose training batches have `batch_size` rows, the last
            one possibly fewer.
        rows_requested: the training rows the bundle should yield.
        model_config: a `recsys.config.ModelConfig`.
        precision: a `tfbf16.study.precision.Precision` or its name.
        batch_size: rows per training batch.
        sampler: a started `rss.RssSampler`.
        warmup_percent: leading percentage of the rows that is warm-up.
        flat_mib: see `rss.analyze`.
        loss_steps: see `train_phase`.

    Returns:
        The phase's result dict: the `train_phase` and `rss.analyze` results,
        `rows_requested`, `setup_seconds`, `traces_while_measuring` (0 unless
        the step was traced again while measuring), and `input`: the train
        split of the bundle's input report (rows read, malformed lines).
    """
    sampler.progress(name, 0)
    sampler.sample()
    began = time.perf_counter()
    bundle = make_bundle()
    steps = math.ceil(rows_requested / batch_size)
    model = trainer.Trainer(
        model_config, bundle.vocab_sizes,
        config.TrainConfig(train_steps=steps, lr_schedule="constant"), precision)
    # Trace for the full and the last, partial batch now, not while measuring.
    for size in sorted({batch_size, rows_requested % batch_size} - {0}):
        model.train_step.get_concrete_function(
            *_batch_specs(bundle.train.element_spec, size))
    traces = model.train_step.experimental_get_tracing_count()
    setup_seconds = time.perf_counter() - began
    print(f"{name}: set up in {setup_seconds:.1f} s ({bundle.description}); "
          f"training on {rows_requested:,} rows ...", flush=True)

    warmup_rows = max(1, math.ceil(rows_requested * warmup_percent / 100))
    result = train_phase(name, bundle.train, model.train_step, sampler, warmup_rows,
                         report_rows=max(1, rows_requested // 10), loss_steps=loss_steps)
    result.update(rows_requested=int(rows_requested), setup_seconds=round(setup_seconds, 1),
                  traces_while_measuring=(model.train_step.experimental_get_tracing_count()
                                          - traces),
                  input=bundle.input_report()["train"])
    result.update(rss.analyze(*sampler.phase_samples(name), warmup_rows, flat_mib))
    if result["rows"] != rows_requested:
        print(f"WARNING: {name} trained on {result['rows']:,} rows, "
              f"{rows_requested:,} requested.", flush=True)
    sampler.progress(None, 0)
    del model, bundle
    gc.collect()
    return result


