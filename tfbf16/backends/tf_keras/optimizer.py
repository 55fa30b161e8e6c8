"""tf_keras' `BF16Weights`: the optimizer shell around `BF16WeightsLogic`.

Everything here touches tf_keras' optimizer internals (`_var_key`,
`_index_dict`, `_variables`, `_learning_rate`, `_use_weight_decay`, the
inner optimizer's `_update_step` and slot lists); the rounding itself is
`tfbf16.optimizers.BF16WeightsLogic`. Users create it through
`tfbf16.optimizers.BF16Weights(tf_keras_optimizer, ...)`.
"""

import tensorflow as tf
import tf_keras

from tfbf16 import optimizers
from tfbf16.optimizers import LazyRule

# tf_keras optimizers that change only the rows of a sparse gradient: their
# `update_step`s (tf_keras 2.21) scatter into the variable (Adagrad into its
# accumulator too); SGD keeps a momentum slot even without momentum, whose
# rows outside the gradient become 0 (already BF16); RMSprop's and
# Adadelta's averages decay on every row.
LAZY_RULES = {
    tf_keras.optimizers.SGD: LazyRule(lambda o: o.momentum == 0, slots=("momentums",)),
    tf_keras.optimizers.Adagrad: LazyRule(lambda o: True, slots=("_accumulators",)),
    tf_keras.optimizers.RMSprop: LazyRule(lambda o: o.momentum == 0, slots=None),
    tf_keras.optimizers.Adadelta: LazyRule(lambda o: True, slots=None),
}


@tf_keras.saving.register_keras_serializable(package="tfbf16", name="BF16Weights")
class BF16Weights(optimizers.BF16WeightsLogic, tf_keras.optimizers.Optimizer):
    """tf_keras implementation of `tfbf16.optimizers.BF16Weights` (see there)."""

    LAZY_RULES = LAZY_RULES

    def __init__(self, optimizer, update_rounding="rne", *, round_slots=False,
                 seed=None, sparse_updates=True, name=None):
        if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
            raise TypeError(
                "BF16Weights wraps tf_keras' current optimizers; got the legacy "
                f"{type(optimizer).__name__}. Use tf_keras.optimizers."
                f"{type(optimizer).__name__} instead of tf_keras.optimizers.legacy."
                f"{type(optimizer).__name__}."
            )
        if not isinstance(optimizer, tf_keras.optimizers.Optimizer):
            raise TypeError(f"optimizer must be a tf_keras optimizer; got {optimizer!r}.")
        if isinstance(optimizer, optimizers.BF16Weights):
            raise TypeError("BF16Weights cannot wrap another BF16Weights.")
        super().__init__(name=name or "bf16_weights", jit_compile=False)
        self._init_bf16(update_rounding, round_slots, seed, sparse_updates)
        # tf_keras calls `self._update_step(grad, var)` per weight (also
        # from its XLA-compiled `_update_step_xla`).
        self._install_update_hook(optimizer, "_update_step")
        self.inner_optimizer = optimizer

    def build(self, var_list):
        if getattr(self, "_built", False):
            return
        var_list = list(var_list)
        super().build(var_list)
        self.inner_optimizer.build(var_list)
        if self._update_rounding == "kahan":
            self._compensations = [
                self.add_variable_from_reference(v, "kahan_compensation")
                for v in var_list
            ]
        self._finish_build(var_list)
        self._built = True

    def _variable_key(self, variable):
        if getattr(variable, "_unique_id", None) is None:
            return None  # tf_keras' model.save traces update steps with placeholders
        return self._var_key(variable)

    def _variable_index(self, variable):
        return self._index_dict[self._var_key(variable)]

    def _rows_allowed(self, variable):
        inner = self.inner_optimizer
        return (getattr(variable, "constraint", None) is None and not inner.use_ema
                and (inner.weight_decay is None or not inner._use_weight_decay(variable)))

    def _slot_of(self, name, variable):
        inner = self.inner_optimizer
        slots = getattr(inner, name, None) or ()
        return slots[inner._index_dict[inner._var_key(variable)]] if slots else None

    def _step_during_update(self):
        # tf_keras counts the step after every weight's update step.
        return tf.convert_to_tensor(self.inner_optimizer.iterations) + 1

    def _learning_rate_variable(self):
        learning_rate = getattr(self.inner_optimizer, "_learning_rate", None)
        return learning_rate if isinstance(learning_rate, tf.Variable) else None

    @property
    def variables(self):
        return list(self._variables) + list(self.inner_optimizer.variables)

    @tf.autograph.experimental.do_not_convert  # like Keras' own code
    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        grads_and_vars = list(grads_and_vars)
        if not grads_and_vars:
            return self.iterations
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        with tf.init_scope():
            self.build(variables)
        return self._apply_with_rounding(
            grads, variables, lambda: self.inner_optimizer.apply_gradients(
                grads_and_vars, name=name,
                skip_gradients_aggregation=skip_gradients_aggregation, **kwargs))

    @property
    def lr(self):
        return self.inner_optimizer.learning_rate

    @lr.setter
    def lr(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": tf_keras.optimizers.serialize(self.inner_optimizer),
            **self._bf16_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = tf_keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects,
            use_legacy_optimizer=False,
        )
        return cls(optimizer, **config)


optimizers.BF16Weights.register(BF16Weights)
