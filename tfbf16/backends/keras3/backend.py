"""The Keras 3 back end: everything of tfbf16 that is particular to Keras 3."""

import keras
from keras.src.saving import object_registration, saving_lib
from keras.src.saving.keras_saveable import KerasSaveable

from tfbf16.backends import common
from tfbf16.emulation import hooks
from tfbf16.emulation.gru import GRUOps


def _gru_dropout_masks(cell, inputs, h_tm1, training):
    """The masks of Keras 3's `GRUCell.call`, as it applies them.

    (Keras 3 indexes one mask tensor per gate with implementation=1, and
    applies no recurrent dropout with implementation=2.)
    """
    input_masks = recurrent_masks = None
    if training and 0.0 < cell.dropout < 1.0:
        mask = cell.get_dropout_mask(inputs)
        input_masks = (mask[0], mask[1], mask[2], mask)
    if cell.implementation == 1 and training and 0.0 < cell.recurrent_dropout < 1.0:
        mask = cell.get_recurrent_dropout_mask(h_tm1)
        recurrent_masks = (mask[0], mask[1], mask[2])
    return input_masks, recurrent_masks


def _run_cell_loop(frame, original, *args, **kwargs):
    """`RNN.inner_loop`, the cell-by-cell loop (instead of a fused kernel)."""
    return keras.layers.RNN.inner_loop(original.__self__, *args, **kwargs)


class Keras3Backend(common.KerasBackend):
    """Keras 3 (`import keras`, TensorFlow backend)."""

    name = "keras3"
    keras = keras
    _tracked_layers_attribute = "_layers"
    gru_ops = GRUOps(
        matmul=keras.ops.matmul, add_bias=keras.ops.add, dropout_masks=_gru_dropout_masks
    )

    def compile_arguments(self, model):
        config = getattr(model, "_compile_config", None)
        if getattr(model, "compiled", False) and config is not None:
            return dict(config.config)
        return None

    def tf_variable(self, variable):
        if isinstance(variable, keras.Variable):
            return variable.value
        return variable

    def register_wrapper_name(self, cls):
        object_registration.GLOBAL_CUSTOM_NAMES[cls] = common.REGISTERED_NAME

    def saveable_children(self, layer):
        return [
            name for name, value in saving_lib._walk_saveable(layer)
            if isinstance(value, (KerasSaveable, list, dict, tuple))
        ]

    def _hook_fused_recurrent_path(self, layer):
        # Keras 3 LSTM/GRU try a fused (cuDNN) kernel in `inner_loop`.
        if type(layer).inner_loop is not keras.layers.RNN.inner_loop:
            hooks.install(layer, "inner_loop", _run_cell_loop)

    def _intercept_weight_reads(self, layer, weights):
        # The wrapper calls the layer through `stateless_call`, which gives
        # every variable read the value it is passed.
        return ()


KERAS3 = Keras3Backend()
