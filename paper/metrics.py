"""Evaluation metrics of the paper's model families, in NumPy.

- `ctc_greedy_decode`, `edit_distance`, `error_rate`: greedy (best path) CTC
  decoding and the label/character/word error rate of speech recognition.
- `token_accuracy`, `corpus_bleu`: machine translation.
- `psnr`, `ssim`: super-resolution quality against the original images.
- `inception_score`: exp(E_x[KL(p(y|x) || p(y))]) of generated images under a
  classifier.

Example:

>>> ctc_greedy_decode(np.eye(3)[[[0, 1, 1, 0, 1, 2, 2]]], [7], blank=0)
[[1, 1, 2]]
>>> error_rate([[1, 2]], [[1, 3, 2]])
0.3333333333333333
"""

import collections
import math

import numpy as np


def ctc_greedy_decode(scores, lengths, blank=0):
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        scores: [batch, time, classes] logits or probabilities.
        lengths: [batch] number of valid frames of each sequence.
        blank: index of the CTC blank class.

    Returns:
        A list (one per sequence) of lists of label indices.
    """
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


def edit_distance(hypothesis, reference):
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    hypothesis, reference = list(hypothesis), list(reference)
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        current = [i] + [0] * len(reference)
        for j, r in enumerate(reference, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r))
        previous = current
    return previous[-1]


def error_rate(hypotheses, references):
    """Total edit distance over total reference length (LER, CER or WER).

    Args:
        hypotheses: sequences (of labels, characters or words).
        references: the reference sequences, same order.

    Returns:
        sum(edit_distance(h, r)) / sum(len(r)); can exceed 1.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("The references are all empty.")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references)) / total


def token_accuracy(predicted, reference, mask):
    """Fraction of the positions with `mask` true where predicted == reference."""
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("The mask selects no token.")
    return float(np.sum((predicted == reference) & mask) / np.sum(mask))


def corpus_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU (Papineni et al. 2002) in percent, one reference per sentence.

    Clipped n-gram precisions for n = 1..max_order are pooled over the corpus,
    their geometric mean is multiplied by the brevity penalty; no smoothing
    (a corpus without any matching 4-gram scores 0), as in sacreBLEU's
    default "exp" method without smoothing on tokenized input.
    """
    matches = [0] * max_order
    totals = [0] * max_order
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


def psnr(images, references, data_range=1.0):
    """Mean over images of the peak signal-to-noise ratio, in dB.

    Args:
        images, references: arrays of the same shape [batch, ...].
        data_range: the peak value (1.0 for images in [0, 1]).

    Returns:
        The mean of 10 log10(data_range^2 / MSE) over the images; an image
        equal to its reference counts as 100 dB (instead of infinity).
    """
    x = np.asarray(images, np.float64)
    y = np.asarray(references, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"Shapes differ: {x.shape} and {y.shape}.")
    mse = np.mean((x - y).reshape(len(x), -1) ** 2, axis=1)
    values = 10.0 * np.log10(data_range ** 2 / np.maximum(mse, data_range ** 2 * 1e-10))
    return float(np.mean(values))


def _gaussian_window(size, sigma):
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def _filter_valid(images, window):
    """2-D 'valid' correlation of [batch, H, W, C] images with a window."""
    size = window.shape[0]
    patches = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    return np.einsum("bhwcij,ij->bhwc", patches, window)


def ssim(images, references, data_range=1.0, window_size=7, sigma=1.5, k1=0.01, k2=0.03):
    """Mean structural similarity (Wang et al. 2004) over images.

    The local statistics use a Gaussian window of `window_size` (the usual
    11 does not fit 8x8 digits; 7 is used for them) and 'valid' filtering,
    like `tf.image.ssim`; the SSIM map is averaged over positions and
    channels, then over images.

    Args:
        images, references: [batch, H, W] or [batch, H, W, C] arrays.
        data_range: the dynamic range of the values (1.0 for [0, 1]).
        window_size, sigma: the Gaussian window.
        k1, k2: the stabilizing constants.

    Returns:
        The mean SSIM, in [-1, 1].
    """
    x = np.asarray(images, np.float64)
    y = np.asarray(references, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"Shapes differ: {x.shape} and {y.shape}.")
    if x.ndim == 3:
        x, y = x[..., None], y[..., None]
    if min(x.shape[1:3]) < window_size:
        raise ValueError(f"Images {x.shape[1:3]} are smaller than the {window_size}x{window_size} window.")
    window = _gaussian_window(window_size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x ** 2
    var_y = _filter_valid(y * y, window) - mu_y ** 2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(np.mean(ssim_map.reshape(len(x), -1).mean(axis=1)))


def inception_score(probabilities, eps=1e-12):
    """exp(E_x[KL(p(y|x) || p(y))]) over all samples (a single split).

    Args:
        probabilities: [samples, classes] class probabilities p(y|x) of the
            generated images under a classifier.
        eps: floor inside the logarithms.

    Returns:
        A score in [1, classes]: 1 when every image gets the same
        prediction, `classes` when each is classified with certainty and the
        classes are used equally.
    """
    p = np.asarray(probabilities, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p + eps) - np.log(marginal + eps)), axis=1)
    return float(np.exp(np.mean(kl)))
