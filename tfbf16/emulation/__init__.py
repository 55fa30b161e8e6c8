"""How one layer's call is emulated in bfloat16, for both Keras versions.

A wrapped layer's call is emulated the way Kalamkar et al.'s Quantlib does
it: every input of a GEMM or convolution is rounded to bfloat16 (activations
and weights forward, error gradients backward), the kernel itself runs in
FP32, and its output stays FP32. Most layers have one GEMM whose inputs are
the layer's inputs and weights; the `BF16Wrapper` rounds those around the
inner layer's call. Composite layers have GEMMs inside, reached through
hooks installed once on the inner objects (`hooks`) that act only while the
wrapper's call is in progress on the same thread (`context`):

- recurrent layers: at every step the cell's input x(t) and its recurrent
  state h(t-1) where they enter a matmul (the fused cuDNN/defun paths are
  bypassed during emulated calls so that the cell runs). SimpleRNN and LSTM
  cells use both only as matmul operands (LSTM's carry c(t-1) is not
  rounded), so their arguments are rounded. A GRU cell also uses h(t-1) in
  its FP32 interpolation, so tfbf16 computes the step itself (`gru`);
- MultiHeadAttention: query, key and value entering the attention einsums
  and the attention probabilities entering the second one;
- any Dense/EinsumDense/Conv sublayer of a composite layer (the projections
  of MultiHeadAttention, the (low-rank) factors of tensorflow-recommenders'
  `Cross` and keras-rs' `FeatureCross`): its inputs.

Modules: `kinds` (what kind of computation a layer is), `tensors` (rounding
a call's tensors), `context` (the call in progress), `hooks` (the hooks and
their emulated behaviours), `gru` (tfbf16's GRU step).
"""

from tfbf16.emulation.kinds import (
    ATTENTION, CELLS, COMPUTE_KINDS, CROSS, EMBEDDING, EMULATED_KINDS, EMULATED_LAYERS, GEMM,
    INTERACTION, MODEL, NO_GEMM, NORMALIZATION, RECURRENT, UNSUPPORTED, layer_kind,
    mro_names, recurrent_cells, rounded_tensors_of, weights_to_round,
)
from tfbf16.emulation.tensors import (
    OperandRounder, is_float_tensor, map_float_arguments, round_forward, round_gemm_inputs,
    round_gradient_only, round_inputs, round_outputs,
)
