"""Resident memory of the input pipeline and DCN training over long streams.

Trains the DCN (the real training step of `recsys.trainer.Trainer`) on every
row of two streams, one phase after the other in one process:

- "synthetic": the first --synthetic_rows rows of the synthetic stream;
- "criteo file": a generated Criteo-format TSV file of about --criteo_mib
  MiB (in a temporary directory), every line but the last 1,000 (its eval
  split).

A background thread samples the process's resident memory (VmRSS) every
--sample_seconds with the rows trained on so far. Per phase it reports the
RSS after warm-up (the first --warmup_percent of the rows), at the end, the
maximum, and the slope of a least-squares line of RSS against rows after
warm-up. Verdict: "flat" if RSS rose by less than --flat_mib after warm-up
(along the fitted line and from the start to the end sample), else "GROWS".

Writes `streaming_memory.json` (settings, per-phase results, every sample)
and `streaming_memory.png` (RSS against rows) into --output_dir;
--update_docs also writes the PNG to docs/streaming_memory.png.

Usage:

    python -m benchmarks.streaming_memory [--synthetic_rows=N] [--criteo_mib=MIB]
        [--precision=fp32] [--batch_size=B] [--vocab_scale=S] [--embedding_dim=D]
        [--num_cross_layers=L] [--deep_layers=128,64] [--output_dir=DIR]
    python -m benchmarks.streaming_memory --synthetic_rows=200000 --criteo_mib=20 \\
        --sample_seconds=0.2    # a quick run
"""

import dataclasses
import gc
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import config_flags  # noqa: E402
from benchmarks import criteo_files  # noqa: E402
from benchmarks import rss  # noqa: E402
from benchmarks import stream_training  # noqa: E402
from recsys import config  # noqa: E402
from tfbf16.study.precision import Precision  # noqa: E402
from tfbf16.utils import cli  # noqa: E402
from tfbf16.utils.files import atomic_write, write_json  # noqa: E402

FLAGS = flags.FLAGS
config_flags.define_config_flags(config.ModelConfig)
_DATA_FLAGS = ("batch_size", "vocab_scale", "data_seed")
config_flags.define_config_flags(config.DataConfig, _DATA_FLAGS)
# Criteo-size embedding tables (~416k ids): their memory is part of what is measured.
FLAGS.set_default("vocab_scale", 1.0)
flags.DEFINE_integer("synthetic_rows", 50_000_000,
                     "Synthetic rows to train on (0: skip this phase).", lower_bound=0)
flags.DEFINE_float("criteo_mib", 1024.0,
                   "Size of the generated Criteo TSV file in MiB (0: skip this phase).",
                   lower_bound=0.0)
flags.DEFINE_string("precision", "fp32",
                    "Training precision: fp32, rne, trunc, stochastic, native, or with "
                    "BF16 weights, e.g. rne+bf16w_kahan.")
flags.DEFINE_float("warmup_percent", 2.0,
                   "Leading percentage of each phase's rows treated as warm-up.",
                   lower_bound=0.0, upper_bound=50.0)
flags.DEFINE_float("sample_seconds", 1.0, "Seconds between RSS samples.",
                   lower_bound=0.01)
flags.DEFINE_float("flat_mib", rss.FLAT_MIB,
                   "A phase is 'flat' if RSS rose by less than this after warm-up.",
                   lower_bound=0.0)
flags.DEFINE_string("output_dir", "benchmarks_output/streaming_memory",
                    "Directory for streaming_memory.json and streaming_memory.png.")
flags.DEFINE_bool("update_docs", False, "Also write the PNG to docs/streaming_memory.png.")

