"""The tf_keras back end: everything of tfbf16 that is particular to tf_keras."""

import logging

import tf_keras
from tf_keras.src.saving import object_registration, saving_lib

from tfbf16.backends import common
from tfbf16.backends.tf_keras import weights as weights_lib
from tfbf16.emulation import hooks, kinds
from tfbf16.emulation.gru import GRUOps


def _gru_dropout_masks(cell, inputs, h_tm1, training):
    """The masks of tf_keras' `GRUCell.call`, as it applies them.

    (tf_keras applies no recurrent dropout with implementation=2.)
    """
    input_masks = cell.get_dropout_mask_for_cell(inputs, training, count=3)
    recurrent_masks = cell.get_recurrent_dropout_mask_for_cell(h_tm1, training, count=3)
    if 0.0 < cell.dropout < 1.0:
        input_masks = (input_masks[0], input_masks[1], input_masks[2], input_masks[0])
    else:
        input_masks = None
    if not (cell.implementation == 1 and 0.0 < cell.recurrent_dropout < 1.0):
        recurrent_masks = None
    return input_masks, recurrent_masks


def _run_cell_loop(frame, original, *args, **kwargs):
    """`RNN.call`, the cell-by-cell loop (instead of a fused defun kernel)."""
    return tf_keras.layers.RNN.call(original.__self__, *args, **kwargs)


def _keep_plain(layer, variable):
    # Normalization statistics are updated through their attributes and
    # are never rounded or cast.
    return not variable.trainable and kinds.layer_kind(layer) == kinds.NORMALIZATION


class _NamedWrapperWarningFilter(logging.Filter):
    """Drops tf_keras' SavedModel warning that a wrapper class is named like a
    built-in layer (e.g. "Dense"): it is on purpose (see
    `common.named_wrapper_class`), and the wrapper reloads through its
    registered name, so there is no conflict."""

    def filter(self, record):
        return not any(
            isinstance(arg, type) and issubclass(arg, common.PresentsInnerLayer)
            for arg in (record.args if isinstance(record.args, tuple) else ())
        )


logging.getLogger("absl").addFilter(_NamedWrapperWarningFilter())


class TfKerasBackend(common.KerasBackend):
    """tf_keras (Keras 2: `tf.keras` under `TF_USE_LEGACY_KERAS=1`)."""

    name = "tf_keras"
    keras = tf_keras
    _tracked_layers_attribute = "_self_tracked_trackables"
    gru_ops = GRUOps(
        matmul=tf_keras.backend.dot, add_bias=tf_keras.backend.bias_add,
        dropout_masks=_gru_dropout_masks,
    )

    def _owned_types(self):
        return super()._owned_types() + (tf_keras.optimizers.legacy.Optimizer,)

    def compile_arguments(self, model):
        if getattr(model, "_is_compiled", False):
            return dict(model._get_compile_args(), jit_compile=model._jit_compile)
        return None

    def register_wrapper_name(self, cls):
        object_registration._GLOBAL_CUSTOM_NAMES[cls] = common.REGISTERED_NAME

    def saveable_children(self, layer):
        return [
            name for name, value in saving_lib._walk_trackable(layer)
            if saving_lib._is_keras_trackable(value)
            or isinstance(value, (list, dict, tuple, set))
        ]

    def _hook_fused_recurrent_path(self, layer):
        # tf_keras LSTM/GRU run a fused defun (or cuDNN) loop that bypasses
        # the cell unless they cannot.
        if hasattr(layer, "_could_use_gpu_kernel"):
            hooks.install(layer, "call", _run_cell_loop)

    def _intercept_weight_reads(self, layer, weights):
        intercepted = weights_lib.intercept_reads(
            self.sublayers(layer, include_self=True), _keep_plain
        )
        return [v for v in weights if id(v) not in intercepted]


TF_KERAS = TfKerasBackend()
