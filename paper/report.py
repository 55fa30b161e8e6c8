"""The paper-shaped results table (Markdown and JSON) and the plots.

One row per (experiment, metric): the mean over seeds under each precision,
the mean paired difference of each BF16 precision to FP32 with the
half-width of its 95% Student-t interval over seeds (the paired-seed study
core, `tfbf16.study.summary`, that recsys.study and tfbf16.compare use too:
the per-seed differences are one sample, so the seed-to-seed variation that
both runs of a seed share cancels), and the reference the metric is read
against (e.g. bicubic upsampling for SR-GAN). Every file is written
atomically.
"""

import dataclasses
import math
import os
import platform

import numpy as np

from paper import common
from tfbf16.study import plots
from tfbf16.study import summary as summary_lib
from tfbf16.utils import files


@dataclasses.dataclass
class ExperimentResult:
    """Every run of one experiment.

    Attributes:
        experiment: the `common.Experiment` (its name, family, model, metrics,
            config and description are reported).
        seeds: the seeds, in run order.
        runs: precision -> list of `common.RunResult`, in seed order.
        references: the experiment's `common.Reference`s.
        seconds: wall time of the experiment.
    """
    experiment: common.Experiment
    seeds: list
    runs: dict
    references: list
    seconds: float


def experiment_summary(result, precisions):
    """The `tfbf16.study.summary.summarize` dict of one experiment's runs."""
    exp = result.experiment
    runs = [{"precision": p, "seed": run.seed, **run.metrics}
            for p in precisions for run in result.runs[p]]
    metrics = [summary_lib.Metric(m.key, m.higher_is_better, label=m.label, digits=m.digits)
               for m in exp.metrics]
    return summary_lib.summarize(runs, precisions=precisions, seeds=result.seeds,
                                 metrics=metrics), runs


def summary_rows(results, precisions):
    """The table rows as dicts (also what results.json's "table" holds): one per
    (experiment, metric), from the paired-seed study core."""
    rows = []
    for result in results:
        exp = result.experiment
        summary, _ = experiment_summary(result, precisions)
        for metric in exp.metrics:
            cells = {p: summary["precisions"][p][metric.key] for p in precisions}
            rows.append({
                "experiment": exp.name, "family": exp.family, "model": exp.model_name,
                "metric": metric.label, "metric_key": metric.key,
                "higher_is_better": metric.higher_is_better, "digits": metric.digits,
                "seeds": list(result.seeds),
                "values": {p: [run.metrics[metric.key] for run in result.runs[p]]
                           for p in precisions},
                "references": [dataclasses.asdict(r) for r in result.references
                               if r.metric == metric.key],
                "mean": {p: cells[p]["mean"] for p in precisions},
                "difference_to_fp32": {p: cells[p]["difference"] for p in precisions
                                       if p != summary["baseline"]},
            })
    return rows


def _number(value, digits, signed=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "\u2212")


def _difference(interval, digits):
    """"mean ± half-width" of a paired difference (the half-width is what the row can detect)."""
    mean = _number(interval["mean"], digits, signed=True)
    if interval["n"] < 2:
        return f"{mean} (1 seed, no CI)"
    return f"{mean} \u00b1 {_number(interval['half_width'], digits)}"


def _references(row):
    return "; ".join(f"{r['label']}: {_number(r['value'], row['digits'])}"
                     for r in row["references"])


