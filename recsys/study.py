r"""The BF16 sensitivity study: FP32 vs BF16 roundings on the DCN click model.

Trains every precision of `--precisions` for every seed of `--seeds` and
compares their eval log loss. The design is paired: for a given seed every
precision starts from the same initial weights and reads the same training
batches in the same order, and every run is scored on the same eval rows, so
the per-seed differences `precision - fp32` cancel what the runs share. For
each precision the study reports the mean eval log loss with its t interval
over seeds, the mean paired difference to FP32 with its interval, and whether
the difference reaches `--threshold` (0.001 log loss: what the DCN papers
call practically significant on Criteo).

Outputs in `--output_dir` (written atomically):

- `results.json`: the configuration, the input report (rows read and
  malformed lines per data split), one record per (precision, seed) and the
  summary per precision;
- `results.md`: the summary as a Markdown table (also printed at the end);
- `study.png`: eval log loss over training, the paired differences over
  training and the final paired differences with their intervals;
- `runs/<precision>_seed<seed>/`: each run's directory (`recsys.train`).

Started again with the same flags, a study resumes: finished runs are
loaded, an unfinished one continues from its last checkpoint. A run
directory of other settings or other input data is refused, naming what
differs (`--overwrite` retrains it). Runs evaluated on different rows are
never paired.

Usage:

    python -m recsys.study                      # the default study
    python -m recsys.study --seeds=0,1,2 --precisions=fp32,rne,trunc,stochastic
    python -m recsys.study --precisions=fp32,rne --weights_precision=fp32,bf16 \
        --update_rounding=rne,stochastic,kahan --output_dir=study_bf16_weights
    python -m recsys.study --data=criteo --data_path=train.txt \
        --embedding_dim=39 --train_steps=100000 --output_dir=criteo_study

Run `python -m recsys.study --helpfull` for every flag.
"""

import dataclasses
import os
import time

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from absl import app
from absl import flags
from absl import logging
import numpy as np

from tfbf16.study import plots
from tfbf16.study import stats
from tfbf16.study import summary as summary_lib
from tfbf16.utils import cli
from tfbf16.utils import files

from recsys import batches
from recsys import config as config_lib
from recsys import distribute
from recsys import flags_lib
from recsys import memory
from tfbf16.study import precision as precision_lib
from recsys import trainer
from recsys.data import accounting

FLAGS = flags.FLAGS

flags_lib.define_common_flags()
flags.adopt_module_key_flags(flags_lib)  # --help lists them too
flags.DEFINE_list("precisions", ["fp32", "rne", "trunc"],
                  "Comma-separated compute precisions to compare; must include "
                  "fp32 (the baseline). Choices: "
                  f"{', '.join(precision_lib.COMPUTE_PRECISIONS)}; a full name "
                  "such as rne+bf16w_kahan (BF16 weights) is taken as it is.")
flags.DEFINE_list("weights_precision", ["fp32"],
                  "Weight storage to run each compute precision with: fp32 "
                  "(FP32 master weights) and/or bf16 (weights stored in BF16 "
                  "after every update, one run per --update_rounding).")
flags.DEFINE_list("update_rounding", None,
                  "With bf16 in --weights_precision: the update roundings to "
                  f"compare, from {', '.join(precision_lib.UPDATE_ROUNDINGS)} "
                  "(default rne).")
flags.DEFINE_list("seeds", [str(s) for s in range(8)],
                  "Comma-separated model initialization seeds (the paired replicates).")
flags.DEFINE_string("output_dir", "study_output",
                    "Directory for results.json, results.md, study.png and the runs; "
                    "an interrupted study there is resumed.")
flags.DEFINE_float("threshold", 0.001, "Practically significant log-loss difference (> 0).")
flags.DEFINE_float("confidence", stats.CONFIDENCE,
                   "Level of every confidence interval, strictly between 0 and 1.")
flags.DEFINE_bool("progress", True, "Show a progress bar for each run.")
flags.DEFINE_list("pairs", [],
                  "Extra paired comparisons between two precisions of --precisions, as "
                  "a:b for a − b (e.g. native:rne: does the emulation predict real "
                  "bfloat16 hardware?).")
flags.register_validator("threshold", lambda v: v > 0,
                         "--threshold must be > 0 (a log-loss difference, e.g. 0.001).")
flags.register_validator("confidence", lambda v: 0 < v < 1,
                         "--confidence must be strictly between 0 and 1 (e.g. 0.95).")

#: The study's metrics: log loss against the threshold, AUC, calibration.
LOG_LOSS = summary_lib.Metric("log_loss", higher_is_better=False, label="eval log loss",
                              digits=5)
