r"""Multi-worker scaling of DCN training: 1 worker against 2 local workers.

For each precision of --precisions, trains the DCN (the model flags) on the
synthetic stream for --steps steps, every configuration once per round, in
interleaved rounds (benchmarks/timing.py; medians over rounds):

- "1 worker": `python -m recsys.train --strategy=default`, global batch
  --batch_size;
- "2 workers, same global batch" (strong scaling): a `LocalCluster` of two
  `recsys.train --strategy=multi_worker` processes on 127.0.0.1, each
  training on half of every global batch;
- "2 workers, 2x global batch" (weak scaling, --weak): each worker gets the
  1-worker batch.

From each run's `result.json` (the chief's): the steady-state training
examples/s (steps after the first, without evaluation or checkpoints) and
the share of that time the loop waited for the input pipeline. Beside them,
the rows/s of one worker's input pipeline alone (its shard of the synthetic
stream, no training), measured in this process.

Both workers run on this machine's cores, so on a 2-core machine two workers
share what one worker had: the ratio measures the cost of the all-reduce and
of splitting the cores, not the speed-up of a cluster with a machine per
worker. Writes `scaling.json` into --output_dir.

Usage:

    python -m benchmarks.scaling [--steps=N] [--rounds=R] [--precisions=fp32,rne]
        [--batch_size=B] [--vocab_scale=S] [--[no]weak] [--output_dir=DIR]
    python -m benchmarks.scaling --steps=3 --rounds=1 --precisions=fp32 \
        --batch_size=256 --noweak    # a quick run
"""

import dataclasses
import itertools
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from benchmarks import config_flags
from benchmarks import input_sources
from benchmarks import timing
from recsys import config
from recsys import data as data_lib
from recsys.local_cluster import REPO, LocalCluster
from tfbf16.study.precision import Precision
from tfbf16.utils import cli
from tfbf16.utils.files import read_json, write_json

FLAGS = flags.FLAGS
_DATA_FLAGS = ("batch_size", "vocab_scale", "data_seed")
config_flags.define_config_flags(config.DataConfig, _DATA_FLAGS)
config_flags.define_config_flags(config.ModelConfig)
flags.DEFINE_integer("steps", 150, "Training steps per run.", lower_bound=3)
flags.DEFINE_integer("rounds", 2, "Interleaved rounds: every configuration runs once in "
                     "each.", lower_bound=1)
flags.DEFINE_list("precisions", ["fp32", "rne"],
                  "Compute precisions to time (fp32, rne, trunc, stochastic, native).")
flags.DEFINE_bool("weak", True, "Also time 2 workers with twice the global batch.")
flags.DEFINE_string("output_dir", "benchmarks_output/scaling",
                    "Where the runs (in a temporary directory) and scaling.json are written.")

_TIMEOUT = 1800
_EVAL_ROWS = 4096  # the final evaluation of every run (not timed)
_INPUT_BATCHES = 60  # batches per pass of the input-alone measurement


def _train_args(model_dir, precision, data_config, model_config, steps):
    return [f"--model_dir={model_dir}", f"--precision={precision}",
            *config_flags.flag_args(data_config, _DATA_FLAGS),
            *config_flags.flag_args(model_config),
            f"--eval_rows={_EVAL_ROWS}", f"--train_steps={steps}", "--eval_every=0",
            f"--checkpoint_every={steps}", f"--log_every={steps}", "--notensorboard"]


def _result(model_dir):
    result = read_json(os.path.join(model_dir, "result.json"), missing_ok=False)
    if result.get("loaded") or not result.get("steady_examples_per_second"):
        raise RuntimeError(f"{model_dir}: the run was not trained here or has no "
                           "steady-state timing.")
    return result


