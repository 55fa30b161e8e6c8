"""Tests of the `paper` package: its pieces, and every experiment run for a
few steps at tiny sizes (1 seed, FP32/RNE/TRUNC) through the same `run_suite`
that `python -m paper` calls (the metrics are in test_paper_metrics.py).

The tiny run costs about 2 min of CPU, almost all of it tracing the 15
training steps (the first BF16 trace of each model is the dearest), so its
tests are marked slow."""

import json
import math
import os
import subprocess
import sys

import keras  # Keras 3 (conftest sets TF_USE_LEGACY_KERAS only for tf.keras)
import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from paper import common
from paper import data
from paper import report
from paper import suite
from paper import translation

# ------------------------------------------------------- pieces of the suite


def test_synthetic_translation_translates_each_token_in_its_context():
    config = translation.tiny_config()
    source, decoder_input, target = translation.synthetic_pairs(config, 200, stream=0)
    table = translation.translation_table(config)
    counts = np.zeros(config.tokens, int)
    for src, dec, tgt in zip(source, decoder_input, target):
        tokens = [t - translation.SPECIALS for t in src if t != translation.PAD]
        assert config.min_length <= len(tokens) <= config.max_length
        out = list(tgt[:len(tokens)])
        assert tgt[len(tokens)] == translation.EOS and not tgt[len(tokens) + 1:].any()
        assert dec[0] == translation.BOS and list(dec[1:len(tokens) + 1]) == out
        previous = [-1] + tokens[:-1]
        assert out == [table[p + 1, t] for p, t in zip(previous, tokens)]
        counts[tokens] += 1
    # A token's translation depends on the token before it.
    assert any(len(set(table[1:, t])) > 1 for t in range(config.tokens))
    # Zipf: token 0 is the most frequent, the last the least.
    assert counts[0] == counts.max() and counts[-1] < counts[0] / 2
    # The held-out stream is other sentences with the same dictionary.
    test_source, _, _ = translation.synthetic_pairs(config, 50, stream=1)
    assert not np.array_equal(test_source[:20], source[:20])


def test_reset_optimizer_restarts_keras_adam_but_keeps_a_constant_learning_rate():
    variable = keras.Variable(np.ones(3, np.float32))
    for schedule in ({}, {"decay_steps": 10, "warmup_steps": 2, "clipnorm": 1.0}):
        optimizer = common.adam([variable], 1e-2, beta_1=0.5, **schedule)
        assert isinstance(optimizer, keras.optimizers.Adam) and optimizer.beta_1 == 0.5
        for _ in range(3):
            optimizer.apply_gradients([(tf.constant([1.0, -2.0, 3.0]), variable)])
        assert int(optimizer.iterations) == 3
        common.reset_optimizer(optimizer)
        assert int(optimizer.iterations) == 0
        for slot in optimizer.variables:
            if slot.name == "learning_rate":
                assert float(slot.numpy()) == pytest.approx(1e-2)
            else:
                assert not np.any(slot.numpy()), slot.name


def test_full_mode_without_data_fails_clearly(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="--imagenet_dir"):
        suite.run_suite(["cnn"], full=True, output_dir=str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="train-clean-100"):
        suite.run_suite(["ds2"], full=True, librispeech_dir=str(tmp_path), output_dir=str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="train.en"):
        suite.run_suite(["gnmt"], full=True, wmt_dir=str(tmp_path), output_dir=str(tmp_path))