AUC = summary_lib.Metric("auc", higher_is_better=True, label="AUC", digits=5)
CALIBRATION = summary_lib.Metric("calibration", higher_is_better=False,
                                 label="calibration", digits=4, paired=False)
# Every run reads the same training batches; up to this many rows (~2.2 GB)
# they are made once and kept in memory.
MAX_CACHED_TRAIN_ROWS = 1 << 23


def metrics_for(threshold):
    """The study's `Metric`s, log loss with `threshold`."""
    return [dataclasses.replace(LOG_LOSS, threshold=threshold), AUC, CALIBRATION]


def check_precisions(precisions, weights_precisions=("fp32",), update_roundings=None):
    """Validates and expands a study's precisions (`precision.expand`).

    Returns:
        The list of precision names, the FP32 baseline first.
    """
    return [p.name for p in precision_lib.expand(precisions, weights_precisions,
                                                 update_roundings)]


def check_seeds(seeds):
    """Validates a study's seed list; returns it as a list of int."""
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"--seeds must be integers, got {list(seeds)}.") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: give at least one seed, all >= 0; got {seeds}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeat: {seeds}.")
    return seeds


def run_study(data_config, model_config, train_config, *, precisions, seeds,
              output_dir, weights_precisions=("fp32",), update_roundings=None,
              threshold=0.001, confidence=stats.CONFIDENCE, pairs=(), verbose=1,
              distribution=None, memory_check=True, overwrite=False):
    """Trains every (precision, seed) pair and summarizes the comparison.

    Args:
        data_config: a `recsys.config.DataConfig`.
        model_config: a `recsys.config.ModelConfig`.
        train_config: a `recsys.config.TrainConfig`.
        precisions: precisions to compare, including "fp32" (compute
            precisions, or full names such as "rne+bf16w_kahan").
        seeds: model initialization seeds (paired replicates).
        output_dir: where runs and results are written (see module doc).
        weights_precisions: "fp32" and/or "bf16": each compute precision
            runs with each weight storage (see `precision.expand`).
        update_roundings: the update roundings of BF16-weights runs (None:
            "rne").
        threshold: the practically significant log loss difference (> 0).
        confidence: the level of every interval.
        pairs: extra paired comparisons `(a, b)` of two precisions (a − b),
            reported under "pairs" in the results.
        verbose: 1 for a progress bar per run.
        distribution: a `recsys.distribute.Distribution` to train every run
            under (None: the default strategy); with several workers, each
            runs this function and the chief writes the outputs.
        memory_check: estimate the memory of the largest run first and
            raise `MemoryError` if it cannot fit (`recsys.memory`).
        overwrite: retrain runs whose directory holds another identity
            (else they are refused).

    Returns:
        The results dict written to `results.json`: "config", "data",
        "input" (per data split: rows read and malformed lines), "runs"
        (one record per precision and seed), "summary" (the
        `tfbf16.study.summary.summarize` dict), "history" (the paired
        differences over training) and "runtime_seconds".

    Example:

    >>> results = run_study(DataConfig(), ModelConfig(), TrainConfig(),
    ...                     precisions=["fp32", "rne"], seeds=[0, 1],
    ...                     output_dir="/tmp/study")
    >>> results["summary"]["precisions"]["rne"]["log_loss"]["difference"]["mean"]
    """
    # The baseline first, so that every seed's BF16 runs have their pair.
    ordered = check_precisions(precisions, weights_precisions, update_roundings)
    seeds = check_seeds(seeds)
    pairs = check_pairs(pairs, ordered)
    metrics = metrics_for(threshold)
    stats.check_confidence(confidence)
    began = time.perf_counter()
    if distribution is None:
        distribution = distribute.make_distribution("default")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output_dir={output_dir} is a file; give a directory.")
    os.makedirs(output_dir, exist_ok=True)
    bundle = batches.with_cached_eval(batches.make_bundle(data_config, distribution))
    logging.info("Data: %s", bundle.description)
    if memory_check:
        # Kahan's buffer makes a BF16-weights run the largest.
        largest = max(ordered, key=lambda p: memory.estimate(
            model_config, bundle.vocab_sizes, p, distribution).per_process_peak_bytes)
        memory.check_fits(model_config, bundle.vocab_sizes, largest, distribution)
    train_rows = train_config.train_steps * data_config.batch_size
    if train_rows <= MAX_CACHED_TRAIN_ROWS:
        bundle = batches.with_cached_train(bundle, train_config.train_steps)
    else:
        logging.info("Training rows (%d) are not cached in memory (more than %d); "
                     "every run makes them again.", train_rows, MAX_CACHED_TRAIN_ROWS)
    logging.info("Input: %s", bundle.describe_input())
    trainers = {}  # one per kind of precision, reused across seeds
    runs = []
    for seed in seeds:
        initial = None
        for precision in ordered:
            logging.info("Training %s, seed %d", precision, seed)
            parsed = precision_lib.Precision.parse(precision)
            rounding_seed = seed if trainer.needs_rounding_seed(parsed, distribution) else None
            kind = (parsed.trainer_kind, rounding_seed)
            if kind not in trainers:
                trainers[kind] = trainer.Trainer(model_config, bundle.vocab_sizes,
                                                 train_config, precision, distribution,
                                                 rounding_seed)
            if initial is None:
                initial = trainers[kind].initial_weights(seed)
            result = trainers[kind].run(
                bundle, data_config, precision=precision, seed=seed,
                initial_weights=initial, verbose=verbose, overwrite=overwrite,
                model_dir=os.path.join(output_dir, "runs", f"{precision}_seed{seed}"))
            runs.append(run_record(result))
    summary = summary_lib.summarize(
        runs, precisions=ordered, seeds=seeds, metrics=metrics, confidence=confidence,
        pairing_within_seed=("initial_weights",), pairing_everywhere=("eval_rows",))
    results = {
        "config": {
            "data": dataclasses.asdict(data_config),
            "model": dataclasses.asdict(model_config),
            "train": dataclasses.asdict(train_config),
            "precisions": ordered,
            "precision_descriptions": {
                p: precision_lib.Precision.parse(p).describe() for p in ordered},
            "seeds": seeds,
            "threshold": threshold,
            "confidence": confidence,
        },
        "data": bundle.description,
        "input": bundle.input_report(),
        "runs": runs,
        "summary": summary,
        "history": summary_lib.summarize_history(
            runs, precisions=ordered, seeds=seeds, metric=metrics[0],
            confidence=confidence),
        "convergence": convergence(runs, ordered, seeds, train_config, confidence),
        "pairs": {f"{a} − {b}": summary_lib.summarize(
            runs, precisions=[b, a], seeds=seeds, metrics=metrics, baseline=b,
            confidence=confidence, pairing_within_seed=("initial_weights",),
            pairing_everywhere=("eval_rows",))["precisions"][a] for a, b in pairs},
        "runtime_seconds": time.perf_counter() - began,
    }
    if distribution.is_chief:
        write_results(results, output_dir)
    return results


