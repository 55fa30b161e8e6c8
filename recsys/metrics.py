"""Click-prediction metrics over a whole evaluation set.

`evaluate` runs a logit model over every batch of a dataset and reports

- `log_loss`: the mean binary cross-entropy over ALL examples, computed in
  float64 from the model's FP32 logits as `log(1 + e^z) - y z` (numerically
  stable for any logit). `tfrs.Model.evaluate` reports the last batch's loss
  instead, and a rounded sigmoid output would clip probabilities near 1;
  neither is used.
- `auc`: the exact ROC AUC (the Mann-Whitney statistic, ties counted half),
  from a sort of all logits.
- `calibration`: mean predicted click probability / observed click rate
  (1.0 is perfectly calibrated on average).

Example:

>>> result = evaluate(model, bundle.eval)
>>> sorted(result)
['auc', 'calibration', 'count', 'log_loss', 'mean_label', 'mean_prediction']
"""

import numpy as np
import tensorflow as tf


def log_loss_terms(labels, logits):
    """Per-example binary cross-entropy from logits, in float64.

    Args:
        labels: array-like of 0/1 labels.
        logits: array-like of logits (any float dtype; converted exactly).

    Returns:
        float64 array `log(1 + exp(z)) - y * z`.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return np.logaddexp(0.0, z) - y * z


def roc_auc(labels, scores):
    """Exact area under the ROC curve.

    Equals the probability that a random positive scores higher than a random
    negative, ties counting one half (average ranks).

    Args:
        labels: array-like of 0/1 labels.
        scores: array-like of scores (logits or probabilities), same length.

    Returns:
        float AUC, or NaN if only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs "
                         f"{s.shape}.")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based rank of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(run_rank, ends - starts)
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def click_metrics(labels, logits):
    """All metrics of a set of labels and logits.

    Args:
        labels: array-like of 0/1 labels.
        logits: array-like of logits, same length.

    Returns:
        A dict with "log_loss", "auc", "calibration", "mean_prediction",
        "mean_label" (floats) and "count" (int).

    Raises:
        ValueError: on empty input or non-finite logits.
    """
    y = np.asarray(labels, np.float64).ravel()
    z = np.asarray(logits, np.float64).ravel()
    if y.size == 0:
        raise ValueError("Cannot compute metrics of an empty evaluation set.")
    if not np.all(np.isfinite(z)):
        raise ValueError(
            f"{int(np.sum(~np.isfinite(z)))} of {z.size} logits are not finite;"
            " the model diverged.")
    mean_prediction = float(np.mean(0.5 * (1.0 + np.tanh(0.5 * z))))
    mean_label = float(np.mean(y))
    return {
        "log_loss": float(np.sum(log_loss_terms(y, z)) / y.size),
        "auc": roc_auc(y, z),
        "calibration": (mean_prediction / mean_label if mean_label > 0
                        else float("nan")),
        "mean_prediction": mean_prediction,
        "mean_label": mean_label,
        "count": int(y.size),
    }


def make_logit_fn(model, jit_compile=False):
    """A compiled inference function `features -> FP32 logits` for `model`."""
    return tf.function(lambda features: tf.cast(model(features, training=False),
                                                tf.float32),
                       jit_compile=jit_compile, reduce_retracing=True)


def evaluate(model, dataset, steps=None, logit_fn=None):
    """Evaluates a logit model on a dataset of `(features, label)` batches.

    Args:
        model: a Keras model returning logits (used if `logit_fn` is None).
        dataset: a finite `tf.data.Dataset` of `(features, label)` batches.
        steps: evaluate only the first `steps` batches (None: all of them).
        logit_fn: a callable `features -> logits` to use instead of calling
            `model` (e.g. from `make_logit_fn`, to reuse one trace).

    Returns:
        The `click_metrics` dict over all evaluated examples.

    Example:

    >>> result = evaluate(model, bundle.eval)
    >>> result["count"] == sum(int(label.shape[0]) for _, label in bundle.eval)
    True
    """
    if logit_fn is None:
        logit_fn = make_logit_fn(model)
    if steps is not None:
        dataset = dataset.take(steps)
    labels, logits = [], []
    for features, label in dataset:
        logits.append(logit_fn(features).numpy())
        labels.append(label.numpy())
    if not labels:
        raise ValueError("The evaluation dataset is empty.")
    return click_metrics(np.concatenate(labels), np.concatenate(logits))
