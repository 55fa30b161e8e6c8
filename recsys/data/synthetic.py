"""A synthetic, Criteo-shaped click stream with a known ground-truth model.

Rows look like Criteo's: 13 heavy-tailed counts (log-normal, with Criteo-like
missing rates), 26 categorical features with Zipf-like value frequencies and
cardinalities shaped like Criteo Kaggle's, and a click label drawn from a
logistic model with real feature crosses. Because the model is known, the best
achievable log loss is known too (`SyntheticCriteo.reference_metrics`).

Cardinalities. Feature Ci has `c = KAGGLE_CARDINALITIES[i]` values in Criteo
Kaggle; here it has `c` values if `c <= 100`, else
`round(100 * (c / 100) ** 0.6 * vocab_scale)` (at least 1), plus id 0 for
"missing". At `vocab_scale=1.0` that is 3 to 100,785 values per feature and
416,248 ids in total (`DEFAULT_VOCAB_SIZES`): an embedding dim of 16 is 6.7M
parameters. `vocab_scale=10` gives up to ~1M values per feature.

Ground truth. `logit = b + sum_j w_j d_j + sum_i a_i[c_i]
+ sum_(i,k) <U_ik[c_i], V_ik[c_k]> + sum_(j,i) d_j g_ji[c_i] + sum_(j,l) w_jl d_j d_l`
where `d` are the standardized dense features, `c` the categorical ids,
`a` per-id effects of 9 features, `U, V` rank-4 factors for 4 categorical
pairs, `g` per-id slopes for 3 dense x categorical pairs and 2 dense x dense
crosses. All of it, and the intercept `b` (solved so that the mean click
probability is 25%), is derived from the seed alone, so every split shares it.
On 65,536 eval rows (seeds 0 / 1 / 2) the click rate is 0.251 / 0.247 / 0.247
and the ground truth's log loss 0.404 / 0.377 / 0.389, against a base-rate
entropy of about 0.562. A small DCN-style model (embedding dim 8, two cross
layers, a 128-64 MLP, Adam 1e-3, batch 512) reaches 0.432 on seed 0 after one
pass over 1.5M rows: learnable, with room left to the optimum.

Streaming. Rows are made in blocks of `BLOCK_ROWS` by stateless random ops
keyed by `(seed, split, block index)`: any number of rows in constant memory,
the same rows whatever the batch size, and train / eval rows from disjoint
key spaces.

Versions. `GENERATOR_VERSION` names the rows this code makes for a given
`(seed, vocab_scale)`; it is part of the stream's fingerprint, by which
results computed on other rows are refused. Any change to this module that
changes a row (parameters, distributions, key derivation, block size, random
ops) must increment it; `tests/recsys/test_data_synthetic.py` holds a digest
of rows of the current version and fails when they change without it.
"""

import math

import numpy as np
import tensorflow as tf

from recsys.data import fingerprint
from recsys.data import schema

BLOCK_ROWS = 4096
#: Version of the rows this module generates (see the module docstring).
GENERATOR_VERSION = 1

_SPLITS = {"train": 1, "eval": 2, "calibration": 3}

# Fraction of missing values per feature, roughly Criteo Kaggle's.
_DENSE_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0005, 0.04, 0.45,
                  0.04, 0.77, 0.22)
_SPARSE_MISSING = (0, 0, 0.034, 0.034, 0, 0.12, 0, 0, 0, 0, 0, 0.034, 0, 0,
                   0, 0.034, 0, 0, 0.44, 0.44, 0.034, 0.76, 0, 0.034, 0.44,
                   0.44)

# Ground-truth structure (0-based feature indices) and term scales.
_MAIN = (0, 1, 2, 5, 9, 13, 16, 23, 25)           # per-id effects a_i
_PAIRS = ((0, 1), (5, 9), (10, 13), (4, 17))      # categorical x categorical
_DENSE_CAT = ((0, 5), (4, 16), (10, 1))           # dense j x categorical i
_DENSE_DENSE = ((1, 2, 0.3), (6, 12, -0.3))       # dense j x dense l, weight
_RANK = 4
_MAIN_SD = 0.45
_PAIR_SD = 0.45
_DENSE_CAT_SD = 0.3
_DENSE_SD = 0.2
_BASE_RATE = 0.25
_CALIBRATION_ROWS = 16 * BLOCK_ROWS


def vocab_sizes_for(vocab_scale=1.0):
    """Per-feature id space sizes (including the missing id) of the stream.

    Args:
        vocab_scale: multiplies the cardinality of every feature that has more
            than 100 values in Criteo Kaggle.

    Returns:
        A list of 26 ints.
    """
    if not vocab_scale > 0:
        raise ValueError(f"vocab_scale must be > 0, got {vocab_scale}.")
    sizes = []
    for c in schema.KAGGLE_CARDINALITIES:
        if c > 100:
            c = max(1, round(100 * (c / 100) ** 0.6 * vocab_scale))
        sizes.append(c + 1)
    return sizes


