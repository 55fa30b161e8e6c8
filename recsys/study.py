r"""The BF16 sensitivity study: FP32 vs BF16 roundings on the DCN click model.

Trains every precision of `--precisions` for every seed of `--seeds` and
compares their eval log loss. The design is paired: for a given seed every
precision starts from the same initial weights (copied from one FP32 model)
and reads the same training batches in the same order, and all runs share
one eval set, so the per-seed differences `precision - fp32` cancel the
seed-to-seed variation that the runs share. For each precision the study
reports the mean eval log loss with its 95% t interval over seeds, the mean
paired difference to FP32 with its 95% t interval, and whether the
difference reaches the 0.001 log loss that the DCN papers call practically
significant on Criteo.

Outputs in `--output_dir`:

- `results.json`: the configuration, one record per (precision, seed)
  (eval log loss, AUC, calibration, learning curve, speed) and the summary
  per precision;
- `results.md`: the summary as a Markdown table (also printed at the end);
- `study.png`: eval log loss over training per precision and the paired
  differences to FP32 with their intervals;
- `runs/<precision>_seed<seed>/`: each run's checkpoints and TensorBoard
  logs. A study that is interrupted and started again with the same flags
  resumes: finished runs are loaded, an unfinished one resumes from its last
  checkpoint.

Seeds vary the initial weights; the training stream (`--data_seed`) and the
eval set are the same for every run.

Default configuration, and why
------------------------------
Data: the synthetic Criteo-like stream of data seed 0 at `vocab_scale=0.1`
(41,741 ids, click rate 0.247, ground-truth log loss 0.3825), 2**18 eval
rows. Model: DCN-V2 stacked, 2 full-rank cross layers, deep 128-64,
embedding 8 (x0 width 221, ~470k parameters). Training: Adam, peak learning
rate 0.004 with cosine decay to 0, batch 2048, 300 steps (614k rows). Eight
seeds; fp32, rne, trunc. Measured with it (2 cores, little else running):
8 min 20 s wall, 589 CPU-seconds; FP32 eval log loss 0.4245, AUC 0.8235.
Again on 2026-12-01 with nothing else running: 4 min 38 s wall (the same
FP32 results; RNE - FP32 -0.00007 [-0.00046, +0.00032], TRUNC - FP32
+0.00019 [-0.00009, +0.00047]; see the README).

Why. What limits precision is not the eval set but training itself: a
BF16 run starts from the FP32 run's weights and data, but its first rounded
step perturbs the trajectory, training amplifies the perturbation, and at
the end the two runs differ by chance. Measured here (per-seed BF16 - FP32
differences): their standard deviation was 0.0005-0.0008 for batch 512 and
1000 steps (constant or cosine learning rate, 41k or 8k ids), and 0.0004-
0.0005 for the default (0.00051 rne, 0.00042 trunc over 8 seeds), against
0.0024 between FP32 runs of different seeds (pairing removes ~80% of the
noise). Evaluation adds little: from the per-example losses, the sampling
error of a paired difference on 2**18 rows is 0.00007-0.00009. So the
half-width is about t(0.975, n-1) * 0.0005 / sqrt(n) for n seeds: 0.00062
for 5 seeds, 0.00052 for 6, 0.00042 for 8, hence 8 seeds (measured: 0.00043
rne, 0.00035 trunc). The 10 minutes then leave ~60 s per seed for three
runs, which sets the training length: 614k rows at batch 2048 (on this CPU
batch 2048 trains ~1.4x more rows per second than 512). Batch 512 for 1000
steps reached a lower loss (0.4165-0.418 with cosine decay from 0.002) but
was no quieter and is slower; 400 steps of batch 2048 reached 0.412-0.415
with similar noise but does not fit eight seeds. The runs are far from the
ground truth: the study measures BF16 on a partly trained model, as in the
first epoch of a real Criteo run.

Usage:

    python -m recsys.study                      # the default study, ~8 min
    python -m recsys.study --seeds=0,1,2 --precisions=fp32,rne,trunc,stochastic
    python -m recsys.study --data=criteo --data_path=train.txt \
        --embedding_dim=39 --train_steps=100000 --output_dir=criteo_study
"""

import dataclasses
import json
import os
import time

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from recsys import flags_lib
from recsys import memory
from recsys import precision as precision_lib
from recsys import stats
from recsys import trainer

FLAGS = flags.FLAGS