def check_pairs(pairs, precisions):
    """Validates extra pairs ("a:b" strings or (a, b) tuples); returns tuples."""
    checked = []
    for pair in pairs:
        a, _, b = pair.partition(":") if isinstance(pair, str) else (pair[0], ":", pair[1])
        if a not in precisions or b not in precisions or a == b:
            raise ValueError(f"--pairs entry {pair!r} must name two different precisions of "
                             f"--precisions ({', '.join(precisions)}) as a:b.")
        checked.append((a, b))
    return checked


def convergence(runs, precisions, seeds, train_config, confidence):
    """The change of eval log loss over the last 20% of training, per precision.

    Between the last evaluation at or before 80% of the steps and the end
    (None without evaluations there).
    """
    steps, _ = train_config.evaluation_steps()
    end = train_config.train_steps
    earlier = [s for s in steps if s <= 0.8 * end]
    if end not in steps or not earlier or earlier[-1] == 0:
        return None
    return summary_lib.summarize_change(runs, precisions=precisions, seeds=seeds,
                                        metric=LOG_LOSS, from_step=earlier[-1], to_step=end,
                                        confidence=confidence)


def run_record(result):
    """The study's record of one `Trainer.run` result."""
    final = result["final"]
    record = {"precision": result["precision"], "seed": result["seed"],
              "steps": result["steps"]}
    record.update({k: final[k] for k in ("log_loss", "auc", "calibration",
                                         "mean_prediction", "mean_label", "count")})
    record.update({k: result[k] for k in ("train_seconds", "examples_per_second",
                                          "resumed_from", "loaded", "input")})
    record["pairing"] = {
        "eval_rows": f"{final['count']} rows, sha256 {final['rows_sha256']}",
        "initial_weights": result["initial_weights_sha256"],
    }
    record["history"] = [{"step": h["step"], "log_loss": h["log_loss"]}
                         for h in result["history"]]
    return record


def _speeds(results):
    speeds = {}
    for precision in results["config"]["precisions"]:
        values = [r["examples_per_second"] for r in results["runs"]
                  if r["precision"] == precision and r["examples_per_second"]]
        speeds[precision] = f"{np.mean(values):,.0f}" if values else "-"
    return speeds


