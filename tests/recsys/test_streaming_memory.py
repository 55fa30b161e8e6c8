"""Tests of the streaming-memory benchmark: RSS verdicts, the sampler, phases, outputs.

The analysis, the sampler and a training phase are library code
(`benchmarks.rss`, `benchmarks.stream_training`) and are tested here in
process; one slow test runs the `benchmarks.streaming_memory` program itself.
"""

import json
import os
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import criteo_files
from benchmarks import rss
from benchmarks import stream_training
from recsys import config

REPO = Path(__file__).resolve().parents[2]
_SMALL_MODEL = config.ModelConfig(embedding_dim=4, num_cross_layers=1, deep_layers=(32,))


def _ramped_flat_samples():
    rng = np.random.default_rng(0)
    rows = np.linspace(0, 5e6, 200)
    flat = 800 + rng.normal(0, 2, rows.size)
    flat[:4] = [300, 600, 750, 790]  # a warm-up ramp, before 100k rows
    return rows, flat


def test_analyze_flat():
    flat = rss.analyze(*_ramped_flat_samples(), 100_000, 50)
    assert flat["verdict"] == "flat"
    assert abs(flat["slope_mib_per_10m_rows"]) < 3
    assert flat["max_mib"] > 800 and flat["start_mib"] > 790  # warm-up excluded from start
    assert flat["samples_after_warmup"] == 196


def test_analyze_growing():
    rows, flat = _ramped_flat_samples()
    # +20 MiB per million rows: ~100 MiB over the rows after warm-up.
    growing = rss.analyze(rows, flat + rows * 20 / 1e6, 100_000, 50)
    assert growing["verdict"] == "GROWS"
    assert abs(growing["slope_mib_per_10m_rows"] - 200) < 3
    assert 95 < growing["fit_rise_mib"] < 101


def test_analyze_jump_at_the_end_grows():
    rows, _ = _ramped_flat_samples()
    # Noise-free end-to-start rise of 60 MiB in a single step at the end:
    # the fitted line barely rises, but the end is 60 MiB up.
    jump = rss.analyze(rows, np.where(rows < rows[-1], 800.0, 860.0), 100_000, 50)
    assert jump["fit_rise_mib"] < 50 and jump["rise_mib"] == 60
    assert jump["verdict"] == "GROWS"


def test_analyze_too_few_samples():
    rows, flat = _ramped_flat_samples()
    few = rss.analyze(rows[:3], flat[:3], 10**9, 50)
    assert few["verdict"] == "too few samples"
    assert np.isnan(few["rise_mib"]) and np.isnan(few["slope_mib_per_10m_rows"])
    same_rows = rss.analyze([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], 0, 50)
    assert same_rows["verdict"] == "too few samples"


def test_analyze_refuses_mismatched_samples():
    with pytest.raises(ValueError, match="one length"):
        rss.analyze([1, 2, 3], [1, 2], 0, 50)


def test_rss_mib_agrees_with_statm():
    with open("/proc/self/statm") as f:
        statm = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert abs(rss.rss_mib() - statm) < 5


