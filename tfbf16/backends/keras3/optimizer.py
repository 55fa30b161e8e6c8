"""Keras 3's `BF16Weights`: the optimizer shell around `BF16WeightsLogic`.

Everything here touches Keras 3's optimizer internals (`_var_key`,
`_get_variable_index`, `_variables`, `_trainable_variables`,
`_learning_rate`, the inner optimizer's `update_step` and slot lists); the
rounding itself is `tfbf16.optimizers.BF16WeightsLogic`. Users create it
through `tfbf16.optimizers.BF16Weights(keras_optimizer, ...)`.
"""

import keras
import tensorflow as tf

from tfbf16 import optimizers
from tfbf16.optimizers import LazyRule

# Keras 3 optimizers that change only the rows of a sparse gradient: their
# `update_step`s (Keras 3.15) scatter into the variable (Adagrad into its
# accumulator too); RMSprop's and Adadelta's averages decay on every row.
LAZY_RULES = {
    keras.optimizers.SGD: LazyRule(lambda o: o.momentum == 0),
    keras.optimizers.Adagrad: LazyRule(lambda o: True, slots=("_accumulators",)),
    keras.optimizers.RMSprop: LazyRule(lambda o: o.momentum == 0, slots=None),
    keras.optimizers.Adadelta: LazyRule(lambda o: True, slots=None),
}


@keras.saving.register_keras_serializable(package="tfbf16", name="BF16Weights")
class BF16Weights(optimizers.BF16WeightsLogic, keras.optimizers.Optimizer):
    """Keras 3 implementation of `tfbf16.optimizers.BF16Weights` (see there)."""

    LAZY_RULES = LAZY_RULES

    def __init__(self, optimizer, update_rounding="rne", *, round_slots=False,
                 seed=None, sparse_updates=True, name=None):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"optimizer must be a Keras 3 optimizer; got {optimizer!r}.")
        if isinstance(optimizer, optimizers.BF16Weights):
            raise TypeError("BF16Weights cannot wrap another BF16Weights.")
        super().__init__(learning_rate=0.0, name=name or "bf16_weights")
        self._init_bf16(update_rounding, round_slots, seed, sparse_updates)
        # Keras 3 calls `self.update_step(grad, var, learning_rate)` per weight.
        self._install_update_hook(optimizer, "update_step")
        self.inner_optimizer = optimizer

    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        self.inner_optimizer.build(var_list)
        if self._update_rounding == "kahan":
            self._compensations = [
                self.add_variable_from_reference(v, name="kahan_compensation")
                for v in var_list
            ]
        super().build(var_list)
        self._finish_build(var_list)

    def _variable_key(self, variable):
        return self._var_key(variable)

    def _variable_index(self, variable):
        return self._get_variable_index(variable)

    def _rows_allowed(self, variable):
        inner = self.inner_optimizer
        return (getattr(variable, "constraint", None) is None
                and not getattr(variable, "overwrite_with_gradient", False)
                and not inner.use_ema and not inner.gradient_accumulation_steps
                and (inner.weight_decay is None or not inner._use_weight_decay(variable)))

    def _slot_of(self, name, variable):
        slots = getattr(self.inner_optimizer, name, None) or ()
        return slots[self.inner_optimizer._get_variable_index(variable)] if slots else None

    def _step_during_update(self):
        # Keras 3 counts the step after every weight's update_step.
        return tf.convert_to_tensor(self.inner_optimizer.iterations.value) + 1

    def _learning_rate_variable(self):
        learning_rate = getattr(self.inner_optimizer, "_learning_rate", None)
        return learning_rate if isinstance(learning_rate, keras.Variable) else None

    @property
    def variables(self):
        return self._variables[:] + list(self.inner_optimizer.variables)

    @tf.autograph.experimental.do_not_convert  # like Keras' own code
    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must "
                    "already be built; call `optimizer.build(trainable_variables)`."
                )
            variables = self._trainable_variables
        else:
            variables = list(trainable_variables)
            if not self.built:
                with tf.init_scope():
                    self.build(variables)
        self._apply_with_rounding(
            grads, variables, lambda: self.inner_optimizer.apply(grads, trainable_variables))

    @tf.autograph.experimental.do_not_convert  # like Keras' own code
    def apply_gradients(self, grads_and_vars):
        grads, variables = zip(*grads_and_vars)
        self.apply(grads, variables)
        return self.iterations

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("BF16Weights runs on the TensorFlow backend only.")

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            **self._bf16_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(optimizer, **config)


optimizers.BF16Weights.register(BF16Weights)
