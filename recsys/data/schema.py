"""The batch contract shared by every recsys data source.

Every source yields `(features, label)` pairs with

- `features["dense"]`: float32 `[B, 13]`, the 13 integer counts (Criteo's
  I1..I13) preprocessed by `dense_transform`: missing -> 0, negative -> 0,
  then `log(1 + x)`;
- `features["sparse"]`: int64 `[B, 26]`, the 26 categorical features
  (C1..C26) as ids: `sparse[:, i]` is in `[0, vocab_sizes[i])`, and id
  `MISSING_ID` (0) means "value missing";
- `label`: float32 `[B]`, 1.0 for a click and 0.0 otherwise.

Sources build their rows in "blocks" (the same structure with a leading
dimension of any size) and `recsys.data.make_datasets` rebatches them, so a
row's content never depends on the batch size.
"""

import tensorflow as tf

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE  # label, I1..I13, C1..C26

DENSE = "dense"
SPARSE = "sparse"

MISSING_ID = 0

# Distinct values of C1..C26 in the Criteo Kaggle training set (the embedding
# table sizes DLRM uses for it). They give the synthetic source its shape and
# the Criteo reader its default bucket counts.
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683,
    8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15,
    286181, 105, 142572,
)


def dense_transform(counts):
    """Preprocesses raw integer counts into dense features.

    Args:
        counts: float64 tensor of counts, with missing values already 0.
            float64 holds every count a Criteo file can contain exactly.

    Returns:
        float32 tensor of the same shape: `log(1 + max(counts, 0))`,
        computed in float64 and rounded once to float32.
    """
    counts = tf.convert_to_tensor(counts, tf.float64)
    return tf.cast(tf.math.log1p(tf.maximum(counts, 0.0)), tf.float32)


def make_block(dense, sparse, label):
    """Packs tensors into the `(features, label)` structure.

    Args:
        dense: float32 `[N, 13]`.
        sparse: int64 `[N, 26]`.
        label: float32 `[N]`.

    Returns:
        `({"dense": dense, "sparse": sparse}, label)`.
    """
    return {DENSE: dense, SPARSE: sparse}, label


def check_vocab_sizes(vocab_sizes, what="vocab_sizes"):
    """Validates per-feature id space sizes.

    Args:
        vocab_sizes: an int (used for all 26 features) or a sequence of 26 ints,
            each at least 2 (id 0 for "missing" plus at least one value id).
        what: the argument name to use in error messages.

    Returns:
        A list of 26 Python ints.

    Raises:
        ValueError: on a wrong length or a size below 2.
    """
    if isinstance(vocab_sizes, int):
        vocab_sizes = [vocab_sizes] * NUM_SPARSE
    sizes = [int(v) for v in vocab_sizes]
    if len(sizes) != NUM_SPARSE:
        raise ValueError(
            f"{what} must be one int or {NUM_SPARSE} ints (one per categorical "
            f"feature C1..C26), got {len(sizes)} values."
        )
    too_small = [i for i, v in enumerate(sizes) if v < 2]
    if too_small:
        raise ValueError(
            f"{what} must all be >= 2 (id {MISSING_ID} is reserved for missing "
            f"values), but C{too_small[0] + 1} has {sizes[too_small[0]]}."
        )
    return sizes