def format_markdown(results):
    """The study's summary as Markdown: settings, input, table and reading."""
    cfg = results["config"]
    summary = results["summary"]
    threshold = cfg["threshold"]
    level = f"{cfg['confidence']:.0%}"
    counts = sorted({r["count"] for r in results["runs"]})
    lines = [
        "# BF16 sensitivity study: DCN-V2 eval log loss",
        "",
        f"Data: {results['data']}",
        "",
        f"Input: {accounting.describe_report(results['input'])}.",
        "",
        f"Model: {config_lib.ModelConfig(**cfg['model']).describe()}; Adam lr "
        f"{cfg['train']['learning_rate']:g} ({cfg['train']['lr_schedule']}), batch "
        f"{cfg['data']['batch_size']}, {cfg['train']['train_steps']} steps; eval on "
        f"{', '.join(f'{c:,}' for c in counts)} rows (requested "
        f"{cfg['data']['eval_rows']:,}); seeds {', '.join(str(s) for s in cfg['seeds'])} "
        "(paired: same initial weights, data order and eval rows for every precision).",
        "",
        summary_lib.format_table(summary, extra_columns={"train ex/s": _speeds(results)}),
    ]
    descriptions = cfg.get("precision_descriptions", {})
    legend = "; ".join(f"{p}: {descriptions[p]}" for p in cfg["precisions"] if p in descriptions)
    unresolved = [p for p, _ in summary_lib.unresolved(summary)]
    loaded = sum(bool(r.get("loaded")) for r in results["runs"])
    runtime = f"Runtime: {results['runtime_seconds']:.0f} s"
    if loaded:
        runtime += (f" ({loaded} of {len(results['runs'])} runs were loaded from an "
                    "earlier invocation with the same settings and input, not trained)")
    for name, cells in results.get("pairs", {}).items():
        loss = cells["log_loss"]
        lines += ["", f"Paired {name}: Δ eval log loss "
                  f"{summary_lib.format_difference(loss['difference'], 5)}, {loss['verdict']}."]
    if results.get("convergence"):
        changes = "; ".join(
            f"{p} {summary_lib.format_difference(c['change'], 5)}"
            for p, c in results["convergence"].items())
        first = next(iter(results["convergence"].values()))
        lines += ["", f"Change of eval log loss from step {first['from_step']} to "
                  f"{first['to_step']} (the last 20% of training; {level} CI): {changes}."]
    lines += [
        "",
        f"Precisions: {legend}.",
        "",
        f"Δ = mean over seeds of (precision − FP32) for the same seed; intervals are "
        f"two-sided {level} Student t intervals over {len(cfg['seeds'])} seeds. "
        f"Practically significant: abs(mean Δ) ≥ {threshold:g} (DCN papers, Criteo).",
        "",
        ("Resolution: every Δ log loss interval has half-width ≤ "
         f"{threshold / 2:g}." if not unresolved else
         f"Resolution: the Δ log loss interval of {', '.join(unresolved)} is wider "
         f"than ± {threshold / 2:g}; add seeds to resolve {threshold:g}."),
        "",
        runtime + ".",
    ]
    return "\n".join(lines) + "\n"


def write_results(results, output_dir):
    """Writes results.json, results.md and study.png to `output_dir`, atomically."""
    files.write_json(os.path.join(output_dir, "results.json"), results)
    with files.atomic_write(os.path.join(output_dir, "results.md")) as f:
        f.write(format_markdown(results))
    metric = summary_lib.Metric.from_config(results["summary"]["metrics"][0])
    log_steps = bool(results["config"]["train"].get("eval_points"))
    plots.save_study_plot(os.path.join(output_dir, "study.png"), results["summary"],
                          results["runs"], metric, history=results["history"],
                          log_steps=log_steps, title="DCN-V2 BF16 sensitivity study")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    data_config, model_config, train_config, distribution_config = (
        flags_lib.configs_from_flags())
    precisions = check_precisions(FLAGS.precisions, FLAGS.weights_precision,
                                  FLAGS.update_rounding)
    seeds = check_seeds(FLAGS.seeds)
    pairs = check_pairs(FLAGS.pairs, precisions)
    distribution = distribute.start(distribution_config)
    results = run_study(
        data_config, model_config, train_config, precisions=precisions, seeds=seeds,
        output_dir=FLAGS.output_dir, threshold=FLAGS.threshold,
        confidence=FLAGS.confidence, pairs=pairs,
        verbose=int(FLAGS.progress and distribution.is_chief),
        distribution=distribution, memory_check=FLAGS.memory_check,
        overwrite=FLAGS.overwrite)
    if not distribution.is_chief:
        return
    print(format_markdown(results))
    print(f"Written to {FLAGS.output_dir}/: results.json, results.md, study.png")


if __name__ == "__main__":
    cli.run(main, resumable=True)