def test_imagenet_folder_layout_reads_batches(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for wnid in ("n01", "n02"):
            os.makedirs(tmp_path / split / wnid)
            for i in range(2):
                image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                tf.io.write_file(str(tmp_path / split / wnid / f"{i}.JPEG"),
                                 tf.io.encode_jpeg(image))
    ds, classes = data.imagenet_dataset(str(tmp_path), "train", 16, 3, seed=1, training=True)
    images, labels = next(iter(ds))
    assert classes == 2 and images.shape == (3, 16, 16, 3) and labels.shape == (3,)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    ds, _ = data.imagenet_dataset(str(tmp_path), "validation", 16, 3, training=False)
    assert sorted(np.concatenate([l.numpy() for _, l in ds]).tolist()) == [0, 0, 1, 1]


# ------------------------------------------------------ the suite, tiny


@pytest.fixture(scope="session")  # built once per test worker
def tiny_suite(tmp_path_factory):  # every test that uses it is marked slow
    output_dir = tmp_path_factory.mktemp("paper")
    results, markdown = suite.run_suite(
        experiments=suite.EXPERIMENTS, seeds=[0], precisions=["fp32", "rne", "trunc"],
        output_dir=str(output_dir), tiny=True, log=lambda message: None)
    with open(output_dir / "results.json", encoding="utf-8") as f:
        payload = json.load(f)
    return output_dir, results, markdown, payload


RANGES = {
    "top1": (0.0, 1.0), "ler": (0.0, 10.0), "greedy_token_accuracy": (0.0, 1.0),
    "teacher_forced_token_accuracy": (0.0, 1.0), "bleu": (0.0, 100.0),
    "inception_score": (1.0 - 1e-6, 10.0 + 1e-6), "frechet_distance": (-1e-6, math.inf),
    "psnr": (0.0, 100.0), "ssim": (-1.0, 1.0),
}


@pytest.mark.slow
@pytest.mark.xdist_group("paper_tiny_suite")  # shares a session fixture: one worker builds it
def test_tiny_suite_reports_every_metric_of_every_experiment(tiny_suite):
    _, _, _, payload = tiny_suite
    table = payload["table"]
    assert [row["metric_key"] for row in table] == list(RANGES)
    assert [e["name"] for e in payload["experiments"]] == list(suite.EXPERIMENTS)
    for row in table:
        low, high = RANGES[row["metric_key"]]
        for precision in ("fp32", "rne", "trunc"):
            (value,) = row["values"][precision]
            assert math.isfinite(value) and low <= value <= high, (row["metric_key"], precision, value)
        for precision in ("rne", "trunc"):
            difference = row["difference_to_fp32"][precision]
            assert difference["n"] == 1
            assert difference["mean"] == pytest.approx(
                row["values"][precision][0] - row["values"]["fp32"][0])
    for experiment in payload["experiments"]:
        for precision, runs in experiment["runs"].items():
            assert [run["seed"] for run in runs] == [0]
            assert all(points for points in runs[0]["curves"].values())


@pytest.mark.slow
@pytest.mark.xdist_group("paper_tiny_suite")  # shares a session fixture: one worker builds it
def test_tiny_suite_writes_table_and_plots(tiny_suite):
    output_dir, results, markdown, payload = tiny_suite
    assert (output_dir / "results.md").read_text(encoding="utf-8") == markdown
    assert not [p for p in os.listdir(output_dir) if p.startswith(".")]  # no temporary files
    header = markdown.split("\n| ---")[0].splitlines()[-1]
    for column in ("Family", "Model", "Metric", "FP32", "BF16-RNE", "BF16-TRUNC",
                   "RNE \u2212 FP32 \u00b1 95% CI", "TRUNC \u2212 FP32 \u00b1 95% CI", "Reference"):
        assert column in header
    assert report.PAPER_NUMBERS_NOTE in markdown
    assert payload["total_cpu_seconds"] > 0
    for name in ["curves_cnn.png", "curves_ds2.png", "curves_gnmt.png", "curves_dcgan.png",
                 "curves_srgan.png", "dcgan_samples_fp32.png", "dcgan_samples_rne.png",
                 "dcgan_samples_trunc.png", "srgan_samples.png", "paired_differences.png"]:
        assert (output_dir / name).stat().st_size > 1000, name
        assert name in payload["plots"]
    references = {row["metric_key"]: row["references"] for row in payload["table"]}
    assert [r["label"] for r in references["inception_score"]] == ["real held-out images"]
    assert [r["label"] for r in references["frechet_distance"]] == ["64 real training images"]
    assert [r["label"] for r in references["psnr"]] == ["bicubic upsampling"]
    assert [r["label"] for r in references["ssim"]] == ["bicubic upsampling"]
    assert not references["top1"] and not references["bleu"]
    psnr_row = next(line for line in markdown.splitlines() if "| PSNR (dB)" in line)
    bicubic = references["psnr"][0]["value"]
    assert psnr_row.rstrip(" |").endswith(f"bicubic upsampling: {bicubic:.3f}")


@pytest.mark.slow
@pytest.mark.xdist_group("paper_tiny_suite")  # shares a session fixture: one worker builds it
def test_bf16_runs_really_are_emulated(tiny_suite):
    _, results, _, _ = tiny_suite
    by_name = {r.experiment.name: r for r in results}
    for name in ("cnn", "ds2", "gnmt", "srgan"):
        runs = by_name[name].runs
        curve = {p: runs[p][0].curves for p in runs}
        # Same start, different arithmetic: the BF16 training losses differ from FP32.
        assert curve["rne"] != curve["fp32"] or curve["trunc"] != curve["fp32"], name
    cnn = by_name["cnn"].experiment
    assert not any(isinstance(l, tfbf16.BF16Wrapper) for l in cnn.trainer("fp32").wrapped.layers)
    wrapped = cnn.trainer("rne").wrapped
    assert isinstance(wrapped, keras.Model)
    assert sum(isinstance(l, tfbf16.BF16Wrapper) for l in wrapped.layers) >= 4


@pytest.mark.slow
@pytest.mark.xdist_group("paper_tiny_suite")  # shares a session fixture: one worker builds it
def test_paired_runs_start_from_identical_weights_and_reset_the_optimizer(tiny_suite):
    _, results, _, _ = tiny_suite
    result = next(r for r in results if r.experiment.name == "cnn")
    experiment = result.experiment  # its traced trainers are reused
    weights = experiment.initial_weights(0)
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], experiment.initial_weights(0)[0]))
    again = experiment.run("rne", 0, weights)  # after seed 0's fp32 and trunc runs
    assert again.metrics == result.runs["rne"][0].metrics
    assert again.curves == result.runs["rne"][0].curves


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "paper", "--full", "--experiments=cnn",
         f"--output_dir={tmp_path}"], capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert completed.returncode == 1
    errors = [line for line in completed.stderr.splitlines() if line.startswith("paper: error:")]
    assert errors == ["paper: error: --full needs --imagenet_dir: the directory of the data set."]
    assert "Traceback" not in completed.stderr
    assert not os.listdir(tmp_path)
