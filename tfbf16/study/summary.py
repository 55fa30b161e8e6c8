"""Summaries of a paired-seed study: per precision and metric, means and
paired differences to the baseline, with their intervals and verdicts.

A study is a set of runs, one per (precision, seed). Every run is a dict with
"precision", "seed" and a float per metric name (more keys are ignored). For
a seed, every precision started from the same initial weights and read the
same batches, so `value(precision, seed) - value(baseline, seed)` is a paired
difference. `summarize` refuses to pair runs that were not comparable: a
missing run, a non-finite value, or runs whose `pairing` values differ (e.g.
runs evaluated on different rows, or started from different weights).

Example:

>>> metrics = [Metric("log_loss", higher_is_better=False, threshold=0.001)]
>>> summary = summarize(runs, precisions=["fp32", "rne"], seeds=[0, 1, 2],
...                     metrics=metrics)
>>> summary["precisions"]["rne"]["log_loss"]["difference"]["mean"]
>>> print(format_table(summary))
"""

import dataclasses
import math

from tfbf16.study import stats

#: The baseline every study compares against.
BASELINE = "fp32"


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric a study reports.

    Attributes:
        name: the key of the metric in each run.
        higher_is_better: its direction (accuracy: True, log loss: False).
        label: its name in tables and plots (default: `name`).
        digits: decimals shown in tables.
        threshold: the smallest paired difference that matters; with it,
            every difference gets a verdict ("within 0.001 of FP32", ...).
            None: report only.
        paired: whether tables show the paired difference to the baseline
            (False for descriptive metrics such as calibration).
    """

    name: str
    higher_is_better: bool
    label: str = None
    digits: int = 4
    threshold: float = None
    paired: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A metric needs a name (str); got {self.name!r}.")
        if self.label is None:
            object.__setattr__(self, "label", self.name)
        if self.threshold is not None and not (
                isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                and self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"The threshold of metric {self.name!r} must be a number > 0 "
                             f"(or None to report only); got {self.threshold!r}.")

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_runs(runs, precisions, seeds, metrics, baseline):
    if baseline not in precisions:
        raise ValueError(f"The precisions {list(precisions)} must include the baseline "
                         f"{baseline!r}.")
    if len(set(precisions)) != len(precisions) or len(set(seeds)) != len(seeds):
        raise ValueError(f"Precisions and seeds must not repeat: {list(precisions)}, "
                         f"{list(seeds)}.")
    table = {}
    for run in runs:
        key = (run["precision"], run["seed"])
        if key in table:
            raise ValueError(f"Two runs of precision {key[0]!r}, seed {key[1]}.")
        table[key] = run
    missing = [(p, s) for p in precisions for s in seeds if (p, s) not in table]
    if missing:
        raise ValueError(f"Missing runs for (precision, seed): {missing}.")
    for (precision, seed), run in table.items():
        if precision not in precisions or seed not in seeds:
            continue
        for metric in metrics:
            value = run.get(metric.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Run {precision} seed {seed} has no finite "
                                 f"{metric.name!r} (got {value!r}).")
    return table


def check_pairing(table, precisions, seeds, within_seed=(), everywhere=()):
    """Raises ValueError if runs that are paired were not comparable.

    Args:
        table: {(precision, seed): run}; a run's "pairing" dict holds the
            values compared.
        precisions, seeds: the runs to check.
        within_seed: pairing keys that must be equal for every precision of
            a seed (e.g. the hash of the initial weights).
        everywhere: pairing keys that must be equal for every run (e.g. the
            fingerprint of the evaluation rows).
    """

    def value(run, key):
        return (run.get("pairing") or {}).get(key)

    for key in everywhere:
        first = table[(precisions[0], seeds[0])]
        for p in precisions:
            for s in seeds:
                if value(table[(p, s)], key) != value(first, key):
                    raise ValueError(
                        f"Refusing to pair runs that differ in {key}: {p} seed {s} has "
                        f"{value(table[(p, s)], key)!r}, {precisions[0]} seed {seeds[0]} has "
                        f"{value(first, key)!r}. Every run of a study must be evaluated on "
                        "the same rows; rerun the odd ones in a fresh output directory.")
    for key in within_seed:
        for s in seeds:
            first = table[(precisions[0], s)]
            for p in precisions[1:]:
                if value(table[(p, s)], key) != value(first, key):
                    raise ValueError(
                        f"Refusing to pair runs of seed {s} that differ in {key}: {p} has "
                        f"{value(table[(p, s)], key)!r}, {precisions[0]} has "
                        f"{value(first, key)!r}.")


def summarize(runs, *, precisions, seeds, metrics, baseline=BASELINE,
              confidence=stats.CONFIDENCE, pairing_within_seed=(), pairing_everywhere=()):
    """Per precision and metric: the mean, and the paired difference to the baseline.

    Args:
        runs: run dicts ("precision", "seed", one float per metric name, and
            optionally "pairing": {key: value}).
        precisions: the precisions, the baseline included.
        seeds: the seeds; every (precision, seed) needs a run.
        metrics: `Metric`s.
        baseline: the precision differences are taken to.
        confidence: the level of every interval.
        pairing_within_seed, pairing_everywhere: see `check_pairing`.

    Returns:
        A JSON-ready dict: "baseline", "confidence", "seeds", "metrics"
        (their configs) and "precisions": {precision: {metric name: {"mean":
        interval dict, and for other precisions than the baseline
        "difference": interval dict of the paired difference, and with a
        threshold "verdict" (a sentence), "significant" (abs(mean
        difference) >= threshold) and "resolved" (half-width <= threshold /
        2)}}}.

    Raises:
        ValueError: for missing, duplicate or non-finite runs, or runs that
            cannot be paired.
    """
    precisions, seeds = list(precisions), list(seeds)
    metrics = [m if isinstance(m, Metric) else Metric(**m) for m in metrics]
    stats.check_confidence(confidence)
    table = _check_runs(runs, precisions, seeds, metrics, baseline)
    check_pairing(table, precisions, seeds, pairing_within_seed, pairing_everywhere)

    def values(precision, metric):
        return [table[(precision, s)][metric.name] for s in seeds]

    by_precision = {}
    for precision in precisions:
        entry = {}
        for metric in metrics:
            cell = {"mean": stats.mean_interval(values(precision, metric), confidence).as_dict()}
            if precision != baseline:
                difference = stats.paired_difference(
                    values(precision, metric), values(baseline, metric), confidence)
                cell["difference"] = difference.as_dict()
                if metric.threshold is not None:
                    cell["verdict"] = stats.verdict(
                        difference, metric.threshold, metric.higher_is_better,
                        baseline=baseline.upper())
                    cell["significant"] = bool(abs(difference.mean) >= metric.threshold)
                    cell["resolved"] = bool(difference.half_width <= metric.threshold / 2)
            entry[metric.name] = cell
        by_precision[precision] = entry
    return {
        "baseline": baseline,
        "confidence": confidence,
        "seeds": seeds,
        "metrics": [m.get_config() for m in metrics],
        "precisions": by_precision,
    }


def summarize_history(runs, *, precisions, seeds, metric, baseline=BASELINE,
                      confidence=stats.CONFIDENCE):
    """The paired difference to the baseline at every step of the runs' histories.

    Each run has "history": a list of {"step": int, <metric>: float}. Only
    steps that every run of the study evaluated are summarized.

    Returns:
        {precision: [{"step": s, "mean": interval dict, "difference":
        interval dict (not for the baseline)}]}, by increasing step.
    """
    metric = metric if isinstance(metric, Metric) else Metric(**metric)
    table = {(r["precision"], r["seed"]): r for r in runs}
    curves = {}
    for key in ((p, s) for p in precisions for s in seeds):
        if key not in table:
            raise ValueError(f"Missing run for (precision, seed) {key}.")
        curves[key] = {h["step"]: h[metric.name] for h in table[key].get("history", [])
                       if h.get(metric.name) is not None}
    common = set.intersection(*(set(c) for c in curves.values())) if curves else set()
    result = {}
    for precision in precisions:
        points = []
        for step in sorted(common):
            values = [curves[(precision, s)][step] for s in seeds]
            point = {"step": int(step),
                     "mean": stats.mean_interval(values, confidence).as_dict()}
            if precision != baseline:
                point["difference"] = stats.paired_difference(
                    values, [curves[(baseline, s)][step] for s in seeds], confidence).as_dict()
            points.append(point)
        result[precision] = points
    return result


def summarize_change(runs, *, precisions, seeds, metric, from_step, to_step,
                     confidence=stats.CONFIDENCE):
    """How much a metric moved between two steps of the runs' histories.

    For each precision, the per-seed change `value(to_step) - value(from_step)`
    of its history, with its interval: a flat learning curve at the end of
    training (a converged run) has a change whose interval holds 0, or is
    small against the differences the study measures.

    Returns:
        {precision: {"from_step", "to_step", "change": interval dict}}.

    Raises:
        ValueError: if a run has no evaluation at either step.
    """
    metric = metric if isinstance(metric, Metric) else Metric(**metric)
    table = {(r["precision"], r["seed"]): r for r in runs}
    result = {}
    for precision in precisions:
        changes = []
        for seed in seeds:
            history = {h["step"]: h.get(metric.name) for h in table[(precision, seed)]["history"]}
            if history.get(from_step) is None or history.get(to_step) is None:
                raise ValueError(f"Run {precision} seed {seed} was not evaluated at steps "
                                 f"{from_step} and {to_step}.")
            changes.append(history[to_step] - history[from_step])
        result[precision] = {"from_step": int(from_step), "to_step": int(to_step),
                             "change": stats.mean_interval(changes, confidence).as_dict()}
    return result


def format_mean(interval, digits=4):
    """"0.42445 ± 0.00197" (the mean alone with one seed)."""
    if interval["n"] < 2:
        return f"{interval['mean']:.{digits}f}"
    return f"{interval['mean']:.{digits}f} ± {interval['half_width']:.{digits}f}"


def format_difference(interval, digits=4):
    """"+0.00019 [-0.00009, +0.00047]" (no interval with one seed)."""
    text = f"{interval['mean']:+.{digits}f}"
    if interval["n"] >= 2:
        text += f" [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"
    else:
        text += " (1 seed, no interval)"
    return text


def format_table(summary, *, extra_columns=None):
    """The summary as a Markdown table, one row per precision.

    Columns, per metric: its mean with the interval half-width; for paired
    metrics the difference to the baseline with its interval; with a
    threshold, whether abs(difference) reaches it and the verdict.

    Args:
        summary: a `summarize` result.
        extra_columns: optional {column title: {precision: cell text}}
            appended on the right (e.g. training speed).

    Returns:
        The table (str, no trailing newline).
    """
    baseline = summary["baseline"]
    level = f"{summary['confidence']:.0%}"
    metrics = [Metric.from_config(m) for m in summary["metrics"]]
    extra_columns = extra_columns or {}
    header = ["precision"]
    for m in metrics:
        header.append(f"{m.label} (mean ± {level} CI)")
        if m.paired:
            header.append(f"Δ {m.label} vs {baseline.upper()} [{level} CI]")
        if m.paired and m.threshold is not None:
            header += [f"abs(Δ) ≥ {m.threshold:g}", "reading"]
    header += list(extra_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for precision, cells in summary["precisions"].items():
        row = [precision]
        for m in metrics:
            cell = cells[m.name]
            row.append(format_mean(cell["mean"], m.digits))
            if not m.paired:
                continue
            if precision == baseline:
                row.append("(baseline)")
                if m.threshold is not None:
                    row += ["(baseline)", "(baseline)"]
                continue
            row.append(format_difference(cell["difference"], m.digits))
            if m.threshold is not None:
                row += ["yes" if cell["significant"] else "no", cell["verdict"]]
        row += [column.get(precision, "") for column in extra_columns.values()]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def unresolved(summary):
    """(precision, metric name) pairs whose interval is wider than ± threshold / 2."""
    return [(p, name) for p, cells in summary["precisions"].items()
            for name, cell in cells.items() if cell.get("resolved") is False]
