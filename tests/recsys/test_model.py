"""The DCN-V2 model, its training step and the click metrics."""

import math

import numpy as np
import pytest
import tensorflow as tf

from recsys import metrics
from recsys import model as model_lib
from recsys import train_step as train_step_lib

VOCAB = [50] * 26


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    features = {
        "dense": tf.constant(rng.gamma(1.0, 1.0, (n, 13)), tf.float32),
        "sparse": tf.constant(rng.integers(0, 50, (n, 26)), tf.int64),
    }
    return features, tf.constant(rng.integers(0, 2, n), tf.float32)


@pytest.mark.parametrize("structure", model_lib.STRUCTURES)
@pytest.mark.parametrize("projection_dim", [None, 8])
def test_builds_and_gives_fp32_logits(structure, projection_dim):
    model = model_lib.build_dcn(VOCAB, embedding_dim=4, num_cross_layers=2,
                                projection_dim=projection_dim,
                                deep_layers=[16, 8], structure=structure,
                                seed=0)
    features, _ = _batch()
    logits = model(features)
    assert logits.shape == (32,)
    assert logits.dtype == tf.float32
    crosses = [l for l in model.layers if l.name.startswith("cross_")]
    assert len(crosses) == 2
    x0_dim = 26 * 4 + 13
    kernels = sorted(w.shape.as_list() for w in crosses[0].trainable_weights
                     if len(w.shape) == 2)
    if projection_dim is None:
        assert kernels == [[x0_dim, x0_dim]]
    else:
        assert kernels == [[8, x0_dim], [x0_dim, 8]]
    embeddings = [l for l in model.layers if l.name.startswith("embedding_")]
    assert len(embeddings) == 26
    assert [e.input_dim for e in embeddings] == VOCAB
    # Parallel puts deep and cross side by side: the logit layer sees both.
    logit_in = model.get_layer("logit_dense").kernel.shape[0]
    assert logit_in == (x0_dim + 8 if structure == "parallel" else 8)


def test_same_seed_same_weights_and_trains():
    a = model_lib.build_dcn(VOCAB, embedding_dim=4, deep_layers=[16], seed=3)
    b = model_lib.build_dcn(VOCAB, embedding_dim=4, deep_layers=[16], seed=3)
    c = model_lib.build_dcn(VOCAB, embedding_dim=4, deep_layers=[16], seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not all(np.array_equal(x, y)
                   for x, y in zip(a.get_weights(), c.get_weights()))

    features, labels = _batch(64)
    step = train_step_lib.make_train_step(a, tf.keras.optimizers.Adam(0.01))
    losses = [float(step(features, labels)) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(structure="diagonal"), "structure"),
    (dict(deep_layers=[16, 0]), "deep_layers"),
    (dict(embedding_dim=0), "embedding_dim"),
    (dict(projection_dim=0), "projection_dim"),
    (dict(num_cross_layers=0, deep_layers=[]), "at least one"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_lib.build_dcn(VOCAB, **kwargs)
    with pytest.raises(ValueError, match="26"):
        model_lib.build_dcn([10] * 25)


def test_click_metrics_on_known_numbers():
    labels = np.array([1, 0, 1, 0, 1])
    logits = np.array([2.0, -1.0, 0.0, 0.0, 800.0])
    result = metrics.click_metrics(labels, logits)
    expected = np.mean([math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)),
                        math.log(2.0), math.log(2.0), 0.0])
    assert result["log_loss"] == pytest.approx(expected, rel=1e-12)
    # Positives' scores 2, 0, 800 vs negatives' -1, 0: 5 wins + 1 tie of 6.
    assert result["auc"] == pytest.approx(5.5 / 6)
    p = 1 / (1 + np.exp(-logits))
    assert result["calibration"] == pytest.approx(p.mean() / 0.6)
    assert result["count"] == 5
    with pytest.raises(ValueError, match="not finite"):
        metrics.click_metrics(labels, [np.nan, 0, 0, 0, 0])


def test_evaluate_is_the_mean_over_all_batches_not_the_last():
    model = model_lib.build_dcn(VOCAB, embedding_dim=4, deep_layers=[8], seed=0)
    batches = [_batch(16, seed=s) for s in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *t: tf.stack(t), *batches))
    result = metrics.evaluate(model, dataset)
    logits = np.concatenate([model(f).numpy() for f, _ in batches]).astype(
        np.float64)
    labels = np.concatenate([l.numpy() for _, l in batches]).astype(np.float64)
    per_example = np.logaddexp(0, logits) - labels * logits
    assert result["count"] == 48
    # Graph and eager FP32 kernels may differ in the last bits of a logit.
    assert result["log_loss"] == pytest.approx(per_example.mean(), rel=1e-6)
    assert metrics.evaluate(model, dataset, steps=1)["count"] == 16


# ROC AUC of the hand-written rank-sum implementation this package used before
# it used scikit-learn, on the inputs of `_auc_case`.
OLD_AUC = {(50, False): 0.8253676470588235, (1000, True): 0.7403135557432432,
           (20000, False): 0.7642862191981339}


def _auc_case(n, ties):
    rng = np.random.default_rng(20261202)
    for size, rounded in OLD_AUC:  # the same draws, in the same order
        y = rng.random(size) < 0.3
        s = rng.normal(size=size) + y
        if rounded:
            s = np.round(s, 1)
        if (size, rounded) == (n, ties):
            return y, s
    raise KeyError((n, ties))


@pytest.mark.parametrize("n, ties", sorted(OLD_AUC))
def test_auc_is_sklearns_and_equals_the_old_values(n, ties):
    y, s = _auc_case(n, ties)
    assert metrics.roc_auc(y, s) == pytest.approx(OLD_AUC[(n, ties)], abs=1e-12)
    if n <= 1000:  # the definition: P(positive > negative), ties counting 1/2
        pos, neg = s[y], s[~y]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert metrics.roc_auc(y, s) == pytest.approx(wins / (pos.size * neg.size), abs=1e-12)
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_evaluate_fingerprints_the_rows_it_scored():
    model = model_lib.build_dcn(VOCAB, embedding_dim=4, deep_layers=[8], seed=0)
    batches = [_batch(16, seed=s) for s in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *t: tf.stack(t), *batches))
    first = metrics.evaluate(model, dataset)
    assert metrics.evaluate(model, dataset)["rows_sha256"] == first["rows_sha256"]
    assert metrics.evaluate(model, dataset, steps=2)["rows_sha256"] != first["rows_sha256"]
    other = dataset.map(lambda f, l: (f, 1.0 - l))
    assert metrics.evaluate(model, other)["rows_sha256"] != first["rows_sha256"]
