"""Evaluation metrics of the paper's model families, computed by libraries.

- `ctc_greedy_decode`, `edit_distance`, `error_rate`: greedy (best path) CTC
  decoding (`tf.nn.ctc_greedy_decoder`) and the label/character/word error
  rate of speech recognition (`tf.edit_distance`).
- `token_accuracy`, `corpus_bleu`: machine translation (BLEU by sacreBLEU).
- `psnr`, `ssim`: super-resolution quality against the original images
  (`tf.image.psnr`, `tf.image.ssim`).
- `inception_score`: exp(E_x[KL(p(y|x) || p(y))]) of generated images under a
  classifier (`scipy.special.rel_entr`).
- `frechet_distance`: the Fréchet distance between Gaussians fitted to two
  sets of classifier features (FID's formula, `scipy.linalg.sqrtm`).

Example:

>>> ctc_greedy_decode(np.eye(3)[[[0, 1, 1, 0, 1, 2, 2]]], [7], blank=0)
[[1, 1, 2]]
>>> error_rate([[1, 2]], [[1, 3, 2]])
0.3333333333333333
"""

import numpy as np
import scipy.linalg
import scipy.special
import tensorflow as tf

#: PSNR of an image equal to its reference (instead of infinity), in dB.
PSNR_OF_IDENTICAL_IMAGES = 100.0


def ctc_greedy_decode(scores, lengths, blank=0):
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        scores: [batch, time, classes] logits or probabilities.
        lengths: [batch] number of valid frames of each sequence.
        blank: index of the CTC blank class.

    Returns:
        A list (one per sequence) of lists of label indices.
    """
    scores = tf.convert_to_tensor(np.asarray(scores, np.float32))
    lengths = np.asarray(lengths, np.int32).reshape(-1)
    (decoded,), _ = tf.nn.ctc_greedy_decoder(
        tf.transpose(scores, [1, 0, 2]), lengths, merge_repeated=True, blank_index=blank)
    rows = tf.RaggedTensor.from_sparse(decoded).to_list()
    return rows + [[] for _ in range(len(lengths) - len(rows))]


def _sparse(sequences):
    """A SparseTensor of rows of ints or strings (for `tf.edit_distance`)."""
    sequences = [list(s) for s in sequences]
    strings = any(isinstance(item, str) for s in sequences for item in s)
    dtype = tf.string if strings else tf.int64
    return tf.ragged.constant(sequences, dtype=dtype, ragged_rank=1).to_sparse()


def edit_distances(hypotheses, references):
    """Levenshtein distance of each (hypothesis, reference) pair (`tf.edit_distance`).

    Args:
        hypotheses, references: same-length lists of sequences of ints or
            of strings (characters or words).

    Returns:
        An int array, one distance per pair (substitutions, insertions and
        deletions all cost 1).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    if not len(references):
        return np.zeros(0, np.int64)
    distances = tf.edit_distance(_sparse(hypotheses), _sparse(references), normalize=False)
    return np.rint(distances.numpy()).astype(np.int64).reshape(-1)


def edit_distance(hypothesis, reference):
    """Levenshtein distance of two sequences (see `edit_distances`)."""
    return int(edit_distances([hypothesis], [reference])[0])


def error_rate(hypotheses, references):
    """Total edit distance over total reference length (LER, CER or WER).

    Args:
        hypotheses: sequences (of labels, characters or words).
        references: the reference sequences, same order.

    Returns:
        sum(edit_distance(h, r)) / sum(len(r)); can exceed 1.
    """
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("The references are all empty.")
    return int(edit_distances(hypotheses, references).sum()) / total


def token_accuracy(predicted, reference, mask):
    """Fraction of the positions with `mask` true where predicted == reference."""
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("The mask selects no token.")
    return float(np.sum((predicted == reference) & mask) / np.sum(mask))


