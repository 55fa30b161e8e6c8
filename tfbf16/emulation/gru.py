"""tfbf16's GRU step: Keras' `GRUCell.call` with every GEMM input rounded.

A GRU cell uses h(t-1) twice: as an operand of the recurrent matmul (a GEMM
input, rounded in BF16 emulation) and in the FP32 interpolation
`h = z * h(t-1) + (1 - z) * hh` (not a GEMM input, kept FP32). Rounding the
cell's arguments, as for SimpleRNN and LSTM, would round both, so the
wrapper computes a GRU step itself: the same operations in the same order as
the Keras cell (so that, with rounding off, it is the cell bit for bit),
with the activation operand of every matmul (x(t), h(t-1) and, with
`reset_after=False`, r * h(t-1)) passed through the step's rounder. The
kernel operands are the weights, which the wrapper has already rounded.

The few operations in which the two Kerases' cells differ are supplied by
each back end as a `GRUOps`.
"""

import dataclasses
from typing import Callable

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class GRUOps:
    """The operations of one Keras' `GRUCell.call` that differ between Kerases.

    Attributes:
        matmul: `matmul(a, b)`, the cell's matmul.
        add_bias: `add_bias(x, bias)`, how the cell adds a bias.
        dropout_masks: `dropout_masks(cell, inputs, h_tm1, training)` ->
            `(input_masks, recurrent_masks)`: None where the cell applies
            no mask, else the masks as the cell multiplies them in:
            `input_masks` = (z, r, h gates of implementation 1, the one mask
            of implementation 2), `recurrent_masks` = (z, r, h gates).
    """

    matmul: Callable
    add_bias: Callable
    dropout_masks: Callable


def gru_step(cell, inputs, states, training, round_operand, ops):
    """One step of a Keras GRU cell with its GEMM inputs rounded.

    Args:
        cell: a Keras 3 or tf_keras `GRUCell` (whose `call` is Keras' own).
        inputs: x(t).
        states: h(t-1), alone or in a list (as the cell receives it).
        training: the cell's `training` argument.
        round_operand: rounds an activation operand of a matmul (a
            `tfbf16.emulation.tensors.OperandRounder`).
        ops: the Keras' `GRUOps`.

    Returns:
        `(h, new_states)`, as the cell returns them.
    """
    h_tm1 = states[0] if tf.nest.is_nested(states) else states
    input_masks, recurrent_masks = ops.dropout_masks(cell, inputs, h_tm1, training)
    units = cell.units

    def matmul(activation, kernel):
        return ops.matmul(round_operand(activation), kernel)

    if cell.use_bias:
        if not cell.reset_after:
            input_bias, recurrent_bias = cell.bias, None
        else:
            input_bias, recurrent_bias = tf.unstack(cell.bias)

    if cell.implementation == 1:
        if input_masks is not None:
            inputs_z, inputs_r, inputs_h = (inputs * m for m in input_masks[:3])
        else:
            inputs_z = inputs_r = inputs_h = inputs
        x_z = matmul(inputs_z, cell.kernel[:, :units])
        x_r = matmul(inputs_r, cell.kernel[:, units : units * 2])
        x_h = matmul(inputs_h, cell.kernel[:, units * 2 :])
        if cell.use_bias:
            x_z = ops.add_bias(x_z, input_bias[:units])
            x_r = ops.add_bias(x_r, input_bias[units : units * 2])
            x_h = ops.add_bias(x_h, input_bias[units * 2 :])

        if recurrent_masks is not None:
            h_tm1_z, h_tm1_r, h_tm1_h = (h_tm1 * m for m in recurrent_masks)
        else:
            h_tm1_z = h_tm1_r = h_tm1_h = h_tm1
        recurrent_z = matmul(h_tm1_z, cell.recurrent_kernel[:, :units])
        recurrent_r = matmul(h_tm1_r, cell.recurrent_kernel[:, units : units * 2])
        if cell.reset_after and cell.use_bias:
            recurrent_z = ops.add_bias(recurrent_z, recurrent_bias[:units])
            recurrent_r = ops.add_bias(recurrent_r, recurrent_bias[units : units * 2])

        z = cell.recurrent_activation(x_z + recurrent_z)
        r = cell.recurrent_activation(x_r + recurrent_r)

        if cell.reset_after:
            recurrent_h = matmul(h_tm1_h, cell.recurrent_kernel[:, units * 2 :])
            if cell.use_bias:
                recurrent_h = ops.add_bias(recurrent_h, recurrent_bias[units * 2 :])
            recurrent_h = r * recurrent_h
        else:
            recurrent_h = matmul(r * h_tm1_h, cell.recurrent_kernel[:, units * 2 :])
    else:
        if input_masks is not None:
            inputs = inputs * input_masks[3]
        matrix_x = matmul(inputs, cell.kernel)
        if cell.use_bias:
            matrix_x = ops.add_bias(matrix_x, input_bias)
        x_z, x_r, x_h = tf.split(matrix_x, 3, axis=-1)

        if cell.reset_after:
            matrix_inner = matmul(h_tm1, cell.recurrent_kernel)
            if cell.use_bias:
                matrix_inner = ops.add_bias(matrix_inner, recurrent_bias)
        else:
            matrix_inner = matmul(h_tm1, cell.recurrent_kernel[:, : 2 * units])
        recurrent_z = matrix_inner[:, :units]
        recurrent_r = matrix_inner[:, units : units * 2]
        recurrent_h = matrix_inner[:, units * 2 :]

        z = cell.recurrent_activation(x_z + recurrent_z)
        r = cell.recurrent_activation(x_r + recurrent_r)
        if cell.reset_after:
            recurrent_h = r * recurrent_h
        else:
            recurrent_h = matmul(r * h_tm1, cell.recurrent_kernel[:, 2 * units :])

    hh = cell.activation(x_h + recurrent_h)
    h = z * h_tm1 + (1 - z) * hh
    new_state = [h] if tf.nest.is_nested(states) else h
    return h, new_state
