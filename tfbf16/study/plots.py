"""Plots of a paired-seed study (matplotlib, written atomically as PNG).

- `plot_history`: a metric over training, mean over seeds per precision.
- `plot_history_differences`: the paired difference to the baseline over
  training, with its interval band and the threshold lines.
- `plot_final_differences`: the final paired differences with their
  intervals, each seed's difference as a dot, and the threshold band.
- `save_study_plot`: the three side by side, saved to a PNG.

Example:

>>> save_study_plot("study.png", summary, runs, history=history,
...                 metric=Metric("log_loss", False, threshold=0.001))
"""

import io

from tfbf16.study.summary import Metric
from tfbf16.utils import files


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    return plt


def colors(precisions):
    """A fixed color per precision, in order."""
    return {p: f"C{i}" for i, p in enumerate(precisions)}


def _metric(metric):
    return metric if isinstance(metric, Metric) else Metric(**metric)


def plot_history(ax, history, metric, *, log_steps=False):
    """The metric over training, mean over seeds (band: its interval)."""
    metric = _metric(metric)
    palette = colors(list(history))
    for precision, points in history.items():
        if not points:
            continue
        steps = [p["step"] for p in points]
        means = [p["mean"]["mean"] for p in points]
        ax.plot(steps, means, color=palette[precision], label=precision, marker=".")
        if points[0]["mean"]["n"] > 1:
            ax.fill_between(steps, [p["mean"]["low"] for p in points],
                            [p["mean"]["high"] for p in points],
                            color=palette[precision], alpha=0.12, linewidth=0)
    if log_steps:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
    ax.set(xlabel="training step", ylabel=metric.label,
           title=f"{metric.label} over training (mean over seeds)")
    ax.legend()


def plot_history_differences(ax, history, metric, *, baseline="fp32", log_steps=False):
    """The paired difference to the baseline over training, with interval bands."""
    metric = _metric(metric)
    palette = colors(list(history))
    for precision, points in history.items():
        points = [p for p in points if "difference" in p]
        if precision == baseline or not points:
            continue
        steps = [p["step"] for p in points]
        ax.plot(steps, [p["difference"]["mean"] for p in points], color=palette[precision],
                label=f"{precision} − {baseline}", marker=".")
        if points[0]["difference"]["n"] > 1:
            ax.fill_between(steps, [p["difference"]["low"] for p in points],
                            [p["difference"]["high"] for p in points],
                            color=palette[precision], alpha=0.18, linewidth=0)
    ax.axhline(0.0, color="k", lw=0.8)
    if metric.threshold is not None:
        for sign in (1, -1):
            ax.axhline(sign * metric.threshold, color="gray", ls="--", lw=0.8)
    if log_steps:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
    ax.set(xlabel="training step", ylabel=f"Δ {metric.label} vs {baseline}",
           title="Paired difference over training (band: interval)")
    if len(ax.get_lines()) > 1:
        ax.legend()


def plot_final_differences(ax, summary, runs, metric, *, horizontal=False):
    """Final paired differences: mean with interval, seeds as dots, threshold band."""
    metric = _metric(metric)
    baseline = summary["baseline"]
    precisions = list(summary["precisions"])
    palette = colors(precisions)
    others = [p for p in precisions if p != baseline]
    by_key = {(r["precision"], r["seed"]): r for r in runs}
    for i, precision in enumerate(others):
        d = summary["precisions"][precision][metric.name]["difference"]
        error = None if d["n"] < 2 else [[d["mean"] - d["low"]], [d["high"] - d["mean"]]]
        seeds = [by_key[(precision, s)][metric.name] - by_key[(baseline, s)][metric.name]
                 for s in summary["seeds"]]
        if horizontal:
            ax.errorbar([d["mean"]], [i], xerr=error, fmt="o", capsize=5, color=palette[precision])
            ax.plot(seeds, [i + 0.15] * len(seeds), ".", color=palette[precision], alpha=0.5)
        else:
            ax.errorbar([i], [d["mean"]], yerr=error, fmt="o", capsize=6, color=palette[precision])
            ax.plot([i + 0.15] * len(seeds), seeds, ".", color=palette[precision], alpha=0.5)
    line, span, ticks, limits = ((ax.axvline, ax.axvspan, ax.set_yticks, ax.set_ylim)
                                 if horizontal else
                                 (ax.axhline, ax.axhspan, ax.set_xticks, ax.set_xlim))
    line(0.0, color="k", lw=0.8)
    if metric.threshold is not None:
        span(-metric.threshold, metric.threshold, color="gray", alpha=0.15,
             label=f"|Δ| < {metric.threshold:g}")
    crowded = sum(len(p) for p in others) > 30
    if horizontal:
        ticks(range(len(others)), others)
    else:
        ticks(range(len(others)), others, rotation=20 if crowded else 0,
              ha="right" if crowded else "center")
    limits(-0.5, max(len(others), 1) - 0.5)
    label = f"Δ {metric.label} vs {baseline}"
    (ax.set_xlabel if horizontal else ax.set_ylabel)(label)
    ax.set_title(f"Paired differences, {summary['confidence']:.0%} t intervals "
                 f"({len(summary['seeds'])} seeds)")
    if metric.threshold is not None:
        ax.legend()


def save_figure(figure, path, dpi=110):
    """Saves a matplotlib figure as PNG, atomically, and closes it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(figure)
    with files.atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def save_study_plot(path, summary, runs, metric, *, history=None, log_steps=False, title=None):
    """Saves the study's plot: history, differences over training, final differences.

    Args:
        path: the PNG file.
        summary: a `summarize` result.
        runs: the runs it summarized.
        metric: the `Metric` to plot.
        history: a `summarize_history` result for `metric`, or None (then
            only the final differences are drawn).
        log_steps: a logarithmic step axis.
        title: an optional figure title.
    """
    plt = pyplot()
    panels = 3 if history else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.8), squeeze=False)
    axes = axes[0]
    if history:
        plot_history(axes[0], history, metric, log_steps=log_steps)
        plot_history_differences(axes[1], history, metric, baseline=summary["baseline"],
                                 log_steps=log_steps)
    plot_final_differences(axes[-1], summary, runs, metric)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