flags_lib.define_common_flags()
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
                  "Comma-separated model initialization seeds (the paired "
                  "replicates).")
flags.DEFINE_string("output_dir", "study_output",
                    "Directory for results.json, results.md, study.png and "
                    "the runs; an interrupted study there is resumed.")
flags.DEFINE_float("threshold", 0.001,
                   "Practically significant log-loss difference.")
flags.DEFINE_bool("progress", True, "Show a progress bar for each run.")

THRESHOLD = 0.001
CONFIDENCE = 0.95
# Every run reads the same training batches; up to this many rows (~1.1 GB)
# they are made once and kept in memory.
MAX_CACHED_TRAIN_ROWS = 1 << 22
METRICS = ("log_loss", "auc", "calibration")


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
        raise ValueError(f"Seeds must be integers, got {seeds}.") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"Give at least one seed, all >= 0; got {seeds}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds repeat: {seeds}.")
    return seeds


def _validator(check):
    def validate(value):
        try:
            check(value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    return validate


flags.register_multi_flags_validator(
    ["precisions", "weights_precision", "update_rounding"],
    _validator(lambda f: check_precisions(f["precisions"], f["weights_precision"],
                                          f["update_rounding"])))
flags.register_validator("seeds", _validator(check_seeds))


def run_study(data_config, model_config, train_config, *, precisions, seeds,
              output_dir, weights_precisions=("fp32",), update_roundings=None,
              data_seed=0, threshold=THRESHOLD, verbose=1, distribution=None,
              memory_check=True):
    """Trains every (precision, seed) pair and summarizes the comparison.

    Args:
        data_config: a `trainer.DataConfig`.
        model_config: a `trainer.ModelConfig`.
        train_config: a `trainer.TrainConfig`.
        precisions: precisions to compare, including "fp32" (compute
            precisions, or full names such as "rne+bf16w_kahan").
        seeds: model initialization seeds (paired replicates).
        weights_precisions: "fp32" and/or "bf16": each compute precision
            runs with each weight storage (see `precision.expand`).
        update_roundings: the update roundings of BF16-weights runs (None:
            "rne").
        output_dir: where runs and results are written (see module doc).
        data_seed: the data seed shared by all runs.
        threshold: the practically significant log loss difference.
        verbose: 1 for a progress bar per run.
        distribution: a `recsys.distribute.Distribution` to train every run
            under (None: the default strategy); with several workers, each
            runs this function and the chief writes the outputs.
        memory_check: estimate the memory of the largest run first and
            raise `MemoryError` if it cannot fit (`recsys.memory`).

    Returns:
        The results dict written to `results.json`: "config", "data",
        "runs" (one record per precision and seed), "summary" (per
        precision) and "runtime_seconds".

    Example:

    >>> results = run_study(trainer.DataConfig(), trainer.ModelConfig(),
    ...                     trainer.TrainConfig(), precisions=["fp32", "rne"],
    ...                     seeds=[0, 1], output_dir="/tmp/study")
    >>> sorted(results["summary"]["rne"]["log_loss_difference"])
    ['confidence', 'half_width', 'high', 'low', 'mean', 'n', 'std']
    """
    # The baseline first, so that every seed's BF16 runs have their pair.
    ordered = check_precisions(precisions, weights_precisions, update_roundings)
    seeds = check_seeds(seeds)
    began = time.perf_counter()
    tf.io.gfile.makedirs(output_dir)
    bundle = trainer.with_cached_eval(data_config.make_bundle(
        seed=data_seed, distribution=distribution))
    logging.info("Data: %s", bundle.description)
    if memory_check:
        # Kahan's buffer makes a BF16-weights run the largest.
        largest = max(ordered, key=lambda p: memory.estimate(
            model_config, bundle.vocab_sizes, p, distribution).per_process_peak_bytes)
        memory.check_fits(model_config, bundle.vocab_sizes, largest, distribution)
    train_rows = train_config.train_steps * data_config.batch_size
    if train_rows <= MAX_CACHED_TRAIN_ROWS:
        bundle = trainer.with_cached_train(bundle, train_config.train_steps)
    else:
        logging.info("Training rows (%d) are not cached in memory (more than "
                     "%d); every run makes them again.", train_rows,
                     MAX_CACHED_TRAIN_ROWS)
    trainers = {}  # one per kind of precision, reused across seeds
    runs = []
    for seed in seeds:
        initial = model_config.build(bundle.vocab_sizes, seed=seed).get_weights()
        for precision in ordered:
            logging.info("Training %s, seed %d", precision, seed)
            kind = precision_lib.Precision.parse(precision).trainer_kind
            if kind not in trainers:
                trainers[kind] = trainer.Trainer(
                    model_config, bundle.vocab_sizes, train_config, precision,
                    distribution)
            result = trainers[kind].run(
                bundle, precision=precision, seed=seed, data_seed=data_seed,
                initial_weights=initial, verbose=verbose,
                model_dir=os.path.join(output_dir, "runs",
                                       f"{precision}_seed{seed}"))
            runs.append(_run_record(result))
    results = {
        "config": {
            "data": dataclasses.asdict(data_config),
            "data_seed": data_seed,
            "model": dataclasses.asdict(model_config),
            "train": dataclasses.asdict(train_config),
            "precisions": ordered,
            "precision_descriptions": {
                p: precision_lib.Precision.parse(p).describe() for p in ordered},
            "seeds": seeds,
            "threshold": threshold,
            "confidence": CONFIDENCE,
        },
        "data": bundle.description,
        "runs": runs,
        "summary": summarize(runs, ordered, seeds, threshold),
        "runtime_seconds": time.perf_counter() - began,
    }
    if distribution is None or distribution.is_chief:
        write_results(results, output_dir)
    return results


def _run_record(result):
    final = result["final"]
    record = {"precision": result["precision"], "seed": result["seed"],
              "steps": result["steps"]}
    record.update({k: final[k] for k in METRICS + ("mean_prediction",
                                                   "mean_label", "count")})
    record.update({k: result[k] for k in ("train_seconds",
                                          "examples_per_second",
                                          "resumed_from", "loaded")})
    record["history"] = [{"step": h["step"], "log_loss": h["log_loss"]}
                         for h in result["history"]]
    return record


def summarize(runs, precisions, seeds, threshold=THRESHOLD,
              confidence=CONFIDENCE):
    """Per-precision means and paired differences to FP32.

    Args:
        runs: records with "precision", "seed" and the `METRICS`.
        precisions: the precisions, "fp32" included.
        seeds: the seeds; every (precision, seed) must have a record.
        threshold: the practically significant log loss difference.
        confidence: the interval level.

    Returns:
        `{precision: {"seeds", "log_loss", "auc", "calibration"` (each an
        `Interval` dict), and for the non-baseline precisions
        `"log_loss_difference", "auc_difference"` (paired, `Interval` dicts),
        `"practically_significant"` (|mean log loss difference| >=
        threshold), `"resolved"` (interval half-width <= threshold / 2) and
        `"verdict"` (a sentence)}`.
    """
    table = {(r["precision"], r["seed"]): r for r in runs}
    missing = [(p, s) for p in precisions for s in seeds if (p, s) not in table]
    if missing:
        raise ValueError(f"Missing runs for (precision, seed): {missing}.")

    def values(precision, metric):
        return [table[(precision, s)][metric] for s in seeds]

    summary = {}
    for precision in precisions:
        speeds = [table[(precision, s)].get("examples_per_second") for s in seeds]
        speeds = [v for v in speeds if v]
        entry = {"seeds": len(seeds),
                 "examples_per_second": float(np.mean(speeds)) if speeds else None}
        for metric in METRICS:
            entry[metric] = stats.mean_interval(values(precision, metric),
                                                confidence).as_dict()
        if precision != precision_lib.BASELINE:
            diff = stats.paired_difference(values(precision, "log_loss"),
                                           values(precision_lib.BASELINE, "log_loss"),
                                           confidence)
            entry["log_loss_difference"] = diff.as_dict()
            entry["auc_difference"] = stats.paired_difference(
                values(precision, "auc"), values(precision_lib.BASELINE, "auc"),
                confidence).as_dict()
            entry["practically_significant"] = bool(abs(diff.mean) >= threshold)
            entry["resolved"] = bool(diff.half_width <= threshold / 2)
            entry["verdict"] = verdict(diff, threshold)
        summary[precision] = entry
    return summary


def verdict(diff, threshold=THRESHOLD):
    """A one-line reading of a paired log loss difference interval."""
    if diff.n < 2:
        return "one seed: no interval"
    if diff.low >= threshold:
        return f"worse than FP32 by >= {threshold:g}"
    if diff.high <= -threshold:
        return f"better than FP32 by >= {threshold:g}"
    if -threshold < diff.low and diff.high < threshold:
        side = ("worse" if diff.low > 0 else "better" if diff.high < 0
                else "no difference")
        note = "" if side == "no difference" else f" (but {side} than FP32)"
        return f"within {threshold:g} of FP32{note}"
    return f"inconclusive at {threshold:g}"


def _pm(interval, digits=5):
    if interval["n"] < 2:
        return f"{interval['mean']:.{digits}f}"
    return f"{interval['mean']:.{digits}f} ± {interval['half_width']:.{digits}f}"


def _signed(interval, digits=5):
    text = f"{interval['mean']:+.{digits}f}"
    if interval["n"] >= 2:
        text += f" [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"
    return text


def format_markdown(results):
    """The study's summary as Markdown: settings, table and reading."""
    cfg = results["config"]
    summary = results["summary"]
    threshold = cfg["threshold"]
    level = f"{cfg['confidence']:.0%}"
    lines = [
        "# BF16 sensitivity study: DCN-V2 eval log loss",
        "",
        f"Data: {results['data']}",
        "",
        f"Model: {_describe_model(cfg['model'])}; Adam lr "
        f"{cfg['train']['learning_rate']:g}, batch {cfg['data']['batch_size']}, "
        f"{cfg['train']['train_steps']} steps; eval on "
        f"{results['runs'][0]['count']:,} rows; seeds "
        f"{', '.join(str(s) for s in cfg['seeds'])} (paired: same initial "
        "weights and data order for every precision).",
        "",
        f"| precision | eval log loss (mean ± {level} CI) | Δ log loss vs FP32 "
        f"[{level} CI] | abs(Δ) ≥ {threshold:g} | reading | AUC | Δ AUC vs FP32 "
        "| calibration | train ex/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for precision in cfg["precisions"]:
        s = summary[precision]
        if precision == precision_lib.BASELINE:
            diff = significant = reading = auc_diff = "(baseline)"
        else:
            diff = _signed(s["log_loss_difference"])
            significant = "yes" if s["practically_significant"] else "no"
            reading = s["verdict"]
            auc_diff = _signed(s["auc_difference"])
        lines.append(
            f"| {precision} | {_pm(s['log_loss'])} | {diff} | {significant} | "
            f"{reading} | {_pm(s['auc'])} | {auc_diff} | "
            f"{_pm(s['calibration'], 4)} | {_speed(s['examples_per_second'])} |")
    descriptions = cfg.get("precision_descriptions", {})
    legend = "; ".join(f"{p}: {descriptions[p]}" for p in cfg["precisions"]
                       if p in descriptions)
    unresolved = [p for p in cfg["precisions"] if p != precision_lib.BASELINE
                  and not summary[p]["resolved"]]
    loaded = sum(bool(r.get("loaded")) for r in results["runs"])
    runtime = f"Runtime: {results['runtime_seconds']:.0f} s"
    if loaded:
        runtime += (f" ({loaded} of {len(results['runs'])} runs were loaded "
                    "from an earlier invocation, not trained)")
    lines += [
        "",
        f"Precisions: {legend}.",
        "",
        f"Δ = mean over seeds of (precision − FP32) for the same seed; "
        f"intervals are two-sided {level} Student t intervals over "
        f"{len(cfg['seeds'])} seeds. Practically significant: "
        f"abs(mean Δ) ≥ {threshold:g} (DCN papers, Criteo).",
        "",
        ("Resolution: every Δ interval has half-width ≤ "
         f"{threshold / 2:g}." if not unresolved else
         f"Resolution: the Δ interval of {', '.join(unresolved)} is wider "
         f"than ± {threshold / 2:g}; add seeds to resolve {threshold:g}."),
        "",
        runtime + ".",
    ]
    return "\n".join(lines) + "\n"


def _speed(examples_per_second):
    return "-" if examples_per_second is None else f"{examples_per_second:,.0f}"


def _describe_model(m):
    rank = ("full rank" if m["projection_dim"] is None
            else f"rank {m['projection_dim']}")
    deep = ",".join(str(u) for u in m["deep_layers"]) or "none"
    return (f"DCN-V2 {m['structure']}, {m['num_cross_layers']} cross layers "
            f"({rank}), deep {deep}, embedding {m['embedding_dim']}")


def plot(results, path):
    """Saves the learning curves and paired differences as a PNG.

    Left: eval log loss (periodic evaluations) over training steps, mean over
    seeds per precision. Middle: the paired difference to FP32 over training.
    Right: the final paired differences with their intervals and the
    practically significant band.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cfg = results["config"]
    precisions, seeds = cfg["precisions"], cfg["seeds"]
    threshold = cfg["threshold"]
    runs = {(r["precision"], r["seed"]): r for r in results["runs"]}

    def curve(precision):
        steps = [h["step"] for h in runs[(precision, seeds[0])]["history"]]
        losses = np.array([[h["log_loss"] for h in runs[(precision, s)]["history"]]
                           for s in seeds])
        return np.array(steps), losses

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {p: f"C{i}" for i, p in enumerate(precisions)}
    base_steps, base = curve(precision_lib.BASELINE)
    for precision in precisions:
        steps, losses = curve(precision)
        if not len(steps):
            continue
        axes[0].plot(steps, losses.mean(0), color=colors[precision],
                     label=precision)
        if precision != precision_lib.BASELINE and losses.shape == base.shape:
            axes[1].plot(steps, (losses - base).mean(0),
                         color=colors[precision], label=precision)
    axes[0].set(xlabel="training step", ylabel="eval log loss (subset)",
                title="Eval log loss over training (mean over seeds)")
    if len(base_steps) > 2:
        tail = base[:, len(base_steps) // 4:]
        axes[0].set_ylim(tail.min() - 0.005, tail.max() + 0.01)
    axes[0].legend()
    axes[1].axhline(0.0, color="k", lw=0.8)
    for sign in (1, -1):
        axes[1].axhline(sign * threshold, color="gray", ls="--", lw=0.8)
    axes[1].set(xlabel="training step", ylabel="Δ eval log loss vs FP32 (subset)",
                title="Paired difference over training (mean over seeds)")
    others = [p for p in precisions if p != precision_lib.BASELINE]
    if others:
        axes[1].legend()

    for i, precision in enumerate(others):
        d = results["summary"][precision]["log_loss_difference"]
        err = None if d["n"] < 2 else [[d["mean"] - d["low"]], [d["high"] - d["mean"]]]
        axes[2].errorbar([i], [d["mean"]], yerr=err, fmt="o", capsize=6,
                         color=colors[precision])
        for s in seeds:
            axes[2].plot([i + 0.15], [runs[(precision, s)]["log_loss"]
                                      - runs[(precision_lib.BASELINE, s)]["log_loss"]],
                         ".", color=colors[precision], alpha=0.5)
    axes[2].axhline(0.0, color="k", lw=0.8)
    axes[2].axhspan(-threshold, threshold, color="gray", alpha=0.15,
                    label=f"|Δ| < {threshold:g}")
    crowded = sum(len(p) for p in others) > 30
    axes[2].set_xticks(range(len(others)), others, rotation=20 if crowded else 0,
                       ha="right" if crowded else "center")
    axes[2].set_xlim(-0.5, max(len(others), 1) - 0.5)
    axes[2].set(ylabel="final Δ eval log loss vs FP32 (whole eval set)",
                title=f"Paired differences, {cfg['confidence']:.0%} t intervals "
                      f"({len(seeds)} seeds)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results, output_dir):
    """Writes results.json, results.md and study.png to `output_dir`."""
    with tf.io.gfile.GFile(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(format_markdown(results))
    plot(results, os.path.join(output_dir, "study.png"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    distribution = flags_lib.make_distribution()
    try:
        results = run_study(
            flags_lib.data_config(), flags_lib.model_config(),
            flags_lib.train_config(), precisions=FLAGS.precisions,
            weights_precisions=FLAGS.weights_precision,
            update_roundings=FLAGS.update_rounding,
            seeds=FLAGS.seeds, output_dir=FLAGS.output_dir,
            data_seed=FLAGS.data_seed, threshold=FLAGS.threshold,
            verbose=int(FLAGS.progress and distribution.is_chief),
            distribution=distribution, memory_check=FLAGS.memory_check)
    except MemoryError as e:
        raise SystemExit(f"recsys.study: {e}") from None
    if not distribution.is_chief:
        return
    print(format_markdown(results))
    print(f"Written to {FLAGS.output_dir}/: results.json, results.md, study.png")


if __name__ == "__main__":
    app.run(main)
