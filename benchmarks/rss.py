"""Resident memory of this process over a long stream: sampling, verdict, plot.

`RssSampler` records the resident set size (VmRSS, Linux) with the rows
consumed so far, from a background thread; `analyze` says whether memory
stayed flat after warm-up or grows with the rows; `plot` draws the samples.
No TensorFlow here: what is measured is up to the caller.

Example:

>>> with RssSampler(interval=1.0) as sampler:
...     for rows in consume_batches():  # rows consumed so far
...         sampler.progress("synthetic", rows)
...     sampler.sample()
>>> analyze(*sampler.phase_samples("synthetic"), warmup_rows=10_000,
...         flat_mib=50)["verdict"]
'flat'
"""

import math
import threading
import time

import numpy as np

from tfbf16.utils.files import atomic_write

#: Default largest rise (MiB) after warm-up that still counts as "flat".
FLAT_MIB = 50.0


def rss_mib():
    """Resident set size of this process (VmRSS of /proc/self/status), MiB.

    Raises:
        OSError: where /proc/self/status does not exist (not Linux).
        RuntimeError: if it has no VmRSS line.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # the value is in kB
    raise RuntimeError("/proc/self/status has no VmRSS line.")


class RssSampler:
    """Samples this process's resident memory in a background thread.

    Every `interval` seconds the thread records a dict `{"phase", "rows",
    "seconds", "rss_mib"}` into `samples`: the phase and rows consumed last
    reported with `progress`, the seconds since the sampler was made, and
    `rss_mib()`. Nothing is recorded while the phase is None. `sample()`
    records one at once (e.g. right at the end of warm-up).

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
        if not interval > 0:
            raise ValueError(f"The sampling interval must be > 0 seconds; got {interval!r}.")
        self.interval = float(interval)
        self.samples = []
        self._state = (None, 0)  # one tuple: read and written atomically
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def progress(self, phase, rows):
        """Sets the current phase (None: pause sampling) and rows consumed.

        A sample in progress on the thread finishes first, so none is
        recorded after a pause begins.
        """
        with self._lock:
            self._state = (phase, int(rows))

    def sample(self):
        """Records a sample now (unless the phase is None)."""
        with self._lock:
            phase, rows = self._state
            if phase is None:
                return
            self.samples.append({"phase": phase, "rows": rows,
                                 "seconds": round(time.perf_counter() - self._began, 3),
                                 "rss_mib": round(rss_mib(), 2)})

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
        """Starts the background thread; returns the sampler."""
        self._thread.start()
        return self

    def stop(self):
        """Stops the background thread and waits for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def analyze(rows, rss, warmup_rows, flat_mib=FLAT_MIB):
    """Summarizes one phase's RSS samples: flat after warm-up, or growing.

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
        `fit_mib` are its end points), `rise_mib` (end minus start),
        `samples`, `samples_after_warmup`, `warmup_rows`, `flat_mib`, and
        `verdict`: "flat" if both rises are below `flat_mib`, "GROWS" if
        not, "too few samples" if fewer than 2 samples after warm-up span
        any rows (the numbers that need them are then NaN).

    Raises:
        ValueError: if `rows` and `rss` are not 1-D arrays of one length.
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


def plot(samples, results, path, title):
    """Writes a PNG (atomically): RSS against rows consumed, one line per phase.

    Args:
        samples: `RssSampler.samples`.
        results: phase name -> its `analyze` result (in legend order).
        path: the PNG file.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, result) in enumerate(results.items()):
        color = colors[index % len(colors)]
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
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    plt.close(figure)