EVAL_LINES = 1000  # lines held out at the end of the Criteo file
_DOCS_PNG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "docs", "streaming_memory.png")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.synthetic_rows and not FLAGS.criteo_mib:
        raise app.UsageError("Nothing to do: --synthetic_rows and --criteo_mib are both 0.")
    model_config = config_flags.config_from_flags(config.ModelConfig)
    data_config = config_flags.config_from_flags(config.DataConfig)
    precision = Precision.parse(FLAGS.precision).name
    batch = data_config.batch_size
    began = time.perf_counter()
    common = dict(model_config=model_config, precision=precision, batch_size=batch,
                  warmup_percent=FLAGS.warmup_percent, flat_mib=FLAGS.flat_mib)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, rss.RssSampler(FLAGS.sample_seconds) as sampler:
        print(f"RSS {rss.rss_mib():.0f} MiB after imports", flush=True)
        if FLAGS.synthetic_rows:
            rows = FLAGS.synthetic_rows
            results["synthetic"] = stream_training.run_phase(
                "synthetic", lambda: stream_training.synthetic_bundle(data_config, rows),
                rows, sampler=sampler, **common)
        if FLAGS.criteo_mib:
            written = time.perf_counter()
            path = os.path.join(tmp, "day_0.tsv")
            lines, size = criteo_files.write_criteo_tsv_of_size(
                path, FLAGS.criteo_mib, min_lines=EVAL_LINES + batch,
                seed=data_config.data_seed)
            write_seconds = time.perf_counter() - written
            print(f"wrote {lines:,} Criteo TSV lines ({size / 2**20:,.0f} MiB) in "
                  f"{write_seconds:.0f} s", flush=True)
            gc.collect()
            results["criteo file"] = stream_training.run_phase(
                "criteo file",
                lambda: stream_training.criteo_bundle(data_config, path, EVAL_LINES),
                lines - EVAL_LINES, sampler=sampler, **common)
            results["criteo file"].update(file_lines=lines, file_bytes=size,
                                          write_seconds=round(write_seconds, 1))
    total = time.perf_counter() - began

    title = (f"Resident memory while streaming and training ({os.cpu_count()} CPUs)\n"
             f"{model_config.describe()}; batch {batch}, {precision}")
    print(f"\n{title}; {total / 60:.1f} min in all\n")
    print(f"{'phase':<12} {'rows':>12} {'rows/s':>8} {'start MiB':>10} {'end MiB':>8} "
          f"{'max MiB':>8} {'rise MiB':>9} {'MiB/10M rows':>13}  verdict")
    for name, r in results.items():
        print(f"{name:<12} {r['rows']:>12,} {r['rows_per_second'] or 0:>8,} "
              f"{r['start_mib']:>10.0f} {r['end_mib']:>8.0f} {r['max_mib']:>8.0f} "
              f"{r['rise_mib']:>+9.0f} {r['slope_mib_per_10m_rows']:>+13.2f}  {r['verdict']}")
    print(f"\nstart: after the first {FLAGS.warmup_percent:g}% of a phase's rows; slope: "
          "least-squares fit after warm-up; flat: RSS rose by less than "
          f"{FLAGS.flat_mib:g} MiB after warm-up (fitted line and end - start).")

    report = {
        "settings": {"synthetic_rows": FLAGS.synthetic_rows, "criteo_mib": FLAGS.criteo_mib,
                     "precision": precision,
                     "data": {name: getattr(data_config, name) for name in _DATA_FLAGS},
                     "model": dataclasses.asdict(model_config),
                     "warmup_percent": FLAGS.warmup_percent,
                     "sample_seconds": FLAGS.sample_seconds, "flat_mib": FLAGS.flat_mib,
                     "cpus": os.cpu_count()},
        "total_seconds": round(total, 1),
        "phases": results,
        "samples": sampler.samples,
    }
    json_path = os.path.join(FLAGS.output_dir, "streaming_memory.json")
    write_json(json_path, report, allow_nan=True)
    png_path = os.path.join(FLAGS.output_dir, "streaming_memory.png")
    rss.plot(sampler.samples, results, png_path, title)
    print(f"\nwrote {json_path} and {png_path}")
    if FLAGS.update_docs:
        with open(png_path, "rb") as source, atomic_write(_DOCS_PNG, "wb") as target:
            target.write(source.read())
        print(f"wrote the plot to {_DOCS_PNG}")


if __name__ == "__main__":
    cli.run(main)
