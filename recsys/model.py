"""The Deep & Cross Network (DCN-V2) click model.

`build_dcn` returns a tf_keras Functional model (Wang et al. 2020, "DCN V2",
arXiv 2008.13535):

    x0 = concat(embedding_1(C1), ..., embedding_26(C26), dense)
    cross:    x_{l+1} = x0 * (W_l x_l + b_l) + x_l     (tfrs.layers.dcn.Cross;
              W_l = U_l V_l^T when `projection_dim` is set)
    deep:     a stack of ReLU Dense layers
    stacked:  logit = Dense(1)(deep(cross(x0)))
    parallel: logit = Dense(1)(concat(cross(x0), deep(x0)))

The model maps `{"dense": float32 [B, 13], "sparse": int64 [B, 26]}` to an
FP32 logit of shape `[B]`; losses are computed from the logit
(`from_logits=True`), never from a rounded probability.

It is a plain Functional graph of standard layers (Embedding, Concatenate,
Cross, Dense and sliced inputs) so that `tfbf16.wrap` can rebuild it layer by
layer, and so that building it twice under the same seed, or copying weights
with `get_weights`/`set_weights`, gives identical models.

TensorFlow Recommenders requires `tf.keras` to be Keras 2 (tf_keras); the
`recsys` package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported.
"""

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.config import STRUCTURES
from recsys.data import schema

LOGIT = "logit"


def check_model_args(vocab_sizes, embedding_dim, num_cross_layers,
                     projection_dim, deep_layers, structure):
    """Validates `build_dcn` arguments; raises ValueError with a clear message.

    Args: as for `build_dcn`.

    Returns:
        `(vocab_sizes, deep_layers)` normalized to lists of ints.
    """
    vocab_sizes = schema.check_vocab_sizes(vocab_sizes)
    if int(embedding_dim) < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}.")
    if int(num_cross_layers) < 0:
        raise ValueError(
            f"num_cross_layers must be >= 0, got {num_cross_layers}.")
    if projection_dim is not None and int(projection_dim) < 1:
        raise ValueError(
            f"projection_dim must be >= 1 (or None for full rank), got "
            f"{projection_dim}.")
    deep_layers = [int(u) for u in deep_layers]
    if any(u < 1 for u in deep_layers):
        raise ValueError(
            f"deep_layers must be positive layer widths, got {deep_layers}.")
    if structure not in STRUCTURES:
        raise ValueError(
            f"structure must be one of {STRUCTURES}, got {structure!r}.")
    if num_cross_layers == 0 and not deep_layers:
        raise ValueError(
            "The model needs at least one cross layer or one deep layer.")
    return vocab_sizes, deep_layers


def build_dcn(vocab_sizes, *, embedding_dim=16, num_cross_layers=3,
              projection_dim=None, deep_layers=(256, 128), structure="stacked",
              seed=None):
    """Builds a DCN-V2 click model as a tf_keras Functional model.

    Args:
        vocab_sizes: 26 ints, the id space size of each categorical feature
            (e.g. `DataBundle.vocab_sizes`); ids are in `[0, size)`.
        embedding_dim: width of every categorical embedding.
        num_cross_layers: number of `tfrs.layers.dcn.Cross` layers (0: none).
        projection_dim: None for full-rank cross layers, else the rank of the
            low-rank factorization `W = U V^T`.
        deep_layers: widths of the ReLU layers of the deep tower (may be empty).
        structure: "stacked" (cross, then deep) or "parallel" (cross and deep
            side by side on x0, concatenated).
        seed: if not None, `tf_keras.utils.set_random_seed(seed)` is called
            first, so the same seed gives the same initial weights.

    Returns:
        A `tf.keras.Model` named "dcn" mapping `{"dense", "sparse"}` to FP32
        logits of shape `[B]`.

    Raises:
        ValueError: on invalid arguments.

    Example:

    >>> model = build_dcn([1000] * 26, embedding_dim=8, deep_layers=[64],
    ...                   projection_dim=16, seed=0)
    >>> model({"dense": tf.zeros([2, 13]),
    ...        "sparse": tf.zeros([2, 26], tf.int64)}).shape
    TensorShape([2])
    """
    vocab_sizes, deep_layers = check_model_args(
        vocab_sizes, embedding_dim, num_cross_layers, projection_dim,
        deep_layers, structure)
    if seed is not None:
        tf.keras.utils.set_random_seed(int(seed))
    layers = tf.keras.layers

    dense_in = tf.keras.Input(shape=(schema.NUM_DENSE,), dtype=tf.float32,
                              name=schema.DENSE)
    sparse_in = tf.keras.Input(shape=(schema.NUM_SPARSE,), dtype=tf.int64,
                               name=schema.SPARSE)
    embedded = []
    for i, size in enumerate(vocab_sizes):
        ids = sparse_in[:, i]
        embedded.append(layers.Embedding(size, embedding_dim,
                                         name=f"embedding_c{i + 1}")(ids))
    x0 = layers.Concatenate(name="x0")(embedded + [dense_in])

    def cross_tower(x):
        for layer in range(num_cross_layers):
            x = tfrs.layers.dcn.Cross(projection_dim=projection_dim,
                                      name=f"cross_{layer + 1}")(x0, x)
        return x

    def deep_tower(x):
        for layer, units in enumerate(deep_layers):
            x = layers.Dense(units, activation="relu",
                             name=f"deep_{layer + 1}")(x)
        return x

    if structure == "stacked":
        top = deep_tower(cross_tower(x0))
    else:
        parts = []
        if num_cross_layers:
            parts.append(cross_tower(x0))
        if deep_layers:
            parts.append(deep_tower(x0))
        top = parts[0] if len(parts) == 1 else layers.Concatenate(
            name="concat_towers")(parts)
    logit = layers.Dense(1, name="logit_dense")(top)
    logit = layers.Reshape((), name=LOGIT)(logit)
    return tf.keras.Model({schema.DENSE: dense_in, schema.SPARSE: sparse_in},
                          logit, name="dcn")


def build_from_config(model_config, vocab_sizes, seed=None):
    """`build_dcn` with the architecture of a `recsys.config.ModelConfig`.

    Args:
        model_config: the architecture.
        vocab_sizes: the 26 table sizes.
        seed: the initialization seed (None: Keras' current random state).

    Returns:
        The FP32 model.
    """
    mc = model_config
    return build_dcn(vocab_sizes, embedding_dim=mc.embedding_dim,
                     num_cross_layers=mc.num_cross_layers, projection_dim=mc.projection_dim,
                     deep_layers=mc.deep_layers, structure=mc.structure, seed=seed)
