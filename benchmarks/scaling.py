r"""Multi-worker scaling of DCN training: 1 worker against 2 local workers.

For each precision of `--precisions`, trains the study's DCN on the
synthetic stream for `--steps` steps, measured side by side in one run
(interleaved repetitions, median of each):

- "1 worker": `python -m recsys.train --strategy=default`, global batch
  `--batch_size`;
- "2 workers, same global batch" (strong scaling): a `LocalCluster` of two
  `recsys.train --strategy=multi_worker` processes on 127.0.0.1, each
  training on half of every global batch;
- "2 workers, 2x global batch" (weak scaling): each worker gets the
  1-worker batch.

From each run's `result.json` (the chief's): the steady-state training
examples/s (steps after the first, without evaluation or checkpoints) and
the input pipeline's share of the step time (the fraction of it the loop
spent waiting for the next batch). Beside them, the rows/s of one worker's
input pipeline alone (its shard of the synthetic stream, generated and
batched, no training), measured in this process.

Both workers run on this machine's cores, so on a 2-core machine two
workers share what one worker had: the ratio measures the cost of the
all-reduce and of splitting the cores, not the speed-up of a real cluster
with a machine per worker.

Usage: python -m benchmarks.scaling [--steps N] [--repeats R]
    [--precisions fp32,rne] [--batch_size B] [--vocab_scale S]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from recsys import precision as precision_lib
from recsys import trainer
from recsys.data import make_datasets
from recsys.local_cluster import REPO, LocalCluster

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 150, "Training steps per run.", lower_bound=3)
flags.DEFINE_integer("repeats", 2, "Interleaved repetitions of every configuration.",
                     lower_bound=1)
flags.DEFINE_list("precisions", ["fp32", "rne"], "Compute precisions to time.")
flags.DEFINE_integer("batch_size", trainer.DataConfig().batch_size,
                     "Global batch of the 1-worker run.", lower_bound=2)
flags.DEFINE_float("vocab_scale", trainer.DataConfig().vocab_scale,
                   "Cardinality scale of the synthetic stream.")
flags.DEFINE_bool("weak", True, "Also time 2 workers with twice the global batch.")
flags.DEFINE_string("output_dir", "benchmarks_output/scaling",
                    "Where the runs and scaling.json are written.")
flags.register_validator(
    "precisions", lambda ps: all(p in precision_lib.COMPUTE_PRECISIONS for p in ps),
    f"--precisions must be among {', '.join(precision_lib.COMPUTE_PRECISIONS)}.")

_TIMEOUT = 1800


def _train_args(model_dir, precision, batch_size, steps):
    return [f"--model_dir={model_dir}", f"--precision={precision}",
            f"--batch_size={batch_size}", f"--train_steps={steps}",
            f"--vocab_scale={FLAGS.vocab_scale}", "--eval_every=0", "--eval_rows=4096",
            f"--checkpoint_every={steps}", f"--log_every={steps}", "--notensorboard"]


def _result(model_dir):
    with open(os.path.join(model_dir, "result.json")) as f:
        return json.load(f)


def run_one_worker(model_dir, precision, batch_size, steps):
    """One `recsys.train` process; returns its result dict."""
    done = subprocess.run([sys.executable, "-m", "recsys.train",
                           *_train_args(model_dir, precision, batch_size, steps)],
                          cwd=REPO, capture_output=True, text=True, timeout=_TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"recsys.train failed:\n{done.stderr[-3000:]}")
    return _result(model_dir)


def run_two_workers(model_dir, precision, batch_size, steps):
    """Two `recsys.train --strategy=multi_worker` processes; the chief's result."""
    args = ["--strategy=multi_worker", *_train_args(model_dir, precision, batch_size, steps)]
    with LocalCluster(os.path.join(model_dir, "logs"), {"worker": 2}, "recsys.train",
                      args) as job:
        codes = job.wait(job.tasks, timeout=_TIMEOUT)
    if codes != [0, 0]:
        raise RuntimeError(f"multi-worker run failed {codes}:\n{job.tail()}")
    return _result(model_dir)


def input_rows_per_second(batch_size, shards, batches=60):
    """Rows/s of one shard's synthetic input pipeline alone (median of 3)."""
    dataset = make_datasets("synthetic", batch_size=batch_size // shards, seed=0,
                            eval_rows=4096, vocab_scale=FLAGS.vocab_scale,
                            num_shards=shards, shard_index=0).train
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in dataset.take(batches):
            pass
        rates.append(batches * (batch_size // shards) / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    batch = FLAGS.batch_size
    if batch % 2:
        raise app.UsageError("--batch_size must be even (two workers split it).")
    configs = [("1 worker", run_one_worker, batch),
               ("2 workers, same global batch", run_two_workers, batch)]
    if FLAGS.weak:
        configs.append(("2 workers, 2x global batch", run_two_workers, 2 * batch))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    measured = {}
    with tempfile.TemporaryDirectory(dir=FLAGS.output_dir) as tmp:
        for repeat in range(FLAGS.repeats):
            for precision in FLAGS.precisions:
                for index, (name, run, global_batch) in enumerate(configs):
                    model_dir = os.path.join(tmp, f"{precision}_config{index}_repeat{repeat}")
                    began = time.perf_counter()
                    result = run(model_dir, precision, global_batch, FLAGS.steps)
                    print(f"repeat {repeat}, {precision}, {name}: "
                          f"{result['steady_examples_per_second']:,.0f} ex/s, input wait "
                          f"{result['input_wait_fraction']:.1%} "
                          f"({time.perf_counter() - began:.0f} s with start-up)", flush=True)
                    measured.setdefault((precision, name), []).append(result)
    inputs = {1: input_rows_per_second(batch, 1), 2: input_rows_per_second(batch, 2)}

    rows, table = [], [
        "| precision | configuration | global batch | train ex/s | vs 1 worker | "
        "input wait share of step time |",
        "| --- | --- | --- | --- | --- | --- |"]
    for precision in FLAGS.precisions:
        base = statistics.median(r["steady_examples_per_second"]
                                 for r in measured[(precision, "1 worker")])
        for name, _, global_batch in configs:
            results = measured[(precision, name)]
            speed = statistics.median(r["steady_examples_per_second"] for r in results)
            wait = statistics.median(r["input_wait_fraction"] for r in results)
            rows.append({"precision": precision, "configuration": name,
                         "global_batch": global_batch, "examples_per_second": speed,
                         "ratio": speed / base, "input_wait_fraction": wait,
                         "repeats": [r["steady_examples_per_second"] for r in results]})
            table.append(f"| {precision} | {name} | {global_batch} | {speed:,.0f} | "
                         f"{speed / base:.2f} | {wait:.1%} |")
    print()
    print("\n".join(table))
    print(f"\nInput pipeline alone (synthetic stream, one worker's shard): "
          f"{inputs[1]:,.0f} rows/s with 1 worker, {inputs[2]:,.0f} rows/s for each "
          "of 2 workers (measured in this process, nothing else running in it).")
    with open(os.path.join(FLAGS.output_dir, "scaling.json"), "w") as f:
        json.dump({"steps": FLAGS.steps, "repeats": FLAGS.repeats, "rows": rows,
                   "input_rows_per_second": inputs,
                   "vocab_scale": FLAGS.vocab_scale}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
