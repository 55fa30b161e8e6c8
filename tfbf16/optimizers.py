"""BF16 weights: an optimizer wrapper that stores the weights it updates in BF16.

Kalamkar et al. 2019 keep FP32 master weights. When the weights themselves
are bfloat16, the update `w + u` has to be rounded back to bfloat16 after
every step, and Zamirai et al. 2020 ("Revisiting BFloat16 Training") showed
that round-to-nearest then cancels every update smaller than half a BF16 ulp
of the weight (2**-9 relative), which stalls training late, when updates are
small; stochastic rounding or Kahan-compensated summation recover FP32
quality. `BF16Weights(optimizer, update_rounding=...)` reproduces this on top
of any Keras optimizer:

- "rne" / "trunc" / "stochastic": after the inner optimizer's step, each
  updated weight is rounded to BF16: `w = round(w_old + u)`, where
  `w_old + u` is the inner optimizer's FP32 result.
- "kahan": each weight has a BF16 compensation buffer `c` (zero at first):
  `y = u - c; t = rne(w_old + y); c = rne((t - w_old) - y); w = t`, so the
  part of an update that rounding drops is carried into the next step.

The update `u` itself is computed by the inner optimizer in FP32 (as a BF16
chip's FP32 update units would), so increments below FP32's resolution of
the weight (2**-24 relative, i.e. 2**-16 of a BF16 ulp) are lost before the
BF16 rounding; all other increments reach it.
"""

import abc

import keras
import tensorflow as tf
import tf_keras

from tfbf16.rounding import round_bf16

#: Valid `update_rounding` values.
UPDATE_ROUNDINGS = ("rne", "trunc", "stochastic", "kahan")


def _check_update_rounding(update_rounding):
    if update_rounding not in UPDATE_ROUNDINGS:
        raise ValueError(
            f"Unknown update_rounding {update_rounding!r}. Valid values are: "
            f"{', '.join(repr(r) for r in UPDATE_ROUNDINGS)}."
        )
    return update_rounding


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be None or a Python int; got {seed!r}.")
    return seed


def _check_single_replica():
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        raise NotImplementedError(
            "tfbf16.optimizers.BF16Weights does not support multi-replica "
            f"distribution strategies yet (got {type(strategy).__name__} with "
            f"{strategy.num_replicas_in_sync} replicas)."
        )


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (tf.Variables pass through)."""
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating


class _BF16WeightsLogic:
    """The rounding logic both Keras implementations share.

    Subclasses provide `self.inner_optimizer`, `_compensation_of(variable)`
    and `_inner_slot_variables()`.
    """

    def _init_bf16(self, update_rounding, round_slots, seed):
        self._update_rounding = _check_update_rounding(update_rounding)
        self._round_slots = bool(round_slots)
        self._seed = _check_seed(seed)

    @property
    def update_rounding(self):
        """"rne", "trunc", "stochastic" or "kahan"."""
        return self._update_rounding

    @property
    def round_slots(self):
        """Whether the inner optimizer's state is rounded to BF16 too."""
        return self._round_slots

    @property
    def seed(self):
        """The stochastic-rounding seed (None: TensorFlow's global seed)."""
        return self._seed

    @property
    def compensations(self):
        """The Kahan compensation buffers, one per weight (empty otherwise)."""
        return list(getattr(self, "_compensations", None) or [])

    def _slot_rounding(self):
        return "rne" if self._update_rounding == "kahan" else self._update_rounding

    def _round(self, value, rounding, index):
        """Rounds `value` to BF16; a seeded stochastic rounding varies per step."""
        seed = None
        if rounding == "stochastic" and self._seed is not None:
            step = tf.cast(tf.convert_to_tensor(self.iterations), tf.int64)
            seed = tf.stack([tf.constant(self._seed, tf.int64) + index, step])
        return round_bf16(value, rounding, seed=seed)

    def round_weights(self, var_list):
        """Rounds (RNE) the floating-point weights of `var_list` to BF16 now.

        `build` does this once; call it again after replacing the weights
        (e.g. `model.set_weights(fp32_weights)`) so that they are BF16
        values before the next step.

        Args:
            var_list: the weights (Keras or `tf.Variable`s).
        """
        with tf.init_scope():
            for variable in var_list:
                if _is_float(variable):
                    variable.assign(round_bf16(tf.convert_to_tensor(_tf_variable(variable)), "rne"))

    def _updated_pairs(self, grads, variables):
        return [
            (index, variable) for index, (grad, variable) in enumerate(zip(grads, variables))
            if grad is not None and _is_float(variable)
        ]

    def _read_old_values(self, pairs):
        """The weights before the inner step (only Kahan needs them)."""
        if self._update_rounding != "kahan":
            return None
        return [tf.identity(_tf_variable(variable)) for _, variable in pairs]

    def _store_in_bf16(self, pairs, old_values):
        """Rounds the weights the inner step updated (and the slots)."""
        for position, (index, variable) in enumerate(pairs):
            value = tf.convert_to_tensor(_tf_variable(variable))
            if self._update_rounding == "kahan":
                compensation = self._compensation_of(variable)
                old = old_values[position]
                y = (value - old) - tf.convert_to_tensor(_tf_variable(compensation))
                t = round_bf16(old + y, "rne")
                compensation.assign(round_bf16((t - old) - y, "rne"))
                variable.assign(t)
            else:
                variable.assign(self._round(value, self._update_rounding, index))
        if self._round_slots:
            rounding = self._slot_rounding()
            for index, slot in enumerate(self._inner_slot_variables()):
                value = tf.convert_to_tensor(_tf_variable(slot))
                slot.assign(self._round(value, rounding, 1_000_003 + index))

    def _slot_exclusions(self):
        inner = self.inner_optimizer
        excluded = {id(_tf_variable(inner.iterations))}
        learning_rate = getattr(inner, "_learning_rate", None)
        if isinstance(learning_rate, (tf.Variable, keras.Variable)):
            excluded.add(id(_tf_variable(learning_rate)))
        return excluded

    def _inner_slot_variables(self):
        excluded = self._slot_exclusions()
        return [
            v for v in self.inner_optimizer.variables
            if _is_float(v) and id(_tf_variable(v)) not in excluded
        ]

    def _bf16_config(self):
        return {
            "update_rounding": self._update_rounding,
            "round_slots": self._round_slots,
            "seed": self._seed,
        }


