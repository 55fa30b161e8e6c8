"""Resident memory of the input pipeline and DCN training over long streams.

Trains the DCN (the real training step,
`recsys.trainer.Trainer(model_config, bundle.vocab_sizes, TrainConfig(...),
precision).train_step`, called on every batch as in
`benchmarks/recsys_throughput.py`) on two streams from
`recsys.data.make_datasets`, one phase after the other in one process:

- "synthetic": the first `--synthetic_rows` rows of the synthetic stream
  (`train_rows` set, default `vocab_scale` 1.0);
- "criteo file": a generated Criteo-format TSV file of about `--criteo_mib`
  MiB (`benchmarks.recsys_input.write_criteo_tsv`, in a temporary
  directory), every line but the last 1,000 (held out as its eval split).

Every batch is consumed, the last partial one too, and the step is traced up
front for both batch sizes, so nothing is traced while memory is measured.
A background thread samples the process's resident memory (VmRSS of
/proc/self/status) every `--sample_seconds` with the rows trained on so far.
Per phase it reports the RSS at the start (after warm-up: the first
`--warmup_percent` of the rows, which trace, fill allocator pools and let
tf.data autotune its buffers), at the end, the maximum (warm-up included),
and the slope of a least-squares line of RSS against rows over the part
after warm-up, in MiB per 10 million rows. Verdict: "flat" if RSS rose by
less than `--flat_mib` after warm-up, both along the fitted line and from
the start sample to the end sample; otherwise "GROWS". (MiB = 2**20 bytes.)

Writes into `--output_dir`: `streaming_memory.json` (settings, per-phase
results, every sample) and `streaming_memory.png` (RSS against rows
consumed, one line per phase); `--update_docs` copies the PNG to
`docs/streaming_memory.png`.

Measured with the defaults (50M synthetic rows and a 1 GiB file, 4,455,453
lines; the study's DCN: embedding 8, 2 full-rank cross layers, deep 128-64,
FP32, batch 2048) on the shared 2-core machine at load 3-6: 18.6 min in all
(synthetic 15.6 min at 53.5k rows/s, writing the file 32 s, file 2.4 min):

    phase        rows        start MiB  end MiB  max MiB  MiB/10M rows  verdict
    synthetic    50,000,000        786      794      794          +0.5  flat
    criteo file   4,454,453        830      848      859         +23.4  flat

- Both phases step up ~4.5 MiB on their last batch: the first run of the
  step traced for the partial batch size (+4.3 MiB on its first call, none
  after, checked separately). Before it, synthetic rose 3.8 MiB in 49M rows.
- The file phase's slope is warm-up outlasting its 2% (89k rows, 3 s): +10
  MiB from 90k to 550k rows, then +3.5 MiB in 3.5M rows. With a 4 GiB file
  (`--synthetic_rows=0 --criteo_mib=4096`: 17.8M rows, 10.9 min) RSS levels
  off: 825 MiB after warm-up, 832.0 at 10.7M rows, 832.6 at 17.7M; +4.2
  MiB / 10M rows, flat. The file phase's max (859 MiB) is in its setup,
  before the first row.
- The Criteo split's end of data came 34 s after its last batch (49 s with
  4 GiB), idle at constant RSS, so its rows/s (31k) undercounts training
  (41k up to the last batch). Without training, `criteo.read_blocks` with
  `max_lines` (the held-out tail) also ended 0.7 s (400k lines) to 3.3 s
  (1.6M lines) after its last block, without `max_lines` at once.

Usage: python -m benchmarks.streaming_memory [--synthetic_rows N]
    [--criteo_mib MIB] [--batch_size B] [--precision fp32|rne|trunc|stochastic|native]
    [--embedding_dim D] [--num_cross_layers L] [--deep_layers 128,64]
    [--vocab_scale S] [--output_dir DIR] [--update_docs]
    (--batch_size is benchmarks.recsys_input's flag, default 2048 here; its
    --rows, --repeats and --memory_rows do nothing here.)
    Quick run: --synthetic_rows=200000 --criteo_mib=20 --sample_seconds=0.2
"""

