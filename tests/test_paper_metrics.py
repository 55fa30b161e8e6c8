"""Tests of `paper.metrics`: hand examples, closed forms, and agreement with the
NumPy implementations they replaced (kept here as independent oracles, so the
switch to TensorFlow, sacreBLEU and SciPy is shown to compute the same
numbers on the same inputs)."""

import collections
import math
import zlib

import numpy as np
import pytest
import tensorflow as tf

from paper import gan
from paper import metrics


def _rng(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


# ------------------------------------------- the replaced NumPy code (oracles)


def _numpy_ctc_greedy_decode(scores, lengths, blank=0):
    best = np.argmax(np.asarray(scores), axis=-1)
    decoded = []
    for row, length in zip(best, np.asarray(lengths).reshape(-1)):
        labels, previous = [], None
        for label in row[: int(length)].tolist():
            if label != previous and label != blank:
                labels.append(label)
            previous = label
        decoded.append(labels)
    return decoded


def _numpy_edit_distance(hypothesis, reference):
    hypothesis, reference = list(hypothesis), list(reference)
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        current = [i] + [0] * len(reference)
        for j, r in enumerate(reference, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r))
        previous = current
    return previous[-1]


def _numpy_corpus_bleu(hypotheses, references, max_order=4):
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hyp, ref in zip(hypotheses, references):
        hyp, ref = list(hyp), list(ref)
        hyp_length += len(hyp)
        ref_length += len(ref)
        for n in range(1, max_order + 1):
            hyp_ngrams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = collections.Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if hyp_length > ref_length else math.exp(1.0 - ref_length / hyp_length)
    return 100.0 * brevity * math.exp(log_precision)


def _numpy_psnr(images, references, data_range=1.0):
    x, y = np.asarray(images, np.float64), np.asarray(references, np.float64)
    mse = np.mean((x - y).reshape(len(x), -1) ** 2, axis=1)
    return float(np.mean(10.0 * np.log10(data_range ** 2 / np.maximum(mse, data_range ** 2 * 1e-10))))


def _numpy_ssim(images, references, window_size=7, sigma=1.5, k1=0.01, k2=0.03):
    x, y = np.asarray(images, np.float64), np.asarray(references, np.float64)
    coords = np.arange(window_size, dtype=np.float64) - (window_size - 1) / 2.0
    g = np.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    window = np.outer(g / g.sum(), g / g.sum())

    def valid(images):
        patches = np.lib.stride_tricks.sliding_window_view(images, window.shape, axis=(1, 2))
        return np.einsum("bhwcij,ij->bhwc", patches, window)

    c1, c2 = k1 ** 2, k2 ** 2
    mu_x, mu_y = valid(x), valid(y)
    var_x, var_y = valid(x * x) - mu_x ** 2, valid(y * y) - mu_y ** 2
    cov = valid(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(np.mean(ssim_map.reshape(len(x), -1).mean(axis=1)))


def _numpy_inception_score(probabilities, eps=1e-12):
    p = np.asarray(probabilities, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p + eps) - np.log(marginal + eps)), axis=1))))


# ------------------------------------------------------------ speech metrics


def test_ctc_greedy_decode_merges_repeats_then_drops_blanks():
    # Frames: blank, 3, 3, blank, 3, 5, 5, blank | padding frames after length 8.
    best = [0, 3, 3, 0, 3, 5, 5, 0, 7, 7]
    scores = np.eye(8)[[best]] * 5.0 - 1.0  # [1, 10, 8] "logits"
    assert metrics.ctc_greedy_decode(scores, [8], blank=0) == [[3, 3, 5]]
    assert metrics.ctc_greedy_decode(scores, [10], blank=0) == [[3, 3, 5, 7]]
    assert metrics.ctc_greedy_decode(np.eye(4)[[[0, 0, 0]]], [3], blank=0) == [[]]
    # A blank that is not class 0 (TensorFlow's default is the last class).
    assert metrics.ctc_greedy_decode(np.eye(4)[[[3, 1, 1, 3, 1, 0]]], [6], blank=3) == [[1, 1, 0]]


def test_ctc_greedy_decode_equals_the_numpy_decoder():
    rng = _rng("ctc")
    scores = rng.normal(size=(64, 30, 11)).astype(np.float32) * 3.0
    scores[:, :, 0] += 1.5  # plenty of blanks
    lengths = rng.integers(0, 31, 64)
    for blank in (0, 10):
        assert (metrics.ctc_greedy_decode(scores, lengths, blank=blank)
                == _numpy_ctc_greedy_decode(scores, lengths, blank=blank))
    # Trailing sequences that decode to nothing keep their place.
    assert metrics.ctc_greedy_decode(np.eye(3)[[[1, 1], [0, 0], [0, 0]]], [2, 2, 2]) == [[1], [], []]


