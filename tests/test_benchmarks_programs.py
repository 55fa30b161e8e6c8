"""Every benchmark program runs to the end with its smallest settings.

Each test runs `python -m benchmarks.<name>` in its own process (they define
absl flags at import) with tiny flags and checks what it printed and wrote;
the numbers themselves are not checked (they are timings of a tiny run).
`benchmarks.streaming_memory` has its own tests
(tests/recsys/test_streaming_memory.py).
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
_SMALL_DCN = ["--embedding_dim=4", "--num_cross_layers=1", "--deep_layers=16",
              "--vocab_scale=0.05"]


def _run(module, *args, timeout=1200):
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_recsys_input():
    out = _run("recsys_input", "--rows=3000", "--rounds=1", "--memory_rows=20000",
               "--batch_size=512")
    table = out[out.index("source"):].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["synthetic", "criteo", "tfrecord"]
    assert [line.split()[-3] for line in table[1:4]] == ["2,560"] * 3  # 5 batches of 512
    assert "synthetic stream, 19,968 rows" in out  # 39 batches of 512


@pytest.mark.slow
def test_recsys_throughput():
    out = _run("recsys_throughput", "--steps=3", "--rounds=1", "--precisions=fp32,native",
               "--batch_size=256", *_SMALL_DCN)
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.split()[:1] in (["fp32"], ["native"])}
    assert set(rows) == {"fp32", "native"}
    assert rows["fp32"].split()[2] == "1.00x"
    assert "input-bound:" in out


@pytest.mark.slow
def test_recsys_throughput_refuses_an_unknown_precision():
    done = subprocess.run([sys.executable, "-m", "benchmarks.recsys_throughput",
                           "--precisions=fp32,bf17"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1
    assert "benchmarks.recsys_throughput: error: Invalid precision 'bf17'" in done.stderr


@pytest.mark.slow
def test_scaling(tmp_path):
    out = _run("scaling", "--steps=3", "--rounds=1", "--precisions=fp32",
               "--batch_size=128", "--noweak", *_SMALL_DCN, f"--output_dir={tmp_path}")
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["configuration"] for r in report["rows"]] == [
        "1 worker", "2 workers, same global batch"]
    assert report["rows"][0]["ratio"] == 1.0
    assert report["model"]["deep_layers"] == [16]
    assert "| fp32 | 2 workers, same global batch | 128 |" in out
    assert os.listdir(tmp_path) == ["scaling.json"]  # the runs' directory is gone


@pytest.mark.slow
def test_wrap_overhead_table():
    # The smallest table: the Keras 3 CNN, no XLA (each variant traces and
    # compiles its train function, ~1 min for the DCN's six here).
    out = _run("wrap_overhead", "--models=cnn", "--jit_compile=false", "--rounds=1",
               "--steps=1", "--round_seconds=0.01", "--cnn_batch=4")
    assert "failed" not in out
    assert "jit_compile=False" in out and "jit_compile=True" not in out
    assert "emulated rne" in out and "native bf16" in out


@pytest.mark.slow
def test_wrap_overhead_counts_the_rounding_ops_of_a_dcn_step():
    out = _run("wrap_overhead", "--models=dcn", "--jit_compile=", "--noprofile", "--census",
               "--dcn_batch=16", "--vocab=100")
    assert "failed" not in out
    assert "forward rounding ops per step" in out and "backward rounding ops per step" in out


@pytest.mark.slow
def test_update_rounding(tmp_path):
    png = tmp_path / "update_rounding.png"
    out = _run("update_rounding", "--steps=100", "--eval_every=50", "--seeds=2",
               f"--output={png}")
    for task in ("linreg", "mlp"):
        assert f"### {task}:" in out
    assert out.count("| BF16 weights, kahan |") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["update_rounding.png"]


@pytest.mark.slow
def test_compare_examples(tmp_path):
    out = _run("compare_examples", "--seeds=2", "--epochs=1", f"--output_dir={tmp_path}")
    for name in ("digits_cnn", "cancer_mlp"):
        assert f"# BF16 comparison: {name}" in out
        assert {"compare.png", "results.json", "results.md"} <= set(os.listdir(tmp_path / name))
    assert out.count("| rne |") == 2 and out.count("| trunc |") == 2
