"""What kind of computation a layer is, for emulation.

Kinds are decided from class names anywhere in the layer's class hierarchy
(so subclasses count), and for recommender layers from their module, so that
neither tensorflow-recommenders nor keras-rs is imported by tfbf16.
"""

import tensorflow as tf

from tfbf16.backends.registry import backend_of

_GEMM = {
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
    "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D",
}
_NORMALIZATION = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}
_RECURRENT = {"SimpleRNN", "LSTM", "GRU", "RNN", "Bidirectional"}
CELLS = frozenset({"SimpleRNNCell", "LSTMCell", "GRUCell"})
_ATTENTION = {"MultiHeadAttention"}
_EMBEDDING = {"Embedding"}
# Recommender layers: (class name, top-level package of its module).
_CROSS_LAYERS = {("Cross", "tensorflow_recommenders"), ("FeatureCross", "keras_rs")}
_INTERACTION_LAYERS = {("DotInteraction", "keras_rs")}

GEMM, NORMALIZATION, RECURRENT, ATTENTION, EMBEDDING, CROSS, INTERACTION = (
    "gemm", "normalization", "recurrent", "attention", "embedding", "cross", "interaction",
)
#: Kinds that contain GEMMs ("compute layers" for keep_first/last_fp32).
COMPUTE_KINDS = (GEMM, RECURRENT, ATTENTION, CROSS, INTERACTION)
#: Kinds that tfbf16 emulates.
EMULATED_KINDS = COMPUTE_KINDS + (NORMALIZATION, EMBEDDING)
NO_GEMM = "no-gemm"  # no weights and no GEMM: FP32, as in the paper
UNSUPPORTED = "unsupported"
MODEL = "model"

_ROUNDED_TENSORS = {
    GEMM: "inputs, weights, gradients",
    CROSS: "inputs (also of the low-rank factor), weights, gradients",
    INTERACTION: "inputs (the features of the pairwise dot products), gradients",
    NORMALIZATION: "inputs, gamma/beta, gradients",
    EMBEDDING: "looked-up rows, their gradients",
    RECURRENT: "step inputs, h(t-1) at every step (GRU: where it enters a matmul), "
    "weights, gradients",
    ATTENTION: "projection inputs, q/k/v, attention probs, weights, gradients",
}

#: Human-readable list of the layers tfbf16 emulates.
EMULATED_LAYERS = (
    "Dense, EinsumDense, Conv1D/2D/3D and their Transpose versions, DepthwiseConv1D/2D, "
    "SeparableConv1D/2D, Embedding, SimpleRNN/LSTM/GRU (also in Bidirectional), "
    "MultiHeadAttention, Batch/Layer/GroupNormalization, tensorflow-recommenders' Cross, "
    "keras-rs' FeatureCross and DotInteraction"
)


def mro_names(layer):
    """The class names in `layer`'s class hierarchy."""
    return {cls.__name__ for cls in type(layer).__mro__}


def _package(layer):
    return type(layer).__module__.split(".", 1)[0]


def layer_kind(layer):
    """Classifies a layer for emulation.

    Args:
        layer: a Keras 3 or tf_keras layer or model (not a `BF16Wrapper`).

    Returns:
        One of the kind constants of this module.
    """
    names = mro_names(layer)
    if "Functional" in names or "Sequential" in names or "Model" in names:
        return MODEL
    recommender = (type(layer).__name__, _package(layer))
    if recommender in _CROSS_LAYERS:
        return CROSS
    if recommender in _INTERACTION_LAYERS:
        return INTERACTION
    for kind, known in (
        (GEMM, _GEMM), (NORMALIZATION, _NORMALIZATION), (ATTENTION, _ATTENTION),
        (EMBEDDING, _EMBEDDING),
    ):
        if names & known:
            return kind
    if names & _RECURRENT and recurrent_cells(layer) is not None:
        return RECURRENT
    if not layer.weights and not backend_of(layer).sublayers(layer):
        return NO_GEMM
    return UNSUPPORTED


def recurrent_cells(layer):
    """The known cells of a recurrent layer, or None if one is unknown."""
    cells = [
        sub for sub in backend_of(layer).sublayers(layer, include_self=True)
        if "Cell" in type(sub).__name__ or mro_names(sub) & CELLS
    ]
    if not cells or any(not (mro_names(cell) & CELLS) for cell in cells):
        return None
    return cells


def rounded_tensors_of(kind):
    """Human-readable list of what emulation rounds in a layer of this kind."""
    return _ROUNDED_TENSORS.get(kind, "")


def weights_to_round(layer):
    """The trainable float variables whose reads emulation rounds.

    Embedding tables are not rounded as a whole (the looked-up rows are,
    which is cheaper for big tables and keeps gradients sparse).

    Args:
        layer: the wrapped (inner) layer.

    Returns:
        A list of variables, in `layer.trainable_weights` order.
    """
    skip = set()
    for sub in backend_of(layer).sublayers(layer, include_self=True):
        if layer_kind(sub) == EMBEDDING:
            skip.update(id(v) for v in sub.weights)
    return [
        v for v in layer.trainable_weights
        if id(v) not in skip and tf.as_dtype(v.dtype).is_floating
    ]