def test_error_rate_is_total_edit_distance_over_reference_length():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance([], [1, 2]) == 2
    assert metrics.edit_distance([1, 2], []) == 2
    assert metrics.edit_distance("the cat sat".split(), "the cat sat down".split()) == 1
    # One deletion in 3 labels, one substitution in 2: 2 / 5.
    assert metrics.error_rate([[1, 2], [4, 4]], [[1, 3, 2], [4, 5]]) == pytest.approx(0.4)
    scores = np.eye(11)[[[0, 2, 2, 0, 0, 9, 0, 9, 9]]]
    hyp = metrics.ctc_greedy_decode(scores, [9], blank=0)
    assert hyp == [[2, 9, 9]]
    assert metrics.error_rate(hyp, [[2, 9]]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        metrics.error_rate([[1]], [[]])
    with pytest.raises(ValueError, match="2 hypotheses for 1"):
        metrics.error_rate([[1], [2]], [[1]])


def test_edit_distances_equal_the_numpy_levenshtein():
    rng = _rng("levenshtein")
    hyps = [rng.integers(0, 4, rng.integers(0, 9)).tolist() for _ in range(200)]
    refs = [rng.integers(0, 4, rng.integers(1, 9)).tolist() for _ in range(200)]
    expected = [_numpy_edit_distance(h, r) for h, r in zip(hyps, refs)]
    assert metrics.edit_distances(hyps, refs).tolist() == expected
    words = ["a", "b", "cc", "d"]
    hyps = [[words[i] for i in h] for h in hyps]
    refs = [[words[i] for i in r] for r in refs]
    assert metrics.edit_distances(hyps, refs).tolist() == expected


# -------------------------------------------------------------- translation


def test_bleu_of_known_sentences():
    ref = [[5, 6, 7, 8, 9], [4, 5, 6, 7]]
    assert metrics.corpus_bleu(ref, ref) == pytest.approx(100.0)
    assert metrics.corpus_bleu([[1, 2, 3, 4, 5], [1, 2, 3, 1]], ref) == 0.0
    assert metrics.corpus_bleu([[], []], ref) == 0.0
    # Brevity penalty only: a correct prefix of 4 of 5 tokens, one sentence.
    assert metrics.corpus_bleu([[5, 6, 7, 8]], [[5, 6, 7, 8, 9]]) == pytest.approx(
        100.0 * math.exp(1 - 5 / 4), abs=1e-12)
    # Papineni et al.'s counting by hand: "the the cat sat on the mat" against
    # "the cat sat on the mat": clipped 1-gram 6/7, 2-grams 5/6, 3-grams 4/5,
    # 4-grams 3/4; longer than the reference, so no brevity penalty.
    hyp, reference = "the the cat sat on the mat".split(), "the cat sat on the mat".split()
    expected = 100.0 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert metrics.corpus_bleu([hyp], [reference]) == pytest.approx(expected, abs=1e-12)


def test_bleu_equals_the_numpy_corpus_bleu():
    rng = _rng("bleu")
    for _ in range(20):
        refs = [rng.integers(0, 6, rng.integers(3, 12)).tolist() for _ in range(30)]
        hyps = [[t if rng.random() < 0.8 else int(rng.integers(0, 6)) for t in r[:rng.integers(2, len(r) + 2)]]
                for r in refs]
        assert metrics.corpus_bleu(hyps, refs) == pytest.approx(_numpy_corpus_bleu(hyps, refs), abs=1e-12)


def test_token_accuracy():
    assert metrics.token_accuracy([[1, 2, 0]], [[1, 3, 0]], [[1, 1, 0]]) == 0.5
    with pytest.raises(ValueError, match="no token"):
        metrics.token_accuracy([[1]], [[1]], [[0]])


# ------------------------------------------------------------------- images


def test_psnr_on_known_images_and_against_numpy():
    rng = _rng("psnr")
    x = rng.uniform(0.2, 0.8, (3, 8, 8, 1))
    # tf.image.psnr computes in float32: agreement to ~1e-4 dB, not 1e-12.
    assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)    # MSE 0.01
    assert metrics.psnr(x + 0.01, x) == pytest.approx(40.0, abs=1e-3)
    assert metrics.psnr(x, x) == metrics.PSNR_OF_IDENTICAL_IMAGES     # capped, not inf
    assert metrics.psnr(2 * (x + 0.1), 2 * x, data_range=2.0) == pytest.approx(20.0, abs=1e-4)
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    assert metrics.psnr(y, x) == pytest.approx(_numpy_psnr(y, x), abs=1e-4)
    assert metrics.psnr(y[..., 0], x[..., 0]) == metrics.psnr(y, x)
    with pytest.raises(ValueError, match="Shapes differ"):
        metrics.psnr(x, x[:2])


def test_ssim_on_known_images_and_against_numpy():
    rng = _rng("ssim")
    x = rng.uniform(0, 1, (4, 16, 16, 1))
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    # Constant images: only the luminance term is left. tf.image.ssim works in
    # float32 and gets the local variances as E[x^2] - E[x]^2: their
    # cancellation error (~3e-8) over c2 = 9e-4 moves the result by ~4e-5.
    a, b, c1 = 0.2, 0.6, (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(np.full((1, 8, 8), a), np.full((1, 8, 8), b)) == pytest.approx(expected, abs=1e-4)
    # Same definition as the replaced NumPy code (Gaussian window, 'valid'
    # filtering, same constants); float32 again, hence 1e-5 rather than 1e-12.
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    for window in (7, 11):
        assert metrics.ssim(x, y, window_size=window) == pytest.approx(
            _numpy_ssim(x, y, window_size=window), abs=1e-5)
    with pytest.raises(ValueError, match="smaller"):
        metrics.ssim(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), window_size=7)


