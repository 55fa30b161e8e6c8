"""DCN training throughput per precision, beside the input pipeline's.

Measures, side by side in one run (interleaved repetitions, median of each):

- training examples/s of the study's DCN model for each precision of
  `--precisions` (fp32, and `tfbf16.wrap` with rne, trunc, native), twice:
  "compute" feeds batches already in memory (the model alone), "fed" feeds
  the synthetic input pipeline (what `recsys.train` sees);
- input rows/s of the synthetic generator alone and, with `--file_sources`,
  of the Criteo TSV reader and the TFRecord reader, using the file writer
  and pass timer of `benchmarks.recsys_input`.

The input pipeline limits training when its rows/s alone is not well above
the compute examples/s, or when "fed" is clearly below "compute"; the last
table says which is the case for every precision.

Usage: python -m benchmarks.recsys_throughput [--steps N] [--repeats R]
    [--precisions fp32,rne,trunc,native] [--file_sources] [--rows N]
    (--batch_size, --rows and --repeats are benchmarks.recsys_input's flags;
    --batch_size defaults to the study's 512 here.)
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from benchmarks import recsys_input
from recsys import flags_lib
from recsys import precision as precision_lib
from recsys import trainer
from recsys.data import make_datasets
from recsys.data import tfrecord

FLAGS = flags.FLAGS
flags_lib.define_model_flags()
flags.DEFINE_integer("steps", 60, "Timed training steps per repetition.",
                     lower_bound=1)
flags.DEFINE_list("precisions", ["fp32", "rne", "trunc", "native"],
                  "Precisions to time.")
flags.DEFINE_float("vocab_scale", trainer.DataConfig().vocab_scale,
                   "Cardinality scale of the synthetic stream.")
flags.DEFINE_bool("file_sources", False,
                  "Also time the Criteo TSV and TFRecord readers on a "
                  "generated file of --rows lines.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.register_validator(
    "precisions", lambda ps: all(p in precision_lib.COMPUTE_PRECISIONS for p in ps),
    f"--precisions must be among {', '.join(precision_lib.COMPUTE_PRECISIONS)}.")
FLAGS.set_default("batch_size", trainer.DataConfig().batch_size)
FLAGS.set_default("repeats", 3)

_EVAL_LINES = 1000


def _median_rate(count, seconds):
    return count / statistics.median(seconds)


def _train_step_of(model_config, vocab_sizes, precision):
    """The compiled training step of the model at `precision`."""
    return trainer.Trainer(model_config, vocab_sizes,
                           trainer.TrainConfig(jit_compile=FLAGS.jit_compile),
                           precision).train_step


def _time_training(step, batches):
    """Seconds to run `step` over an iterable of batches (synchronized)."""
    start = time.perf_counter()
    loss = None
    for features, labels in batches:
        loss = step(features, labels)
    float(loss)  # wait for the last step
    return time.perf_counter() - start


def _file_datasets(tmp):
    """TSV and TFRecord training datasets of a generated Criteo file."""
    tsv = os.path.join(tmp, "day_0.tsv")
    recsys_input.write_criteo_tsv(tsv, FLAGS.rows + _EVAL_LINES)
    prepared = os.path.join(tmp, "prepared")
    tfrecord.write_prepared(
        make_datasets("criteo", data_path=tsv, batch_size=4096,
                      eval_rows=_EVAL_LINES, drop_remainder=False),
        prepared, rows_per_shard=100_000)
    return {
        "criteo TSV": make_datasets("criteo", data_path=tsv,
                                    batch_size=FLAGS.batch_size,
                                    eval_rows=_EVAL_LINES).train,
        "tfrecord": make_datasets("tfrecord", data_path=prepared,
                                  batch_size=FLAGS.batch_size).train,
    }


def main(argv):
    del argv
    batch = FLAGS.batch_size
    steps = FLAGS.steps
    model_config = flags_lib.model_config()
    bundle = make_datasets("synthetic", batch_size=batch, eval_rows=batch,
                           vocab_scale=FLAGS.vocab_scale)
    # Distinct in-memory batches, so embedding rows vary as in real training.
    in_memory = list(bundle.train.take(steps))
    synthetic = bundle.train.take(steps)

    steps_of = {}
    for precision in FLAGS.precisions:
        started = time.perf_counter()
        steps_of[precision] = _train_step_of(model_config, bundle.vocab_sizes,
                                             precision)
        _time_training(steps_of[precision], in_memory[:2])  # trace, compile
        print(f"{precision}: built and traced in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = {"synthetic": synthetic}
        if FLAGS.file_sources:
            inputs.update({name: dataset.take(steps) for name, dataset in
                           _file_datasets(tmp).items()})
        for dataset in inputs.values():
            recsys_input.time_pass(dataset.take(2))  # warm up

        compute = {p: [] for p in steps_of}
        fed = {p: [] for p in steps_of}
        input_seconds = {name: [] for name in inputs}
        input_rows = {}
        for _ in range(FLAGS.repeats):
            for name, dataset in inputs.items():
                seconds, input_rows[name] = recsys_input.time_pass(dataset)
                input_seconds[name].append(seconds)
            for precision, step in steps_of.items():
                compute[precision].append(_time_training(step, in_memory))
                fed[precision].append(_time_training(step, synthetic))

    examples = steps * batch
    print(f"\nDCN model: {_describe(model_config)}; batch {batch}, {steps} "
          f"steps per pass, median of {FLAGS.repeats} interleaved passes, "
          f"{os.cpu_count()} CPUs, jit_compile={FLAGS.jit_compile}\n")
    print(f"{'input source':<14} {'rows/s':>12}")
    input_rate = {}
    for name in inputs:
        input_rate[name] = _median_rate(input_rows[name], input_seconds[name])
        print(f"{name:<14} {input_rate[name]:>12,.0f}")

    base = _median_rate(examples, compute["fp32"]) if "fp32" in compute else None
    print(f"\n{'precision':<10} {'compute ex/s':>13} {'vs fp32':>8} "
          f"{'fed ex/s':>10} {'fed/compute':>12}  input-bound?")
    for precision in steps_of:
        c = _median_rate(examples, compute[precision])
        f = _median_rate(examples, fed[precision])
        ratio = f"{c / base:.2f}x" if base else "-"
        bound = ("yes" if input_rate["synthetic"] < 1.5 * c or f < 0.9 * c
                 else "no")
        print(f"{precision:<10} {c:>13,.0f} {ratio:>8} {f:>10,.0f} "
              f"{f / c:>12.2f}  {bound}")
    print("\ninput-bound: synthetic rows/s alone < 1.5x compute ex/s, or fed "
          "< 0.9x compute.")


def _describe(m):
    rank = "full rank" if m.projection_dim is None else f"rank {m.projection_dim}"
    return (f"{m.structure}, {m.num_cross_layers} cross ({rank}), deep "
            f"{','.join(map(str, m.deep_layers)) or 'none'}, embedding "
            f"{m.embedding_dim}, vocab_scale {FLAGS.vocab_scale}")


if __name__ == "__main__":
    app.run(main)