class BF16Weights(abc.ABC):
    """Wraps a Keras optimizer so that the weights it updates are stored in BF16.

    After every step of the inner optimizer, each weight it updated is
    rounded to a bfloat16 value with `update_rounding`; the weights are also
    rounded (RNE) once when the optimizer is built, so they are BF16 from the
    first step on. With `round_slots=True` the inner optimizer's state
    (momentum, variance, ...; every floating-point optimizer variable except
    the learning rate) is rounded after every step too, with the same
    rounding ("rne" for "kahan").

    Works with Keras 3 optimizers (`keras.optimizers.*`) and tf_keras ones
    (`tf_keras.optimizers.*`, what `tf.keras` is under
    `TF_USE_LEGACY_KERAS=1`); `tfbf16.optimizers.BF16Weights(...)` returns
    the implementation for the inner optimizer's Keras, a subclass of that
    Keras' `Optimizer` (and an instance of this class), usable in
    `model.compile`, `fit` and custom loops. Its variables (the inner
    optimizer's and the Kahan compensation buffers) are saved and restored
    by `tf.train.Checkpoint(optimizer=...)` and `model.save`.

    Combine it with `tfbf16.wrap` for a model that computes and stores its
    weights in BF16; it also works on an unwrapped model (BF16 storage only).

    Args:
        optimizer: the Keras optimizer that computes the update (Keras 3 or
            tf_keras; tf_keras' `legacy` optimizers are not supported).
        update_rounding: "rne" (round to nearest even: what a plain BF16
            store does; cancels updates below half an ulp), "trunc" (toward
            zero), "stochastic" (unbiased: E[w] = w_old + u) or "kahan"
            (RNE with a BF16 compensation buffer per weight).
        round_slots: also store the inner optimizer's state in BF16.
        seed: None to draw stochastic rounding from TensorFlow's global
            random state; an int for a stochastic rounding that is a pure
            function of (seed, step, weight).
        name: the optimizer's name (default "bf16_weights").

    Returns:
        A Keras optimizer.

    Raises:
        ValueError: for an unknown `update_rounding`.
        TypeError: if `optimizer` is not a Keras 3 or tf_keras optimizer.

    Example:

    >>> model = tfbf16.wrap(model, "rne")
    >>> optimizer = tfbf16.optimizers.BF16Weights(keras.optimizers.Adam(1e-3),
    ...                                           update_rounding="kahan")
    >>> model.compile(optimizer, "mse"); model.fit(x, y)
    """

    def __new__(cls, optimizer=None, *args, **kwargs):
        if cls is not BF16Weights:
            return super().__new__(cls)
        if isinstance(optimizer, keras.optimizers.Optimizer):
            return Keras3BF16Weights(optimizer, *args, **kwargs)
        if isinstance(optimizer, tf_keras.optimizers.Optimizer):
            return TfKerasBF16Weights(optimizer, *args, **kwargs)
        if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
            raise TypeError(
                "BF16Weights wraps tf_keras' current optimizers; got the legacy "
                f"{type(optimizer).__name__}. Use tf_keras.optimizers."
                f"{type(optimizer).__name__} instead of tf_keras.optimizers.legacy."
                f"{type(optimizer).__name__}."
            )
        raise TypeError(
            "BF16Weights wraps a Keras 3 (keras.optimizers.*) or tf_keras "
            f"(tf_keras.optimizers.*) optimizer instance; got {optimizer!r}."
        )