import collections
import dataclasses
import gc
import json
import math
import os
import shutil
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import recsys  # noqa: F401,E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import recsys_input  # noqa: E402
from recsys import flags_lib  # noqa: E402
from recsys import trainer  # noqa: E402
from recsys.data import make_datasets  # noqa: E402

FLAGS = flags.FLAGS
flags_lib.define_model_flags()
flags.DEFINE_integer("synthetic_rows", 50_000_000,
                     "Synthetic rows to train on (0: skip this phase).", lower_bound=0)
flags.DEFINE_float("criteo_mib", 1024.0,
                   "Size of the generated Criteo TSV file in MiB (0: skip this phase).",
                   lower_bound=0.0)
flags.DEFINE_string("precision", "fp32",
                    "Training precision, any name recsys.trainer.Trainer accepts "
                    "(fp32, rne, trunc, stochastic, native).")
flags.DEFINE_float("vocab_scale", 1.0,
                   "Cardinality scale of the synthetic stream (make_datasets' default).",
                   lower_bound=0.001)
flags.DEFINE_float("warmup_percent", 2.0,
                   "Leading percentage of each phase's rows treated as warm-up.",
                   lower_bound=0.0, upper_bound=50.0)
flags.DEFINE_float("sample_seconds", 1.0, "Seconds between RSS samples.",
                   lower_bound=0.01)
flags.DEFINE_float("flat_mib", 50.0,
                   "A phase is 'flat' if RSS rose by less than this after warm-up.",
                   lower_bound=0.0)
flags.DEFINE_string("output_dir", "benchmarks_output/streaming_memory",
                    "Directory for streaming_memory.json and streaming_memory.png.")
flags.DEFINE_bool("update_docs", False, "Copy the PNG to docs/streaming_memory.png.")
FLAGS.set_default("batch_size", trainer.DataConfig().batch_size)

EVAL_LINES = 1000  # lines held out at the end of the Criteo file
_LOSS_STEPS = 100  # training loss reported over the first and last steps
_DOCS_PNG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "docs", "streaming_memory.png")