DEFAULT_VOCAB_SIZES = vocab_sizes_for(1.0)


class SyntheticCriteo:
    """A deterministic synthetic Criteo-like click stream.

    Args:
        seed: int in `[0, 2**63)`; determines the ground-truth model and rows.
        vocab_scale: float > 0, see `vocab_sizes_for`.

    Example:

    >>> stream = SyntheticCriteo(seed=0)
    >>> features, label = next(iter(stream.blocks("train", num_rows=8)))
    >>> features["sparse"].shape
    TensorShape([8, 26])
    """

    def __init__(self, seed=0, vocab_scale=1.0):
        if not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed}.")
        self.seed = int(seed)
        self.vocab_scale = float(vocab_scale)
        self.vocab_sizes = vocab_sizes_for(vocab_scale)
        self._build_params()

    # ----------------------------------------------------------- parameters
    def _build_params(self):
        rng = np.random.default_rng([self.seed, 0x5EED])
        f32 = lambda a: tf.constant(np.asarray(a, np.float32))
        self._dense_mu = f32(rng.uniform(-0.5, 3.5, schema.NUM_DENSE))
        self._dense_sigma = f32(rng.uniform(0.8, 2.0, schema.NUM_DENSE))
        self._dense_missing = f32(_DENSE_MISSING)
        self._sparse_missing = f32(_SPARSE_MISSING)
        values = np.asarray(self.vocab_sizes, np.float64) - 1
        zipf_s = rng.uniform(1.05, 1.5, schema.NUM_SPARSE)
        self._num_values = tf.constant(values)
        self._zipf_power = tf.constant(1.0 - zipf_s)
        self._zipf_top = tf.constant((values + 1.0) ** (1.0 - zipf_s))

        def table(*shape, sd):
            return f32(rng.normal(0.0, sd, shape))

        n = self.vocab_sizes
        self._main = [table(n[i], sd=_MAIN_SD) for i in _MAIN]
        factor_sd = (_PAIR_SD**2 / _RANK) ** 0.25
        self._pairs = [(table(n[i], _RANK, sd=factor_sd),
                        table(n[k], _RANK, sd=factor_sd)) for i, k in _PAIRS]
        self._dense_cat = [table(n[i], sd=_DENSE_CAT_SD) for _, i in _DENSE_CAT]
        self._dense_w = f32(rng.normal(0.0, _DENSE_SD, schema.NUM_DENSE))

        # Standardize the dense features and solve the intercept on a
        # calibration sample drawn from its own key space.
        dense, sparse = self._features(self._key(_SPLITS["calibration"], 0),
                                       _CALIBRATION_ROWS)
        self._dense_mean = tf.reduce_mean(dense, 0)
        self._dense_std = tf.math.reduce_std(dense, 0) + 1e-3
        self._intercept = tf.constant(0.0)
        z = self.logits({schema.DENSE: dense, schema.SPARSE: sparse}).numpy()
        self._intercept = tf.constant(_solve_intercept(z, _BASE_RATE), tf.float32)
        # Traced once, shared by every split's dataset.
        self._block = tf.function(self._make_block, input_signature=[
            tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)])

    # ------------------------------------------------------------ generation
    def _key(self, split_code, block):
        base = tf.stack([tf.constant(self.seed, tf.int64),
                         tf.cast(split_code, tf.int64)])
        return tf.random.experimental.stateless_fold_in(base, block)

    def _features(self, key, n=BLOCK_ROWS):
        """Dense and sparse features of `n` rows drawn with `key`."""
        keys = tf.random.experimental.stateless_split(key, 5)
        z = tf.random.stateless_normal([n, schema.NUM_DENSE], keys[0])
        shared = tf.random.stateless_normal([n, 1], keys[1])
        log_counts = self._dense_mu + self._dense_sigma * (0.5 * shared + 0.866 * z)
        present = (tf.random.stateless_uniform([n, schema.NUM_DENSE], keys[2])
                   >= self._dense_missing)
        counts = tf.where(present, tf.floor(tf.exp(tf.cast(log_counts, tf.float64))), 0.0)
        dense = schema.dense_transform(counts)

        # Bounded Zipf-like ranks 1..n_i by inverting a truncated power law.
        u = tf.random.stateless_uniform([n, schema.NUM_SPARSE], keys[3], dtype=tf.float64)
        ranks = tf.floor(tf.exp(tf.math.log1p(-u * (1.0 - self._zipf_top))
                                / self._zipf_power))
        ranks = tf.clip_by_value(ranks, 1.0, self._num_values)
        present = (tf.random.stateless_uniform([n, schema.NUM_SPARSE], keys[4])
                   >= self._sparse_missing)
        sparse = tf.where(present, tf.cast(ranks, tf.int64), schema.MISSING_ID)
        return dense, sparse

    def logits(self, features):
        """Ground-truth click logits of a batch.

        Args:
            features: `{"dense": float32 [B, 13], "sparse": int64 [B, 26]}` as
                produced by this stream.

        Returns:
            float32 `[B]`: the log-odds of a click under the ground truth.
        """
        d = (features[schema.DENSE] - self._dense_mean) / self._dense_std
        c = features[schema.SPARSE]
        z = self._intercept + tf.linalg.matvec(d, self._dense_w)
        for i, a in zip(_MAIN, self._main):
            z += tf.gather(a, c[:, i])
        for (i, k), (u, v) in zip(_PAIRS, self._pairs):
            z += tf.reduce_sum(tf.gather(u, c[:, i]) * tf.gather(v, c[:, k]), 1)
        for (j, i), g in zip(_DENSE_CAT, self._dense_cat):
            z += d[:, j] * tf.gather(g, c[:, i])
        for j, l, w in _DENSE_DENSE:
            z += w * d[:, j] * d[:, l]
        return z

    def _make_block(self, split_code, block):
        """`(features, label, logits)` of block `block` of a split."""
        key = self._key(split_code, block)
        dense, sparse = self._features(key)
        features = {schema.DENSE: dense, schema.SPARSE: sparse}
        z = self.logits(features)
        u = tf.random.stateless_uniform(
            [BLOCK_ROWS], tf.random.experimental.stateless_fold_in(key, 7))
        return features, tf.cast(u < tf.sigmoid(z), tf.float32), z

    def blocks(self, split, num_rows=None, with_logits=False, keep_block=None):
        """The rows of a split, as a dataset of blocks.

        Args:
            split: "train" or "eval" (disjoint key spaces).
            num_rows: number of rows, or None for an endless stream.
            with_logits: also yield the ground-truth logits of each row.
            keep_block: optional predicate on the int64 block index (a
                traceable function returning a bool tensor): only the blocks
                it keeps are generated (each block is generated from its
                index alone, so the others cost nothing).

        Returns:
            A `tf.data.Dataset` of `(features, label)` (or `(features, label,
            logits)`) blocks of `BLOCK_ROWS` rows (the last one may be shorter).
            Row r of a split is the same for any `num_rows` > r.
        """
        if split not in ("train", "eval"):
            raise ValueError(f'split must be "train" or "eval", got {split!r}.')
        if num_rows is None:
            indices = tf.data.Dataset.counter()
        else:
            if num_rows < 1:
                raise ValueError(f"num_rows must be >= 1 or None, got {num_rows}.")
            indices = tf.data.Dataset.range(math.ceil(num_rows / BLOCK_ROWS))

        if keep_block is not None:
            indices = indices.filter(keep_block)
        code = tf.constant(_SPLITS[split], tf.int64)

        def make(block):
            parts = self._block(code, block)
            parts = parts if with_logits else parts[:2]
            if num_rows is None:
                return parts
            rows = tf.minimum(tf.constant(BLOCK_ROWS, tf.int64),
                              num_rows - block * BLOCK_ROWS)
            return tf.nest.map_structure(lambda t: t[:rows], parts)

        return indices.map(make, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)

    def reference_metrics(self, split="eval", num_rows=65536):
        """Click rate and the ground-truth model's log loss on a split.

        Args:
            split: "train" or "eval".
            num_rows: number of leading rows of the split to score.

        Returns:
            A dict with "rows", "click_rate", "log_loss" (of the ground-truth
            probabilities: the best any model can do in expectation) and
            "entropy" (log loss of always predicting the click rate).
        """
        if split not in ("train", "eval"):
            raise ValueError(f'split must be "train" or "eval", got {split!r}.')
        n = clicks = loss = 0.0
        for block in range(math.ceil(num_rows / BLOCK_ROWS)):
            _, label, z = self._block(tf.constant(_SPLITS[split], tf.int64),
                                      tf.constant(block, tf.int64))
            rows = min(BLOCK_ROWS, num_rows - block * BLOCK_ROWS)
            label = label.numpy()[:rows].astype(np.float64)
            z = z.numpy()[:rows].astype(np.float64)
            # log(1 + e^z) - y z, stably.
            loss += float(np.sum(np.logaddexp(0.0, z) - label * z))
            clicks += float(label.sum())
            n += len(label)
        p = clicks / n
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
        return {"rows": int(n), "click_rate": p, "log_loss": loss / n,
                "entropy": entropy}

    def fingerprint(self):
        """JSON-ready identity of the stream's rows (see `recsys.data.fingerprint`)."""
        content = {"kind": "synthetic", "generator_version": GENERATOR_VERSION,
                   "seed": self.seed, "vocab_scale": self.vocab_scale}
        return {**content, "digest": fingerprint.digest(content)}

    def __repr__(self):
        return (f"SyntheticCriteo(seed={self.seed}, vocab_scale={self.vocab_scale}:"
                f" {sum(self.vocab_sizes):,} ids, largest feature "
                f"{max(self.vocab_sizes):,})")


def _solve_intercept(logits, rate):
    """The b with mean(sigmoid(logits + b)) == rate, by bisection."""
    z = np.asarray(logits, np.float64)
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
