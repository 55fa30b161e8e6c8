"""Tests of the `paper` package: the metrics on hand examples, and every
experiment run for a few steps at tiny sizes (1 seed, FP32/RNE/TRUNC) through
the same `run_suite` that `python -m paper` calls.

The tiny run costs about 2 min of CPU, almost all of it tracing the 15
training steps (the first BF16 trace of each model is the dearest); on the
shared 2-core machine under load it took 3.5 min of wall time."""

import json
import math
import os

import keras  # Keras 3 (conftest sets TF_USE_LEGACY_KERAS only for tf.keras)
import numpy as np
import pytest
import tensorflow as tf

import tfbf16
from paper import data
from paper import metrics
from paper import suite
from paper import translation

# ---------------------------------------------------------------- metrics


def test_ctc_greedy_decode_merges_repeats_then_drops_blanks():
    # Frames: blank, 3, 3, blank, 3, 5, 5, blank | padding frames after length 8.
    best = [0, 3, 3, 0, 3, 5, 5, 0, 7, 7]
    scores = np.eye(8)[[best]] * 5.0 - 1.0  # [1, 10, 8] "logits"
    assert metrics.ctc_greedy_decode(scores, [8], blank=0) == [[3, 3, 5]]
    assert metrics.ctc_greedy_decode(scores, [10], blank=0) == [[3, 3, 5, 7]]
    assert metrics.ctc_greedy_decode(np.eye(4)[[[0, 0, 0]]], [3], blank=0) == [[]]


def test_error_rate_is_total_edit_distance_over_reference_length():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance([], [1, 2]) == 2
    # One deletion in 3 labels, one substitution in 2: 2 / 5.
    assert metrics.error_rate([[1, 2], [4, 4]], [[1, 3, 2], [4, 5]]) == pytest.approx(0.4)
    # Greedy decoding of a hand example, scored against its reference.
    scores = np.eye(11)[[[0, 2, 2, 0, 0, 9, 0, 9, 9]]]
    hyp = metrics.ctc_greedy_decode(scores, [9], blank=0)
    assert hyp == [[2, 9, 9]]
    assert metrics.error_rate(hyp, [[2, 9]]) == pytest.approx(0.5)


def test_psnr_on_known_images():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (3, 8, 8, 1))
    assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0)    # MSE 0.01
    assert metrics.psnr(x + 0.01, x) == pytest.approx(40.0)
    assert metrics.psnr(x, x) == pytest.approx(100.0)         # capped, not inf
    assert metrics.psnr(2 * (x + 0.1), 2 * x, data_range=2.0) == pytest.approx(20.0)


def test_ssim_on_known_images_and_against_tensorflow():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (4, 16, 16, 1))
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    # Constant images: only the luminance term is left.
    a, b, c1 = 0.2, 0.6, (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(np.full((1, 8, 8), a), np.full((1, 8, 8), b)) == pytest.approx(expected)
    # Same definition as tf.image.ssim (Gaussian window, 'valid' filtering).
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    reference = tf.image.ssim(tf.constant(x, tf.float32), tf.constant(y, tf.float32), max_val=1.0,
                              filter_size=7, filter_sigma=1.5).numpy().mean()
    assert metrics.ssim(x, y, window_size=7) == pytest.approx(float(reference), abs=1e-5)
    with pytest.raises(ValueError, match="smaller"):
        metrics.ssim(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), window_size=7)


def test_inception_score_of_uniform_and_one_hot_classifiers():
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    one_hot_balanced = np.eye(10)[np.arange(100) % 10]
    assert metrics.inception_score(one_hot_balanced) == pytest.approx(10.0, rel=1e-6)
    one_hot_single_class = np.eye(10)[np.zeros(100, int)]
    assert metrics.inception_score(one_hot_single_class) == pytest.approx(1.0)
    two_classes = np.eye(10)[np.arange(100) % 2]
    assert metrics.inception_score(two_classes) == pytest.approx(2.0, rel=1e-6)


def test_bleu_and_token_accuracy():
    ref = [[5, 6, 7, 8, 9], [4, 5, 6, 7]]
    assert metrics.corpus_bleu(ref, ref) == pytest.approx(100.0)
    assert metrics.corpus_bleu([[1, 2, 3, 4, 5], [1, 2, 3, 1]], ref) == 0.0
    # Brevity penalty only: a correct prefix of 4 of 5 tokens, one sentence.
    assert metrics.corpus_bleu([[5, 6, 7, 8]], [[5, 6, 7, 8, 9]]) == pytest.approx(
        100.0 * math.exp(1 - 5 / 4))
    assert metrics.token_accuracy([[1, 2, 0]], [[1, 3, 0]], [[1, 1, 0]]) == 0.5


# ------------------------------------------------------- pieces of the suite


def test_synthetic_translation_is_reverse_then_permute():
    config = translation.tiny_config()
    source, decoder_input, target = translation.synthetic_pairs(config, 20, stream=0)
    permutation = {}
    for src, dec, tgt in zip(source, decoder_input, target):
        tokens = [t for t in src if t != translation.PAD]
        out = list(tgt[:len(tokens)])
        assert tgt[len(tokens)] == translation.EOS
        assert dec[0] == translation.BOS and list(dec[1:len(tokens) + 1]) == out
        for s, t in zip(tokens[::-1], out):
            assert permutation.setdefault(s, t) == t  # one fixed mapping


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


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
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
    "inception_score": (1.0 - 1e-6, 10.0 + 1e-6), "psnr": (0.0, 100.0), "ssim": (-1.0, 1.0),
}


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


def test_tiny_suite_writes_table_and_plots(tiny_suite):
    output_dir, results, markdown, payload = tiny_suite
    assert (output_dir / "results.md").read_text(encoding="utf-8") == markdown
    header = markdown.split("\n| ---")[0].splitlines()[-1]
    for column in ("Family", "Model", "Metric", "FP32", "BF16-RNE", "BF16-TRUNC",
                   "RNE \u2212 FP32 [95% CI]", "TRUNC \u2212 FP32 [95% CI]"):
        assert column in header
    for name in ["curves_cnn.png", "curves_ds2.png", "curves_gnmt.png", "curves_dcgan.png",
                 "curves_srgan.png", "dcgan_samples_fp32.png", "dcgan_samples_rne.png",
                 "dcgan_samples_trunc.png", "srgan_samples.png", "paired_differences.png"]:
        assert (output_dir / name).stat().st_size > 1000, name
        assert name in payload["plots"]
    dcgan = next(e for e in payload["experiments"] if e["name"] == "dcgan")
    assert "Inception-style score of real held-out images" in dcgan["references"]


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


def test_paired_runs_start_from_identical_weights_and_reset_the_optimizer(tiny_suite):
    _, results, _, _ = tiny_suite
    result = next(r for r in results if r.experiment.name == "cnn")
    experiment = result.experiment  # its traced trainers are reused
    weights = experiment.initial_weights(0)
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], experiment.initial_weights(0)[0]))
    again = experiment.run("rne", 0, weights)  # after seed 0's fp32 and trunc runs
    assert again.metrics == result.runs["rne"][0].metrics
    assert again.curves == result.runs["rne"][0].curves