def rss_mib():
    """Resident set size of this process (VmRSS of /proc/self/status), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # the value is in kB
    raise RuntimeError("/proc/self/status has no VmRSS line.")


class RssSampler:
    """Samples this process's resident memory in a background thread.

    The thread records, every `interval` seconds, a dict `{"phase", "rows",
    "seconds", "rss_mib"}` into `samples`: the phase and rows consumed last
    reported with `progress`, the seconds since the sampler was made, and
    `rss_mib()`. Nothing is recorded while the phase is None.

    Args:
        interval: seconds between samples.

    Example:

    >>> with RssSampler(1.0) as sampler:
    ...     for rows in range(0, 10**6, 1000):
    ...         sampler.progress("synthetic", rows)  # after each batch
    >>> sampler.samples[-1]["phase"]
    'synthetic'
    """

    def __init__(self, interval=1.0):
        self.interval = float(interval)
        self.samples = []
        self._state = (None, 0)  # one tuple: read and written atomically
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def progress(self, phase, rows):
        """Sets the current phase (None: pause sampling) and rows consumed."""
        self._state = (phase, int(rows))

    def sample(self):
        """Records a sample now (unless the phase is None)."""
        phase, rows = self._state
        if phase is None:
            return
        record = {"phase": phase, "rows": rows,
                  "seconds": round(time.perf_counter() - self._began, 3),
                  "rss_mib": round(rss_mib(), 2)}
        with self._lock:
            self.samples.append(record)

    def phase_samples(self, phase):
        """`(rows, rss_mib)` arrays of one phase's samples, in time order."""
        with self._lock:
            chosen = [s for s in self.samples if s["phase"] == phase]
        return (np.array([s["rows"] for s in chosen], np.float64),
                np.array([s["rss_mib"] for s in chosen], np.float64))

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def analyze(rows, rss, warmup_rows, flat_mib):
    """Summarizes one phase's RSS samples.

    Args:
        rows: rows consumed at each sample, in time order.
        rss: RSS in MiB at each sample.
        warmup_rows: samples with fewer rows consumed are warm-up.
        flat_mib: largest rise after warm-up that is still "flat".

    Returns:
        A dict: `start_mib` (first sample at or after warm-up), `end_mib`
        (last sample), `max_mib` (all samples), `slope_mib_per_10m_rows`
        (least-squares line through the samples after warm-up), `fit_rise_mib`
        (that line's rise from the start to the end sample; `fit_rows` and
        `fit_mib` are its end points), `rise_mib`
        (end minus start), `samples_after_warmup`, and `verdict`: "flat" if
        both rises are below `flat_mib`, "GROWS" if not, "too few samples" if
        fewer than 2 samples after warm-up span any rows.
    """
    rows = np.asarray(rows, np.float64)
    rss = np.asarray(rss, np.float64)
    if rows.shape != rss.shape or rows.ndim != 1:
        raise ValueError(f"rows and rss must be 1-D of one length, got shapes "
                         f"{rows.shape} and {rss.shape}.")
    after = rows >= warmup_rows
    result = {"samples": int(rows.size), "samples_after_warmup": int(after.sum()),
              "warmup_rows": int(warmup_rows), "flat_mib": float(flat_mib),
              "max_mib": float(rss.max()) if rss.size else math.nan,
              "start_mib": math.nan, "end_mib": math.nan, "rise_mib": math.nan,
              "slope_mib_per_10m_rows": math.nan, "fit_rise_mib": math.nan,
              "verdict": "too few samples"}
    if after.sum() < 2 or np.ptp(rows[after]) == 0:
        return result
    x, y = rows[after], rss[after]
    slope, intercept = np.polyfit(x, y, 1)
    result.update(
        start_mib=float(y[0]), end_mib=float(y[-1]), rise_mib=float(y[-1] - y[0]),
        slope_mib_per_10m_rows=float(slope * 1e7),
        fit_rise_mib=float(slope * (x[-1] - x[0])),
        fit_rows=[float(x[0]), float(x[-1])],
        fit_mib=[float(intercept + slope * x[0]), float(intercept + slope * x[-1])])
    flat = result["fit_rise_mib"] < flat_mib and result["rise_mib"] < flat_mib
    result["verdict"] = "flat" if flat else "GROWS"
    return result


def _batch_specs(element_spec, batch_size):
    return tf.nest.map_structure(
        lambda s: tf.TensorSpec([batch_size, *s.shape[1:]], s.dtype), element_spec)


def train_phase(name, dataset, train_step, sampler, warmup_rows, report_rows=None):
    """Calls `train_step` on every batch of `dataset`, reporting progress.

    Prints a progress line every `report_rows` rows (None: never).

    Returns:
        A dict: `rows` and `steps` consumed, `seconds`, and the mean training
        loss of the first and of the last `_LOSS_STEPS` steps.
    """
    rows = steps = 0
    first, last = [], collections.deque(maxlen=_LOSS_STEPS)
    warm = False
    sampler.progress(name, 0)
    began = time.perf_counter()
    for features, labels in dataset:
        loss = train_step(features, labels)
        rows += int(labels.shape[0])
        steps += 1
        sampler.progress(name, rows)
        if len(first) < _LOSS_STEPS:
            first.append(loss)
        last.append(loss)
        if not warm and rows >= warmup_rows:
            sampler.sample()  # the start sample, right at the end of warm-up
            warm = True
        if report_rows and rows // report_rows > (rows - int(labels.shape[0])) // report_rows:
            elapsed = time.perf_counter() - began
            print(f"  {name}: {rows:,} rows in {elapsed:.0f} s ({rows / elapsed:,.0f} "
                  f"rows/s), RSS {rss_mib():.0f} MiB", flush=True)
    seconds = time.perf_counter() - began
    sampler.sample()  # the end sample
    mean = lambda losses: float(np.mean([float(v) for v in losses])) if losses else None
    return {"rows": rows, "steps": steps, "seconds": round(seconds, 2),
            "rows_per_second": round(rows / seconds) if seconds else None,
            "loss_first_steps": mean(first), "loss_last_steps": mean(last)}