@keras.saving.register_keras_serializable(package="tfbf16", name="BF16Weights")
class Keras3BF16Weights(_BF16WeightsLogic, keras.optimizers.Optimizer):
    """Keras 3 implementation of `BF16Weights` (see its docstring)."""

    def __init__(self, optimizer, update_rounding="rne", *, round_slots=False,
                 seed=None, name=None):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"optimizer must be a Keras 3 optimizer; got {optimizer!r}.")
        if isinstance(optimizer, BF16Weights):
            raise TypeError("BF16Weights cannot wrap another BF16Weights.")
        super().__init__(learning_rate=0.0, name=name or "bf16_weights")
        self.inner_optimizer = optimizer
        self._init_bf16(update_rounding, round_slots, seed)

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
        self.round_weights(var_list)

    def _compensation_of(self, variable):
        return self._compensations[self._get_variable_index(variable)]

    @property
    def variables(self):
        return self._variables[:] + list(self.inner_optimizer.variables)

    def apply(self, grads, trainable_variables=None):
        _check_single_replica()
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
        pairs = self._updated_pairs(grads, variables)
        old_values = self._read_old_values(pairs)
        self.inner_optimizer.apply(grads, trainable_variables)
        self._store_in_bf16(pairs, old_values)

    def apply_gradients(self, grads_and_vars):
        grads, variables = zip(*grads_and_vars)
        self.apply(grads, variables)
        return self.iterations

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("BF16Weights runs on the TensorFlow backend only.")

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

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


@tf_keras.saving.register_keras_serializable(package="tfbf16", name="BF16Weights")
class TfKerasBF16Weights(_BF16WeightsLogic, tf_keras.optimizers.Optimizer):
    """tf_keras implementation of `BF16Weights` (see its docstring)."""

    def __init__(self, optimizer, update_rounding="rne", *, round_slots=False,
                 seed=None, name=None):
        if not isinstance(optimizer, tf_keras.optimizers.Optimizer):
            raise TypeError(f"optimizer must be a tf_keras optimizer; got {optimizer!r}.")
        if isinstance(optimizer, BF16Weights):
            raise TypeError("BF16Weights cannot wrap another BF16Weights.")
        super().__init__(name=name or "bf16_weights", jit_compile=False)
        self.inner_optimizer = optimizer
        self._init_bf16(update_rounding, round_slots, seed)

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
        self.round_weights(var_list)
        self._built = True

    def _compensation_of(self, variable):
        return self._compensations[self._index_dict[self._var_key(variable)]]

    @property
    def variables(self):
        return list(self._variables) + list(self.inner_optimizer.variables)

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        _check_single_replica()
        grads_and_vars = list(grads_and_vars)
        if not grads_and_vars:
            return self.iterations
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        with tf.init_scope():
            self.build(variables)
        pairs = self._updated_pairs(grads, variables)
        old_values = self._read_old_values(pairs)
        iteration = self.inner_optimizer.apply_gradients(
            grads_and_vars, name=name,
            skip_gradients_aggregation=skip_gradients_aggregation, **kwargs
        )
        self._store_in_bf16(pairs, old_values)
        return iteration

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self.inner_optimizer.iterations = variable

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def lr(self):
        return self.inner_optimizer.learning_rate

    @lr.setter
    def lr(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

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


BF16Weights.register(Keras3BF16Weights)
BF16Weights.register(TfKerasBF16Weights)