def test_bicubic_baseline_of_the_digits():
    from paper import data

    _, _, x_test, _ = data.digits()
    low = gan.downsample(x_test, 2)
    # Average pooling: each low-resolution pixel is the mean of its 2x2 block.
    np.testing.assert_allclose(low[:, 0, 0, 0], x_test[:, :2, :2, 0].mean(axis=(1, 2)), rtol=1e-6)
    bicubic = gan.upsample(low, (8, 8), "bicubic")
    expected = np.clip(tf.image.resize(low, (8, 8), method="bicubic").numpy(), 0, 1)
    np.testing.assert_array_equal(bicubic, expected)
    # A constant image is its own upsampling.
    np.testing.assert_allclose(gan.upsample(np.full((1, 4, 4, 1), 0.3), (8, 8)), 0.3, atol=1e-6)
    # Bicubic beats nearest-neighbour in PSNR on the digits (13.47 vs 13.17
    # dB; not in SSIM: 0.605 vs 0.651).
    nearest = gan.upsample(low, (8, 8), "nearest")
    assert metrics.psnr(bicubic, x_test) > metrics.psnr(nearest, x_test)
    experiment = gan.SRGANExperiment(gan.srgan_digits_config())
    shown = {r.metric: r for r in experiment.references() if r.metric}
    assert set(shown) == {"psnr", "ssim"}
    assert shown["psnr"].label == "bicubic upsampling"
    assert shown["psnr"].value == metrics.psnr(bicubic, x_test)
    assert shown["ssim"].value == metrics.ssim(bicubic, x_test, window_size=7)


# ---------------------------------------------------------------- GAN scores


def test_inception_score_of_uniform_and_one_hot_classifiers():
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    one_hot_balanced = np.eye(10)[np.arange(100) % 10]
    assert metrics.inception_score(one_hot_balanced) == pytest.approx(10.0, rel=1e-12)
    one_hot_single_class = np.eye(10)[np.zeros(100, int)]
    assert metrics.inception_score(one_hot_single_class) == pytest.approx(1.0)
    two_classes = np.eye(10)[np.arange(100) % 2]
    assert metrics.inception_score(two_classes) == pytest.approx(2.0, rel=1e-12)
    # The replaced code put 1e-12 inside its logarithms; SciPy's rel_entr is exact.
    p = _rng("inception").dirichlet(np.full(10, 0.3), 500)
    assert metrics.inception_score(p) == pytest.approx(_numpy_inception_score(p), rel=1e-9)


def _samples_with_moments(mean, covariance, n, rng):
    """n samples whose sample mean and covariance (ddof=1) are exactly these."""
    d = len(mean)
    z = rng.standard_normal((n, d))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened
    return mean + z @ np.linalg.cholesky(covariance).T


def test_frechet_distance_of_gaussians_equals_the_closed_form():
    rng = _rng("frechet")
    d = 6
    mean_a, mean_b = rng.normal(size=d), rng.normal(size=d)
    # Commuting (diagonal) covariances: |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2.
    var_a, var_b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    a = _samples_with_moments(mean_a, np.diag(var_a), 400, rng)
    b = _samples_with_moments(mean_b, np.diag(var_b), 300, rng)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, abs=1e-9)
    # General covariances: Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), the
    # symmetric form, by eigendecompositions.
    m_a, m_b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(d), m_b @ m_b.T + 0.1 * np.eye(d)

    def sqrt_psd(matrix):
        values, vectors = np.linalg.eigh(matrix)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = sqrt_psd(cov_a)
    expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(sqrt_psd(root_a @ cov_b @ root_a)))
    a = _samples_with_moments(mean_a, cov_a, 500, rng)
    b = _samples_with_moments(mean_b, cov_b, 500, rng)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, abs=1e-8)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Large samples of the same Gaussian approach 0 from above.
    same = metrics.frechet_distance(rng.normal(size=(4000, d)), rng.normal(size=(4000, d)))
    assert 0.0 < same < 0.02
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        metrics.frechet_distance(a, b[:, :3])


def test_frechet_distance_with_a_constant_feature():
    # A feature that is 0 in both sets (a dead ReLU channel) makes the
    # covariances singular; the distance is that of the other features.
    rng = _rng("frechet singular")
    a, b = rng.normal(size=(300, 3)), rng.normal(1.0, 1.0, size=(300, 3))
    padded_a, padded_b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 0), (0, 1)))
    assert metrics.frechet_distance(padded_a, padded_b) == pytest.approx(
        metrics.frechet_distance(a, b), abs=1e-4)
