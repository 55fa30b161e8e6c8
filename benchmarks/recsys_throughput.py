"""DCN training throughput per precision, beside the input pipeline's.

Measures side by side, in interleaved rounds (benchmarks/timing.py; medians):

- training examples/s of the DCN (the model flags) at each precision of
  --precisions (the training step of `recsys.trainer.Trainer`), twice:
  "compute" feeds --steps batches already in memory (the model alone), "fed"
  reads them from the input pipeline of the data flags (what `recsys.train`
  sees; the synthetic stream by default, or --data=criteo/tfrecord with
  --data_path);
- input rows/s of that pipeline alone and, with --file_sources, of the
  Criteo TSV reader and the TFRecord reader on a generated file of --rows
  lines.

Training is input-bound when the pipeline's rows/s alone is not well above
the compute examples/s, or when "fed" is clearly below "compute"; the last
table says which is the case for every precision.

Usage:

    python -m benchmarks.recsys_throughput [--steps=N] [--rounds=R]
        [--precisions=fp32,rne,trunc,native] [--file_sources] [--rows=N]
        [--batch_size=B] [--embedding_dim=D] [--deep_layers=...] [--jit_compile]
    python -m benchmarks.recsys_throughput --steps=5 --rounds=1 --precisions=fp32,rne \\
        --batch_size=512    # a quick run
"""

import os
import tempfile
import time

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from benchmarks import config_flags
from benchmarks import input_sources
from benchmarks import stream_training
from benchmarks import timing
from recsys import batches
from recsys import config
from recsys import trainer
from tfbf16.study.precision import Precision
from tfbf16.utils import cli

FLAGS = flags.FLAGS
config_flags.define_config_flags(config.DataConfig)
config_flags.define_config_flags(config.ModelConfig)
config_flags.define_config_flags(config.TrainConfig, ["jit_compile"])
flags.DEFINE_integer("steps", 60, "Timed training steps per pass.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds (one pass of each "
                     "measurement per round).", lower_bound=1)
flags.DEFINE_list("precisions", ["fp32", "rne", "trunc", "native"],
                  "Precisions to time: fp32, rne, trunc, stochastic, native, or with BF16 "
                  "weights, e.g. rne+bf16w_kahan.")
flags.DEFINE_bool("file_sources", False,
                  "Also time the Criteo TSV and TFRecord readers on a generated file of "
                  "--rows lines.")
flags.DEFINE_integer("rows", 200_000, "With --file_sources: training lines of the "
                     "generated file.", lower_bound=1)


def _run_steps(step, batches_):
    """Runs `step` on every batch; returns once the last step has finished."""
    loss = None
    for features, labels in batches_:
        loss = step(features, labels)
    float(loss)  # wait for the last step (returns None: timed from outside)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    data_config = config_flags.config_from_flags(config.DataConfig)
    model_config = config_flags.config_from_flags(config.ModelConfig)
    train_config = config_flags.config_from_flags(config.TrainConfig, lr_schedule="constant")
    precisions = [Precision.parse(p).name for p in FLAGS.precisions]
    if len(set(precisions)) != len(precisions):
        raise app.UsageError(f"--precisions names one twice: {','.join(precisions)}.")
    steps = FLAGS.steps
    print(f"load average at start: {timing.machine_load()}")
    bundle = batches.make_bundle(data_config)
    fed = bundle.train.take(steps)
    # Distinct in-memory batches, so embedding rows vary as in real training.
    in_memory = list(fed)
    if len(in_memory) < steps:
        raise ValueError(f"The input has only {len(in_memory)} training batches of "
                         f"{data_config.batch_size} rows; lower --steps.")
    examples = input_sources.count_rows(in_memory)

    candidates = {}
    for name in precisions:
        started = time.perf_counter()
        step = trainer.Trainer(model_config, bundle.vocab_sizes, train_config,
                               name).train_step
        _run_steps(step, in_memory[:2])  # trace, compile
        print(f"{name}: built and traced in {time.perf_counter() - started:.1f} s",
              flush=True)
        candidates[f"compute/{name}"] = (lambda s: lambda: _run_steps(s, in_memory))(step)
        candidates[f"fed/{name}"] = (lambda s: lambda: _run_steps(s, fed))(step)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = {data_config.source: fed}
        if FLAGS.file_sources:
            inputs.update({name: b.train.take(steps) for name, b in
                           input_sources.file_sources(tmp, FLAGS.rows, data_config).items()})
        input_rows = {name: input_sources.count_rows(d) for name, d in inputs.items()}
        candidates.update({f"input/{name}": (lambda d: lambda: input_sources.count_rows(d))(d)
                           for name, d in inputs.items()})
        results = timing.interleave(candidates, rounds=FLAGS.rounds, warmup=0)

    print(f"\n{model_config.describe()}; batch "
          f"{data_config.batch_size}, {steps} steps per pass, median of {FLAGS.rounds} "
          f"interleaved passes, {os.cpu_count()} CPUs, jit_compile={train_config.jit_compile}")
    print(f"input: {bundle.description}\n")
    print(f"{'input source':<14} {'rows/s':>12}")
    input_rate = {}
    for name in inputs:
        input_rate[name] = input_rows[name] / results[f"input/{name}"].median
        print(f"{name:<14} {input_rate[name]:>12,.0f}")

    base = results.get("compute/fp32")
    print(f"\n{'precision':<16} {'compute ex/s':>13} {'vs fp32':>8} "
          f"{'fed ex/s':>10} {'fed/compute':>12}  input-bound?")
    for name in precisions:
        compute, fed_result = results[f"compute/{name}"], results[f"fed/{name}"]
        c = examples / compute.median
        f = examples / fed_result.median
        # Speed ratios: the inverse of the median per-round time ratio.
        ratio = f"{1 / compute.ratio_to(base):.2f}x" if base else "-"
        fed_share = 1 / fed_result.ratio_to(compute)
        bound = ("yes" if input_rate[data_config.source] < 1.5 * c or fed_share < 0.9
                 else "no")
        print(f"{name:<16} {c:>13,.0f} {ratio:>8} {f:>10,.0f} {fed_share:>12.2f}  {bound}")
    print(f"\ninput-bound: {data_config.source} rows/s alone < 1.5x compute ex/s, or fed "
          "< 0.9x compute.")
    print(f"load average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
