"""Tests of `benchmarks.streaming_memory`: RSS analysis, sampler, rows counted, outputs.

The benchmark module defines absl flags at import (and imports
`benchmarks.recsys_input`, which defines more), so it is only imported in a
subprocess: importing it here could collide with the flags of other modules
that pytest imports (`recsys.train`, `recsys.study`). One subprocess (one
TensorFlow import) checks the analysis functions and the sampler, then runs
the benchmark's `main` with tiny flags; the tests read what it wrote.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

_BENCHMARK_FLAGS = ["--synthetic_rows=200000", "--criteo_mib=20", "--batch_size=1024",
                    "--sample_seconds=0.2", "--embedding_dim=4", "--num_cross_layers=1",
                    "--deep_layers=32", "--vocab_scale=0.1"]

# Runs in its own process: argv[1] is the output directory, argv[2:] the
# benchmark's flags. Writes the analysis results to analysis.json, then
# runs the benchmark.
_SCRIPT = r"""
import gc
import json
import os
import sys
import time

from absl import flags
import numpy as np

from benchmarks import streaming_memory as sm

output_dir = sys.argv[1]

rng = np.random.default_rng(0)
rows = np.linspace(0, 5e6, 200)
flat = 800 + rng.normal(0, 2, rows.size)
flat[:4] = [300, 600, 750, 790]  # a warm-up ramp, before 100k rows
out = {
    "flat": sm.analyze(rows, flat, 100_000, 50),
    # +20 MiB per million rows: ~100 MiB over the rows after warm-up.
    "growing": sm.analyze(rows, flat + rows * 20 / 1e6, 100_000, 50),
    # Noise-free end-to-start rise of 60 MiB in a single step at the end.
    "jump": sm.analyze(rows, np.where(rows < rows[-1], 800.0, 860.0), 100_000, 50),
    "few": sm.analyze(rows[:3], flat[:3], 10**9, 50),
}

with open("/proc/self/statm") as f:
    statm = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
out["rss_mib"], out["statm_mib"] = sm.rss_mib(), statm

# A deliberate leak: 32 MiB kept (and touched) per 1000 "rows".
held = []
with sm.RssSampler(0.02) as sampler:
    sampler.progress("leak", 0)
    sampler.sample()
    for step in range(1, 11):
        held.append(np.ones(32 * 2**20 // 8))
        sampler.progress("leak", step * 1000)
        time.sleep(0.1)
    sampler.progress(None, 0)
    time.sleep(0.1)  # paused: no samples
    sampler.progress("leak", 10_000)
    sampler.sample()
out["leak"] = sm.analyze(*sampler.phase_samples("leak"), 1000, 50)
out["leak_samples"] = sampler.samples
with open(os.path.join(output_dir, "analysis.json"), "w") as f:
    json.dump(out, f)
del held
gc.collect()

flags.FLAGS(["streaming_memory", f"--output_dir={output_dir}", *sys.argv[2:]])
sm.main(["streaming_memory"])
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(output directory, the subprocess' stdout) of one run of `_SCRIPT`."""
    output_dir = tmp_path_factory.mktemp("streaming_memory")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(output_dir), *_BENCHMARK_FLAGS],
                          cwd=REPO, env=_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return output_dir, done.stdout


def test_analysis_and_sampler(run):
    out = json.loads((run[0] / "analysis.json").read_text())

    flat = out["flat"]
    assert flat["verdict"] == "flat"
    assert abs(flat["slope_mib_per_10m_rows"]) < 3
    assert flat["max_mib"] > 800 and flat["start_mib"] > 790  # warm-up excluded from start
    assert flat["samples_after_warmup"] == 196

    growing = out["growing"]
    assert growing["verdict"] == "GROWS"
    assert abs(growing["slope_mib_per_10m_rows"] - 200) < 3
    assert 95 < growing["fit_rise_mib"] < 101

    jump = out["jump"]  # the fitted line barely rises, but the end is 60 MiB up
    assert jump["fit_rise_mib"] < 50 and jump["rise_mib"] == 60
    assert jump["verdict"] == "GROWS"

    assert out["few"]["verdict"] == "too few samples"

    assert abs(out["rss_mib"] - out["statm_mib"]) < 5

    leak = out["leak"]
    assert leak["verdict"] == "GROWS"
    assert leak["rise_mib"] > 250  # 9 x 32 MiB allocated after the start sample
    assert leak["samples"] > 10  # the background thread sampled, not only sample()
    assert all(s["phase"] == "leak" for s in out["leak_samples"])
    rows = [s["rows"] for s in out["leak_samples"]]
    assert rows == sorted(rows) and rows[-1] == 10_000


def test_benchmark_run(run):
    tmp_path, stdout = run
    report = json.loads((tmp_path / "streaming_memory.json").read_text())
    phases = report["phases"]
    assert list(phases) == ["synthetic", "criteo file"]

    synthetic = phases["synthetic"]
    assert synthetic["rows_requested"] == synthetic["rows"] == 200_000
    assert synthetic["steps"] == 196  # 195 full batches and the last 320 rows
    # It trained: the loss of the last 100 steps is below that of the first 100.
    assert synthetic["loss_last_steps"] < synthetic["loss_first_steps"] < 1.0

    criteo = phases["criteo file"]
    assert abs(criteo["file_bytes"] / 2**20 - 20) < 1
    assert 200 < criteo["file_bytes"] / criteo["file_lines"] < 300
    assert criteo["rows_requested"] == criteo["rows"] == criteo["file_lines"] - 1000
    assert criteo["malformed_lines"] == 0

    for name, phase in phases.items():
        assert phase["traces_while_measuring"] == 0
        assert phase["samples_after_warmup"] >= 2
        rise = max(phase["rise_mib"], phase["fit_rise_mib"])
        assert phase["verdict"] == ("flat" if rise < phase["flat_mib"] else "GROWS")
        assert phase["max_mib"] >= max(phase["start_mib"], phase["end_mib"]) > 100
        samples = [s for s in report["samples"] if s["phase"] == name]
        rows = [s["rows"] for s in samples]
        assert rows == sorted(rows) and rows[0] == 0 and rows[-1] == phase["rows"]
        assert name in stdout and phase["verdict"] in stdout

    png = tmp_path / "streaming_memory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert np.ptp(image[..., :3]) > 0.5  # something was drawn
