"""Click-prediction metrics over a whole evaluation set.

`evaluate` runs a logit model over every batch of a dataset and reports

- `log_loss`: the mean binary cross-entropy over ALL examples, computed in
  float64 from the model's FP32 logits as `log(1 + e^z) - y z`. Written here
  because `sklearn.metrics.log_loss` takes probabilities, and a probability
  rounded near 1 (or clipped) loses what a 0.001 difference needs;
  `tfrs.Model.evaluate` reports the last batch's loss instead.
- `auc`: the exact ROC AUC (`sklearn.metrics.roc_auc_score`, ties counted
  half), from all logits.
- `calibration`: mean predicted click probability / observed click rate
  (1.0 is perfectly calibrated on average).
- `count` and `rows_sha256`: how many rows were scored and a SHA-256 of
  their content (features and labels), so that results computed on
  different rows are never compared.

Example:

>>> result = evaluate(model, bundle.eval)
>>> sorted(result)
['auc', 'calibration', 'count', 'log_loss', 'mean_label', 'mean_prediction', 'rows_sha256']
"""

import hashlib

import numpy as np
from sklearn import metrics as sklearn_metrics
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
    """Exact area under the ROC curve (`sklearn.metrics.roc_auc_score`).

    Args:
        labels: array-like of 0/1 labels.
        scores: array-like of scores (logits or probabilities), same length.

    Returns:
        float AUC, or NaN if only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}.")
    if y.all() or not y.any():
        return float("nan")
    return float(sklearn_metrics.roc_auc_score(y, s))


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


def _update_rows_digest(digest, features, label):
    for value in tf.nest.flatten((features, label)):
        digest.update(np.ascontiguousarray(value.numpy()).tobytes())


def evaluate(model, dataset, steps=None, logit_fn=None):
    """Evaluates a logit model on a dataset of `(features, label)` batches.

    Args:
        model: a Keras model returning logits (used if `logit_fn` is None).
        dataset: a finite `tf.data.Dataset` of `(features, label)` batches.
        steps: evaluate only the first `steps` batches (None: all of them).
        logit_fn: a callable `features -> logits` to use instead of calling
            `model` (e.g. from `make_logit_fn`, to reuse one trace).

    Returns:
        The `click_metrics` dict over all evaluated examples, plus
        "rows_sha256": a digest of the rows evaluated (features and labels,
        in order).

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
    digest = hashlib.sha256()
    for features, label in dataset:
        logits.append(logit_fn(features).numpy())
        labels.append(label.numpy())
        _update_rows_digest(digest, features, label)
    if not labels:
        raise ValueError("The evaluation dataset is empty.")
    result = click_metrics(np.concatenate(labels), np.concatenate(logits))
    result["rows_sha256"] = digest.hexdigest()
    return result