def test_sampler_sees_a_leak():
    held = []  # a deliberate leak: 32 MiB kept (and touched) per 1000 "rows"
    with rss.RssSampler(0.02) as sampler:
        sampler.progress("leak", 0)
        sampler.sample()
        for step in range(1, 11):
            held.append(np.ones(32 * 2**20 // 8))
            sampler.progress("leak", step * 1000)
            time.sleep(0.1)
        sampler.progress(None, 0)
        paused = len(sampler.samples)
        time.sleep(0.1)  # paused: no samples
        assert len(sampler.samples) == paused
        sampler.progress("leak", 10_000)
        sampler.sample()
    del held
    leak = rss.analyze(*sampler.phase_samples("leak"), 1000, 50)
    assert leak["verdict"] == "GROWS"
    assert leak["rise_mib"] > 250  # 9 x 32 MiB allocated after the start sample
    assert leak["samples"] > 10  # the background thread sampled, not only sample()
    assert all(s["phase"] == "leak" for s in sampler.samples)
    rows = [s["rows"] for s in sampler.samples]
    assert rows == sorted(rows) and rows[-1] == 10_000


def test_sampler_refuses_a_zero_interval():
    with pytest.raises(ValueError, match="interval"):
        rss.RssSampler(0)


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert np.ptp(image[..., :3]) > 0.5  # something was drawn


def test_plot_writes_a_png_atomically(tmp_path):
    rows, flat = _ramped_flat_samples()
    samples = ([{"phase": "a", "rows": r, "rss_mib": m} for r, m in zip(rows, flat)]
               + [{"phase": "b", "rows": r, "rss_mib": m + r / 1e5} for r, m in zip(rows, flat)])
    results = {name: rss.analyze(*(np.array([[s["rows"], s["rss_mib"]] for s in samples
                                             if s["phase"] == name]).T), 100_000)
               for name in ("a", "b")}
    assert [r["verdict"] for r in results.values()] == ["flat", "GROWS"]
    path = tmp_path / "plot.png"
    rss.plot(samples, results, path, "title")
    _check_png(path)
    assert os.listdir(tmp_path) == ["plot.png"]  # no temporary file left


def _check_phase(result, rows_requested, batch_size):
    assert result["rows_requested"] == result["rows"] == rows_requested
    assert result["steps"] == -(-rows_requested // batch_size)  # the last partial batch too
    assert result["traces_while_measuring"] == 0
    assert result["input"]["rows"] == rows_requested
    assert result["input"]["malformed"] == 0
    assert result["samples_after_warmup"] >= 2
    assert result["verdict"] in ("flat", "GROWS")
    # It trained: the loss of the last steps is below that of the first ones.
    assert result["loss_last_steps"] < result["loss_first_steps"] < 1.0


def test_run_phase_trains_on_every_synthetic_row():
    data_config = config.DataConfig(batch_size=512, vocab_scale=0.05)
    rows = 40_000  # 78 full batches and one of 64 rows
    with rss.RssSampler(0.05) as sampler:
        result = stream_training.run_phase(
            "synthetic", lambda: stream_training.synthetic_bundle(data_config, rows), rows,
            model_config=_SMALL_MODEL, precision="fp32", batch_size=512, sampler=sampler,
            warmup_percent=5.0, loss_steps=20)
    _check_phase(result, rows, 512)
    samples = [s for s in sampler.samples if s["phase"] == "synthetic"]
    assert samples[0]["rows"] == 0 and samples[-1]["rows"] == rows


def test_run_phase_reads_every_line_of_a_criteo_file(tmp_path):
    path = tmp_path / "day_0.tsv"
    lines, _ = criteo_files.write_criteo_tsv_of_size(str(path), 3, seed=3)
    data_config = config.DataConfig(batch_size=1024)
    with rss.RssSampler(0.05) as sampler:
        result = stream_training.run_phase(
            "criteo file", lambda: stream_training.criteo_bundle(data_config, str(path), 1000),
            lines - 1000, model_config=_SMALL_MODEL, precision="fp32", batch_size=1024,
            sampler=sampler, warmup_percent=5.0, loss_steps=3)
    _check_phase(result, lines - 1000, 1024)


@pytest.mark.slow
def test_benchmark_program(tmp_path):
    flags = ["--synthetic_rows=30000", "--criteo_mib=3", "--batch_size=1024",
             "--sample_seconds=0.1", "--embedding_dim=4", "--num_cross_layers=1",
             "--deep_layers=32", "--vocab_scale=0.1", f"--output_dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.streaming_memory", *flags],
                          cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "streaming_memory.json").read_text())
    assert report["settings"]["data"] == {"batch_size": 1024, "vocab_scale": 0.1,
                                          "data_seed": 0}
    assert report["settings"]["model"]["deep_layers"] == [32]
    phases = report["phases"]
    assert list(phases) == ["synthetic", "criteo file"]
    assert phases["synthetic"]["rows"] == 30_000
    criteo = phases["criteo file"]
    assert abs(criteo["file_bytes"] / 2**20 - 3) < 0.5
    assert criteo["rows"] == criteo["file_lines"] - 1000
    for name, phase in phases.items():
        assert phase["traces_while_measuring"] == 0
        rise = max(phase["rise_mib"], phase["fit_rise_mib"])
        assert phase["verdict"] == ("flat" if rise < phase["flat_mib"] else "GROWS")
        assert phase["max_mib"] >= max(phase["start_mib"], phase["end_mib"]) > 100
        rows = [s["rows"] for s in report["samples"] if s["phase"] == name]
        assert rows == sorted(rows) and rows[0] == 0 and rows[-1] == phase["rows"]
        assert name in done.stdout and phase["verdict"] in done.stdout
    _check_png(tmp_path / "streaming_memory.png")


def test_benchmark_program_refuses_a_bad_precision(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.streaming_memory",
                           "--precision=bf17", "--synthetic_rows=1000", "--criteo_mib=0",
                           f"--output_dir={tmp_path}"],
                          cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-2].startswith(
        "benchmarks.streaming_memory: error: Invalid precision 'bf17'")
    assert not os.listdir(tmp_path)