def run_phase(name, make_bundle, rows_requested, *, model_config, precision, batch_size,
              sampler, warmup_percent, flat_mib):
    """Builds a phase's data and model, trains on every row and analyzes RSS.

    Args:
        name: the phase name in samples and results.
        make_bundle: callable returning the phase's `DataBundle` (built while
            sampling, so setup memory shows in the samples at 0 rows).
        rows_requested: the training rows the bundle should yield.
        model_config, precision, batch_size: what to train.
        sampler: a started `RssSampler`.
        warmup_percent, flat_mib: see `analyze`.

    Returns:
        The phase's result dict (`train_phase` and `analyze` results, and
        `rows_requested`, `setup_seconds`, `traces_while_measuring`).
    """
    sampler.progress(name, 0)
    sampler.sample()
    began = time.perf_counter()
    bundle = make_bundle()
    steps = math.ceil(rows_requested / batch_size)
    model = trainer.Trainer(
        model_config, bundle.vocab_sizes,
        trainer.TrainConfig(train_steps=steps, lr_schedule="constant"), precision)
    # Trace for the full and the last, partial batch now, not while measuring.
    for size in sorted({batch_size, rows_requested % batch_size} - {0}):
        model.train_step.get_concrete_function(
            *_batch_specs(bundle.train.element_spec, size))
    traces = model.train_step.experimental_get_tracing_count()
    setup_seconds = time.perf_counter() - began
    print(f"{name}: set up in {setup_seconds:.1f} s ({bundle.description}); "
          f"training on {rows_requested:,} rows ...", flush=True)

    warmup_rows = max(1, math.ceil(rows_requested * warmup_percent / 100))
    result = train_phase(name, bundle.train, model.train_step, sampler, warmup_rows,
                         report_rows=max(1, rows_requested // 10))
    result.update(rows_requested=int(rows_requested), setup_seconds=round(setup_seconds, 1),
                  traces_while_measuring=(model.train_step.experimental_get_tracing_count()
                                          - traces))
    if bundle.bad_lines is not None:
        result["malformed_lines"] = bundle.bad_lines.counts()["train"]
    result.update(analyze(*sampler.phase_samples(name), warmup_rows, flat_mib))
    if result["rows"] != rows_requested:
        print(f"WARNING: {name} trained on {result['rows']:,} rows, "
              f"{rows_requested:,} requested.", flush=True)
    sampler.progress(None, 0)
    del model, bundle
    gc.collect()
    return result


def write_criteo_file(directory, mib, min_lines, seed=0):
    """Writes a Criteo TSV file of about `mib` MiB; returns (path, lines, bytes)."""
    probe = os.path.join(directory, "probe.tsv")
    probe_lines = 20_000
    bytes_per_line = recsys_input.write_criteo_tsv(probe, probe_lines, seed) / probe_lines
    os.remove(probe)
    lines = max(min_lines, round(mib * 2**20 / bytes_per_line))
    path = os.path.join(directory, "day_0.tsv")
    size = recsys_input.write_criteo_tsv(path, lines, seed)
    return path, lines, size


def plot(samples, results, path, title):
    """Writes the PNG: RSS (MiB) against rows consumed, one line per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    for (name, result), color in zip(results.items(), ("tab:blue", "tab:orange", "tab:green")):
        chosen = [s for s in samples if s["phase"] == name]
        rows = np.array([s["rows"] for s in chosen], np.float64) / 1e6
        rss = np.array([s["rss_mib"] for s in chosen])
        label = f"{name}: {result['verdict']}"
        if result["verdict"] in ("flat", "GROWS"):
            label += (f", {result['rise_mib']:+.0f} MiB after warm-up (fit "
                      f"{result['fit_rise_mib']:+.0f}; {result['slope_mib_per_10m_rows']:+.1f}"
                      " MiB / 10M rows)")
            axis.axvline(result["warmup_rows"] / 1e6, color=color, linestyle=":",
                         linewidth=0.8)
            axis.plot(np.array(result["fit_rows"]) / 1e6, result["fit_mib"], color="black",
                      linestyle="--", linewidth=0.8)
        axis.plot(rows, rss, color=color, linewidth=1.2, label=label)
    axis.set_xlabel("rows consumed (millions)")
    axis.set_ylabel("resident memory, VmRSS (MiB)")
    axis.set_ylim(bottom=0)
    axis.set_title(title, fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.plot([], [], color="black", linestyle="--", linewidth=0.8,
              label="least-squares fit after warm-up (dotted line: end of warm-up)")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _describe(m, batch_size, precision):
    rank = "full rank" if m.projection_dim is None else f"rank {m.projection_dim}"
    return (f"DCN {m.structure}, {m.num_cross_layers} cross ({rank}), deep "
            f"{','.join(map(str, m.deep_layers)) or 'none'}, embedding "
            f"{m.embedding_dim}; batch {batch_size}, {precision}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.synthetic_rows and not FLAGS.criteo_mib:
        raise app.UsageError("Nothing to do: --synthetic_rows and --criteo_mib are both 0.")
    began = time.perf_counter()
    batch = FLAGS.batch_size
    model_config = flags_lib.model_config()
    common = dict(model_config=model_config, precision=FLAGS.precision, batch_size=batch,
                  warmup_percent=FLAGS.warmup_percent, flat_mib=FLAGS.flat_mib)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, RssSampler(FLAGS.sample_seconds) as sampler:
        print(f"RSS {rss_mib():.0f} MiB after imports", flush=True)
        if FLAGS.synthetic_rows:
            rows = FLAGS.synthetic_rows
            results["synthetic"] = run_phase(
                "synthetic", lambda: make_datasets(
                    "synthetic", batch_size=batch, eval_rows=batch, train_rows=rows,
                    vocab_scale=FLAGS.vocab_scale, drop_remainder=False),
                rows, sampler=sampler, **common)
        if FLAGS.criteo_mib:
            written = time.perf_counter()
            path, lines, size = write_criteo_file(tmp, FLAGS.criteo_mib,
                                                  min_lines=EVAL_LINES + batch)
            write_seconds = time.perf_counter() - written
            print(f"wrote {lines:,} Criteo TSV lines ({size / 2**20:,.0f} MiB) in "
                  f"{write_seconds:.0f} s", flush=True)
            gc.collect()
            results["criteo file"] = run_phase(
                "criteo file", lambda: make_datasets(
                    "criteo", data_path=path, batch_size=batch, eval_rows=EVAL_LINES,
                    drop_remainder=False),
                lines - EVAL_LINES, sampler=sampler, **common)
            results["criteo file"].update(file_lines=lines, file_bytes=size,
                                          write_seconds=round(write_seconds, 1))
    total = time.perf_counter() - began

    title = (f"Resident memory while streaming and training ({os.cpu_count()} CPUs)\n"
             + _describe(model_config, batch, FLAGS.precision))
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
                     "batch_size": batch, "precision": FLAGS.precision,
                     "model": dataclasses.asdict(model_config),
                     "vocab_scale": FLAGS.vocab_scale,
                     "warmup_percent": FLAGS.warmup_percent,
                     "sample_seconds": FLAGS.sample_seconds, "flat_mib": FLAGS.flat_mib,
                     "cpus": os.cpu_count()},
        "total_seconds": round(total, 1),
        "phases": results,
        "samples": sampler.samples,
    }
    json_path = os.path.join(FLAGS.output_dir, "streaming_memory.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=True)
    png_path = os.path.join(FLAGS.output_dir, "streaming_memory.png")
    plot(sampler.samples, results, png_path, title)
    print(f"\nwrote {json_path} and {png_path}")
    if FLAGS.update_docs:
        shutil.copyfile(png_path, _DOCS_PNG)
        print(f"copied the plot to {_DOCS_PNG}")


if __name__ == "__main__":
    app.run(main)
