"""Input-pipeline throughput of the recsys data sources, side by side.

Prints the rows/second that `recsys.data` training batches deliver for

- "synthetic": the generated stream (--batch_size, --vocab_scale, --data_seed);
- "criteo TSV": a generated Criteo-format file of --rows training lines (plain
  text, realistic field shapes, some empty fields) in a temporary directory;
- "tfrecord": the same rows, prepared as `python -m recsys.prepare` does;

one full pass of each per round, in interleaved rounds (benchmarks/timing.py;
rows/s of the median pass, ratios: median of the per-round ratios). Then it
streams --memory_rows synthetic rows and says whether the resident memory
stayed flat after the first 10% (within 50 MiB) or grew.

Usage:

    python -m benchmarks.recsys_input [--rows=N] [--batch_size=B] [--rounds=R]
        [--memory_rows=N]
    python -m benchmarks.recsys_input --rows=20000 --rounds=2 --memory_rows=100000
"""

import os
import tempfile
import time

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from benchmarks import config_flags
from benchmarks import input_sources
from benchmarks import rss
from benchmarks import timing
from recsys import batches
from recsys import config
from tfbf16.utils import cli

FLAGS = flags.FLAGS
config_flags.define_config_flags(config.DataConfig, ["batch_size", "vocab_scale", "data_seed"])
flags.DEFINE_integer("rows", 200_000, "Training rows per pass (lines of the TSV file).",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds (one pass per source each).",
                     lower_bound=1)
flags.DEFINE_integer("memory_rows", 2_000_000, "Synthetic rows streamed for the "
                     "memory check (0 to skip).", lower_bound=0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    data_config = config_flags.config_from_flags(config.DataConfig)
    batch = data_config.batch_size
    if FLAGS.rows < batch:
        raise app.UsageError(f"--rows={FLAGS.rows} is less than one batch ({batch} rows).")
    print(f"load average at start: {timing.machine_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        files = input_sources.file_sources(tmp, FLAGS.rows, data_config)
        print(f"wrote {FLAGS.rows + input_sources.EVAL_LINES:,} TSV lines "
              f"({os.path.getsize(os.path.join(tmp, 'day_0.tsv')) / 2**20:.0f} MiB) and "
              f"prepared them as TFRecords in {time.perf_counter() - began:.1f} s")
        datasets = {"synthetic": batches.make_bundle(data_config).train.take(FLAGS.rows // batch),
                    **{name: bundle.train for name, bundle in files.items()}}
        rows = {name: input_sources.count_rows(d) for name, d in datasets.items()}  # warm-up
        results = timing.interleave(
            {name: (lambda d: lambda: input_sources.count_rows(d))(d)
             for name, d in datasets.items()},
            rounds=FLAGS.rounds, warmup=0)

    print(f"\nbatch size {batch}, {os.cpu_count()} CPUs, median of {FLAGS.rounds} "
          "interleaved passes\n")
    print(f"{'source':<12} {'rows/pass':>10} {'rows/s':>12} {'vs synthetic':>13}")
    base = results["synthetic"]
    for name, result in results.items():
        rate = rows[name] / result.median
        # rows/s ratio in each round: (rows / time) / (base rows / base time)
        ratio = rows[name] / rows["synthetic"] / result.ratio_to(base)
        print(f"{name:<12} {rows[name]:>10,} {rate:>12,.0f} {ratio:>12.2f}x")

    if FLAGS.memory_rows:
        stream = batches.make_bundle(data_config).train.take(FLAGS.memory_rows // batch)
        warmup_rows = max(1, FLAGS.memory_rows // 10)
        with rss.RssSampler(0.5) as sampler:
            consumed = 0
            for _, labels in stream:
                consumed += int(labels.shape[0])
                sampler.progress("synthetic", consumed)
                if consumed - int(labels.shape[0]) < warmup_rows <= consumed:
                    sampler.sample()  # the start sample
            sampler.sample()
        verdict = rss.analyze(*sampler.phase_samples("synthetic"), warmup_rows)
        print(f"\nsynthetic stream, {consumed:,} rows: resident memory "
              f"{verdict['start_mib']:.0f} MiB after 10%, {verdict['end_mib']:.0f} MiB at the "
              f"end (max {verdict['max_mib']:.0f}): {verdict['verdict']}")
    print(f"load average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