def markdown_table(rows, precisions):
    """The Markdown table of `summary_rows`."""
    labels = [common.label(p) for p in precisions]
    bf16 = [p for p in precisions if p != "fp32"]
    header = (["Family", "Model", "Metric"] + labels
              + [f"{common.label(p).replace('BF16-', '')} \u2212 FP32 \u00b1 95% CI"
                 for p in bf16]
              + ["Reference"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        arrow = "\u2191" if row["higher_is_better"] else "\u2193"
        cells = [row["family"], row["model"], f"{row['metric']} {arrow}"]
        cells += [_number(row["mean"][p]["mean"], row["digits"]) for p in precisions]
        cells += [_difference(row["difference_to_fp32"][p], row["digits"]) for p in bf16]
        cells.append(_references(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment():
    import keras
    import tensorflow as tf

    import tfbf16
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tfbf16": tfbf16.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine()}


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


#: Why the table quotes none of the paper's own numbers (see the README).
PAPER_NUMBERS_NOTE = (
    "The paper's own FP32/BF16 numbers are not quoted: no copy of its result tables "
    "(arXiv 1905.12322) could be retrieved and checked here, and no number is shown "
    "without its table or figure. Its claim, in its abstract: BF16 reaches the same "
    "results as FP32 in the same number of iterations, with no hyper-parameter changes.")


def write(results, precisions, output_dir, settings, total_seconds, total_cpu_seconds=None):
    """Writes results.json, results.md and the plots (atomically); returns the Markdown."""
    os.makedirs(output_dir, exist_ok=True)
    files.remove_temporary_files(output_dir)
    rows = summary_rows(results, precisions)
    table = markdown_table(rows, precisions)
    plots = write_plots(results, rows, precisions, output_dir)
    cpu = "" if total_cpu_seconds is None else f", CPU time {total_cpu_seconds / 60:.1f} min"
    md = ["# BF16 vs FP32 at laptop scale (Kalamkar et al. 2019, reproduced with tfbf16)"
          if not settings.get("full") else "# BF16 vs FP32 (Kalamkar et al. 2019, full scale)", "",
          f"Seeds: {', '.join(map(str, results[0].seeds)) if results else ''} (paired: each seed's "
          "runs share initial weights and data order). Cells: mean over seeds; differences: mean "
          "paired difference \u00b1 the half-width of its 95% t interval over seeds (a difference "
          "smaller than its half-width is not detectable; the half-width is the smallest effect "
          "the row could have detected). Reference: what the metric is read against.", "",
          table, "", PAPER_NUMBERS_NOTE, "", "## Experiments", ""]
    for result in results:
        exp = result.experiment
        md.append(f"- **{exp.name}** ({result.seconds / 60:.1f} min): {exp.description()}")
        labels = {metric.key: metric.label for metric in exp.metrics}
        for reference in result.references:
            what = f" for {labels[reference.metric]}" if reference.metric else ""
            md.append(f"  - reference{what}: {reference.label} = {reference.value:.4f}")
    md += ["", f"Total wall time: {total_seconds / 60:.1f} min{cpu}. Plots: "
           + ", ".join(f"`{os.path.basename(p)}`" for p in plots) + ".", ""]
    markdown = "\n".join(md)
    with files.atomic_write(os.path.join(output_dir, "results.md")) as f:
        f.write(markdown)
    payload = {
        "settings": settings, "environment": environment(), "precisions": list(precisions),
        "total_seconds": total_seconds, "total_cpu_seconds": total_cpu_seconds, "table": rows,
        "experiments": [{
            "name": r.experiment.name, "family": r.experiment.family,
            "model": r.experiment.model_name, "description": r.experiment.description(),
            "config": r.experiment.config, "seeds": r.seeds, "seconds": r.seconds,
            "references": r.references,
            "runs": {p: [{"seed": run.seed, "metrics": run.metrics, "seconds": run.seconds,
                          "cpu_seconds": run.cpu_seconds,
                          "curves": run.curves} for run in runs] for p, runs in r.runs.items()},
        } for r in results],
        "plots": [os.path.basename(p) for p in plots],
    }
    files.write_json(os.path.join(output_dir, "results.json"), _jsonable(payload), allow_nan=False)
    return markdown


def _save(fig, path):
    """Saves a figure as PNG, atomically (`tfbf16.study.plots`); returns the path."""
    plots.save_figure(fig, path)
    return path


def write_plots(results, rows, precisions, output_dir):
    """Training curves per experiment, GAN image grids, paired differences."""
    plt = plots.pyplot()
    colors = plots.colors(precisions)
    paths = []
    for result in results:
        names = list(result.runs[precisions[0]][0].curves)
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            for p in precisions:
                series = [run.curves[name] for run in result.runs[p] if run.curves.get(name)]
                for points in series:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=colors[p], alpha=0.25, linewidth=0.8)
                lengths = {len(s) for s in series}
                if series and len(lengths) == 1:
                    steps = [s for s, _ in series[0]]
                    mean = np.mean([[v for _, v in s] for s in series], axis=0)
                    ax.plot(steps, mean, color=colors[p], linewidth=1.6,
                            label=common.label(p))
            ax.set_title(name)
            ax.set_xlabel("step")
            if "loss" in name or "entropy" in name:
                positive = all(v > 0 for p in precisions for run in result.runs[p]
                               for _, v in run.curves.get(name, []))
                if positive:
                    ax.set_yscale("log")
            ax.legend(fontsize=8)
        exp = result.experiment
        fig.suptitle(f"{exp.model_name}: training (thin: seeds, thick: mean)", fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, os.path.join(output_dir, f"curves_{exp.name}.png")))
        if hasattr(exp, "grids"):
            for file_name, title, grid in exp.grids(result.runs):
                fig, ax = plt.subplots(figsize=(max(3.0, grid.shape[1] / 12), max(3.0, grid.shape[0] / 12) + 0.4))
                ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray",
                          interpolation="nearest", vmin=0.0, vmax=1.0)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
                fig.tight_layout()
                paths.append(_save(fig, os.path.join(output_dir, file_name)))
    bf16 = [p for p in precisions if p != "fp32"]
    if rows and bf16:
        columns = min(3, len(rows))
        lines = math.ceil(len(rows) / columns)
        fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 2.6 * lines),
                                 squeeze=False)
        for ax in axes.flat[len(rows):]:
            ax.axis("off")
        flat = iter(axes.flat)
        for result in results:
            summary, runs = experiment_summary(result, precisions)
            for metric in summary["metrics"]:
                ax = next(flat)
                plots.plot_final_differences(ax, summary, runs, metric, horizontal=True)
                ax.set_title(f"{result.experiment.name}: {metric['label']}", fontsize=8)
        fig.suptitle("Paired differences to FP32 (o: mean with 95% CI, dots: seeds)",
                     fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, os.path.join(output_dir, "paired_differences.png")))
    return paths