def corpus_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU (Papineni et al. 2002) in percent, one reference per sentence.

    Computed by sacreBLEU on already tokenized sequences (`tokenize="none"`:
    the tokens are joined by spaces and split again), without smoothing: a
    corpus without any matching `max_order`-gram scores 0.

    Args:
        hypotheses, references: same-length lists of token sequences (ints
            or strings without spaces).
        max_order: the longest n-gram.

    Returns:
        BLEU in [0, 100].
    """
    import sacrebleu  # noqa: PLC0415 (only BLEU needs it)

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    if sum(len(h) for h in hypotheses) == 0:
        return 0.0
    join = lambda tokens: " ".join(str(t) for t in tokens)  # noqa: E731
    bleu = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none",
                                  max_ngram_order=max_order, force=True)
    return float(bleu.corpus_score([join(h) for h in hypotheses],
                                   [[join(r) for r in references]]).score)


def _image_tensors(images, references):
    x = np.asarray(images, np.float32)
    y = np.asarray(references, np.float32)
    if x.shape != y.shape:
        raise ValueError(f"Shapes differ: {x.shape} and {y.shape}.")
    if x.ndim == 3:
        x, y = x[..., None], y[..., None]
    return tf.constant(x), tf.constant(y)


def psnr(images, references, data_range=1.0):
    """Mean over images of the peak signal-to-noise ratio, in dB (`tf.image.psnr`).

    Args:
        images, references: arrays of the same shape [batch, H, W(, C)].
        data_range: the peak value (1.0 for images in [0, 1]).

    Returns:
        The mean of 10 log10(data_range^2 / MSE) over the images (computed
        in float32 by TensorFlow); an image equal to its reference counts as
        `PSNR_OF_IDENTICAL_IMAGES` dB instead of infinity.
    """
    x, y = _image_tensors(images, references)
    values = tf.image.psnr(x, y, max_val=data_range).numpy().astype(np.float64)
    return float(np.mean(np.minimum(values, PSNR_OF_IDENTICAL_IMAGES)))


def ssim(images, references, data_range=1.0, window_size=7, sigma=1.5, k1=0.01, k2=0.03):
    """Mean structural similarity (Wang et al. 2004) over images (`tf.image.ssim`).

    The local statistics use a Gaussian window of `window_size` (the usual
    11 does not fit 8x8 digits; 7 is used for them) and 'valid' filtering;
    the SSIM map is averaged over positions and channels, then over images.

    Args:
        images, references: [batch, H, W] or [batch, H, W, C] arrays.
        data_range: the dynamic range of the values (1.0 for [0, 1]).
        window_size, sigma: the Gaussian window.
        k1, k2: the stabilizing constants.

    Returns:
        The mean SSIM, in [-1, 1].
    """
    x, y = _image_tensors(images, references)
    if min(x.shape[1:3]) < window_size:
        raise ValueError(f"Images {tuple(x.shape[1:3])} are smaller than the "
                         f"{window_size}x{window_size} window.")
    values = tf.image.ssim(x, y, max_val=data_range, filter_size=window_size,
                           filter_sigma=sigma, k1=k1, k2=k2)
    return float(np.mean(values.numpy().astype(np.float64)))


def inception_score(probabilities):
    """exp(E_x[KL(p(y|x) || p(y))]) over all samples (a single split).

    Args:
        probabilities: [samples, classes] class probabilities p(y|x) of the
            generated images under a classifier.

    Returns:
        A score in [1, classes]: 1 when every image gets the same
        prediction, `classes` when each is classified with certainty and the
        classes are used equally.
    """
    p = np.asarray(probabilities, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(scipy.special.rel_entr(p, marginal).sum(axis=1))))


def frechet_distance(features, reference_features):
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), with the
    sample means and covariances (ddof=1) of the two sets, as in Heusel et
    al. 2017; the matrix square root is `scipy.linalg.sqrtm` (its tiny
    imaginary part from round-off is dropped). The value depends on the
    sample sizes, so compare distances computed with equal sizes. When the
    product of the covariances has no finite square root (singular
    covariances), a ridge of 1e-6 is added to both, as pytorch-fid does.

    Args:
        features: [n, d] features of the generated samples.
        reference_features: [m, d] features of the reference samples.

    Returns:
        The squared Fréchet distance (>= 0, up to round-off).
    """
    a = np.asarray(features, np.float64)
    b = np.asarray(reference_features, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Need [n, d] and [m, d] features, got {a.shape} and {b.shape}.")
    if min(len(a), len(b)) < 2:
        raise ValueError("Each feature set needs at least 2 samples for a covariance.")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        # Singular covariances (e.g. a feature that is constant in both
        # sets): the usual FID remedy, a tiny ridge on both.
        ridge = 1e-6 * np.eye(a.shape[1])
        root = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    return float(np.sum((mean_a - mean_b) ** 2)
                 + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(root)))