def run_one_worker(model_dir, args):
    """One `recsys.train` process; returns its result dict."""
    done = subprocess.run([sys.executable, "-m", "recsys.train", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=_TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"recsys.train failed:\n{done.stderr[-3000:]}")
    return _result(model_dir)


def run_two_workers(model_dir, args):
    """Two `recsys.train --strategy=multi_worker` processes; the chief's result."""
    # The logs go beside the run directory: recsys.train refuses a directory
    # that holds files of an unknown run.
    with LocalCluster(f"{model_dir}_logs", {"worker": 2}, "recsys.train",
                      ["--strategy=multi_worker", *args]) as job:
        codes = job.wait(job.tasks, timeout=_TIMEOUT)
    if codes != [0, 0]:
        raise RuntimeError(f"multi-worker run failed {codes}:\n{job.tail()}")
    return _result(model_dir)


def input_timings(data_config, rounds):
    """Interleaved `Timing`s of one shard's synthetic input pipeline alone,
    with 1 and with 2 workers; returns (timings, rows per pass)."""
    dc = data_config
    candidates, rows = {}, {}
    for shards in (1, 2):
        dataset = data_lib.make_datasets(
            "synthetic", batch_size=dc.batch_size // shards, seed=dc.data_seed,
            eval_rows=_EVAL_ROWS, vocab_scale=dc.vocab_scale, num_shards=shards,
            shard_index=0).train.take(_INPUT_BATCHES)
        rows[shards] = input_sources.count_rows(dataset)  # and warm up
        candidates[shards] = (lambda d: lambda: input_sources.count_rows(d))(dataset)
    return timing.interleave(candidates, rounds=rounds, warmup=0), rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    data_config = config_flags.config_from_flags(config.DataConfig)
    model_config = config_flags.config_from_flags(config.ModelConfig)
    precisions = [Precision.parse(p) for p in FLAGS.precisions]
    for p in precisions:
        if p.weights != "fp32":
            raise app.UsageError(f"--precisions: {p.name} has BF16 weights, which "
                                 "recsys.train does not run on several workers.")
    batch = data_config.batch_size
    if batch % 2:
        raise app.UsageError("--batch_size must be even (two workers split it).")
    configs = [("1 worker", run_one_worker, batch),
               ("2 workers, same global batch", run_two_workers, batch)]
    if FLAGS.weak:
        configs.append(("2 workers, 2x global batch", run_two_workers, 2 * batch))
    steps = FLAGS.steps
    print(f"load average at start: {timing.machine_load()}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {}  # (precision, configuration) -> result dicts, one per round
    run_number = itertools.count()

    def candidate(directory, precision, name, run, global_batch):
        run_config = dataclasses.replace(data_config, batch_size=global_batch)

        def one_run():
            # A new directory every time: a finished run would be loaded, not trained.
            model_dir = os.path.join(directory, f"run{next(run_number)}")
            result = run(model_dir, _train_args(model_dir, precision.name, run_config,
                                                model_config, steps))
            results.setdefault((precision.name, name), []).append(result)
            print(f"{precision.name}, {name}: {result['steady_examples_per_second']:,.0f} "
                  f"ex/s, input wait {result['input_wait_fraction']:.1%}", flush=True)
            # The run's steady-state seconds: what the rounds compare.
            return timing.SelfTimed(
                (steps - 1) * global_batch / result["steady_examples_per_second"])

        return one_run

    with tempfile.TemporaryDirectory(dir=FLAGS.output_dir) as tmp:
        timings = timing.interleave(
            {(p.name, name): candidate(tmp, p, name, run, global_batch)
             for p in precisions for name, run, global_batch in configs},
            rounds=FLAGS.rounds, warmup=0)
    inputs, input_rows = input_timings(data_config, rounds=3)

    rows, table = [], [
        "| precision | configuration | global batch | train ex/s | vs 1 worker | "
        "input wait share of step time |",
        "| --- | --- | --- | --- | --- | --- |"]
    for p in precisions:
        base = timings[(p.name, "1 worker")]
        for name, _, global_batch in configs:
            measured = results[(p.name, name)]
            speed = statistics.median(r["steady_examples_per_second"] for r in measured)
            # examples/s ratio in each round: (batch ratio) / (time ratio)
            ratio = global_batch / batch / timings[(p.name, name)].ratio_to(base)
            wait = statistics.median(r["input_wait_fraction"] for r in measured)
            rows.append({"precision": p.name, "configuration": name,
                         "global_batch": global_batch, "examples_per_second": speed,
                         "ratio": ratio, "input_wait_fraction": wait,
                         "rounds": [r["steady_examples_per_second"] for r in measured]})
            table.append(f"| {p.name} | {name} | {global_batch} | {speed:,.0f} | "
                         f"{ratio:.2f} | {wait:.1%} |")
    input_rate = {shards: input_rows[shards] / inputs[shards].median for shards in (1, 2)}
    print("\n" + "\n".join(table))
    print(f"\nInput pipeline alone (synthetic stream, one worker's shard): "
          f"{input_rate[1]:,.0f} rows/s with 1 worker, {input_rate[2]:,.0f} rows/s for each "
          "of 2 workers (measured in this process, nothing else running in it).")
    print(f"load average at end: {timing.machine_load()}")
    write_json(os.path.join(FLAGS.output_dir, "scaling.json"), {
        "steps": steps, "rounds": FLAGS.rounds, "rows": rows,
        "input_rows_per_second": input_rate,
        "data": {name: getattr(data_config, name) for name in _DATA_FLAGS},
        "model": dataclasses.asdict(model_config)})


if __name__ == "__main__":
    cli.run(main)
