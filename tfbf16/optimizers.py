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
  part of an update that rounding drops is carried into the next step. A
  weight whose update is exactly zero keeps its value and its compensation.

The update `u` itself is computed by the inner optimizer in FP32 (as a BF16
chip's FP32 update units would), so increments below FP32's resolution of
the weight (2**-24 relative, i.e. 2**-16 of a BF16 ulp) are lost before the
BF16 rounding; all other increments reach it.

Embedding tables: when a weight's gradient is a `tf.IndexedSlices` and the
inner optimizer changes only the rows it receives (see `LazyRule`), only
those rows are rounded, so a step costs O(batch rows), not O(table).
Under `MirroredStrategy` and `MultiWorkerMirroredStrategy` the rounding runs
where the inner optimizer updates each copy of a weight, after the
all-reduce, so the copies stay bit-identical.

The Keras-specific parts live in `tfbf16.backends.<keras>.optimizer`.
"""

import abc
import dataclasses
import functools
import typing

import numpy as np
import tensorflow as tf

from tfbf16 import backends
from tfbf16 import rounding as rounding_lib
from tfbf16.rounding import ROUNDINGS, round_bf16, round_rows_bf16

#: Valid `update_rounding` values: the roundings of `tfbf16.ROUNDINGS`, and
#: "kahan" (RNE with a compensation buffer).
UPDATE_ROUNDINGS = ROUNDINGS + ("kahan",)

# The strategies whose update path BF16Weights follows (tested); the default
# (no strategy) is always supported.
_SUPPORTED_STRATEGIES = (
    tf.distribute.OneDeviceStrategy,
    tf.distribute.MirroredStrategy,
    tf.distribute.MultiWorkerMirroredStrategy,
)

# Slot-rounding seeds are offset from the weights' (index of the weight).
_SLOT_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True)
class LazyRule:
    """How an inner optimizer changes a weight whose gradient is sparse.

    An optimizer is lazy when a step with a `tf.IndexedSlices` gradient
    leaves every row outside `gradient.indices` unchanged (bit for bit, or
    only turned into a value that is already BF16, such as 0), so that
    rounding those rows is all that BF16 storage needs.

    Attributes:
        applies: predicate on the inner optimizer's configuration (e.g.
            SGD is lazy only without momentum).
        slots: names of the optimizer's per-weight slot lists whose rows
            also change only on the gradient's rows (rounded with them under
            `round_slots`); None when the slots change on every row (e.g.
            RMSprop's decaying average): they are then rounded whole.
    """

    applies: typing.Callable[[object], bool]
    slots: typing.Optional[tuple] = ()


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


def _is_float(variable):
    return tf.as_dtype(variable.dtype).is_floating


def _kahan_store(old, value, compensation):
    """Kahan-compensated BF16 store of `value` (the FP32 `old + u`).

    Returns the new BF16 weight and compensation; where the inner optimizer
    left the weight unchanged (a zero update, or a row a sparse update did
    not touch) both stay as they are: a compensation of exactly half an ulp
    (a rounded BF16 value) would otherwise move it by one ulp.
    """
    y = (value - old) - compensation
    rounded = round_bf16(old + y, "rne")
    new_compensation = round_bf16((rounded - old) - y, "rne")
    unchanged = tf.equal(value, old)
    return (tf.where(unchanged, value, rounded),
            tf.where(unchanged, compensation, new_compensation))


_kahan_store_xla = tf.function(
    _kahan_store, jit_compile=True, autograph=False, reduce_retracing=True)


def _on_padded_rows(fn, *row_values):
    """`fn(*row_values)` (elementwise), computed on rows padded to a power of two.

    The rounding kernels are compiled by XLA once per input shape; the
    number of rows a sparse update touches changes from step to step, and
    compiling anew for each count took ~160 ms here. Padding the rows to the
    next power of two (at least 64) bounds the shapes to a few.

    Returns:
        A list: each output of `fn`, cut back to the original rows.
    """
    count = tf.shape(row_values[0])[0]
    exponent = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(count, 1), tf.float32)) / np.log(2.0))
    power = tf.bitwise.left_shift(1, tf.cast(exponent, tf.int32))
    power = tf.where(power // 2 >= count, power // 2, power)  # log's last bit
    padded_count = tf.maximum(64, power)
    outputs = fn(*(tf.pad(v, [[0, padded_count - count]] + [[0, 0]] * (v.shape.rank - 1))
                   for v in row_values))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [o[:count] for o in outputs]


@dataclasses.dataclass(frozen=True)
class _RowPlan:
    """A weight rounded row by row: its seed index and its lazy slots."""

    index: int
    slots: tuple  # ((seed index, slot variable), ...)


class BF16WeightsLogic:
    """The rounding logic of `BF16Weights`, the same for both Kerases.

    The back ends' `BF16Weights` classes (`tfbf16.backends.<keras>.optimizer`)
    mix it into their Keras' `Optimizer` and provide `self.inner_optimizer`
    and the Keras-specific parts: `LAZY_RULES`, `_variable_key(variable)`
    (None for a variable the optimizer does not know),
    `_variable_index(variable)`, `_rows_allowed(variable)`,
    `_slot_of(name, variable)`, `_step_during_update()` and
    `_learning_rate_variable()`. Their apply method calls
    `_apply_with_rounding`, and their constructor routes the inner
    optimizer's per-weight update step through `_update_step_with_rounding`
    (`_install_update_hook`).
    """

    #: The back end's `LazyRule` of each lazy inner optimizer class.
    LAZY_RULES = {}

    def _init_bf16(self, update_rounding, round_slots, seed, sparse_updates):
        self._update_rounding = _check_update_rounding(update_rounding)
        self._round_slots = bool(round_slots)
        self._seed = _check_seed(seed)
        self._sparse_updates = bool(sparse_updates)
        self._row_plans = {}
        self._row_slot_ids = set()

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
    def sparse_updates(self):
        """Whether sparse updates of lazy optimizers round only their rows."""
        return self._sparse_updates

    @property
    def compensations(self):
        """The Kahan compensation buffers, one per weight (empty otherwise)."""
        return list(getattr(self, "_compensations", None) or [])

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

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def rounds_rows(self, variable):
        """Whether a sparse update of `variable` is rounded row by row.

        True when the inner optimizer is lazy (`LazyRule`) and nothing else
        it does touches the whole variable (no weight decay, constraint,
        moving average or gradient accumulation); known once built. (Its
        dense updates are rounded whole.)

        Args:
            variable: one of the weights the optimizer was built with.
        """
        return self._variable_key(variable) in self._row_plans

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
                    variable.assign(round_bf16(tf.convert_to_tensor(self._tf_variable(variable)), "rne"))

    def _finish_build(self, var_list):
        """Rounds weights (and slots) once and plans the row-wise rounding."""
        self.round_weights(var_list)
        slots = self._inner_slot_variables()
        if self._round_slots:
            self.round_weights(slots)
        rule = self.LAZY_RULES.get(type(self.inner_optimizer)) if self._sparse_updates else None
        if rule is None or not rule.applies(self.inner_optimizer):
            return
        slot_index = {id(self._tf_variable(s)): i for i, s in enumerate(slots)}
        for variable in var_list:
            if not _is_float(variable) or not self._rows_allowed(variable):
                continue
            lazy_slots = tuple(
                (slot_index[id(self._tf_variable(slot))], slot)
                for slot in (self._slot_of(name, variable) for name in rule.slots or ())
                if slot is not None
            )
            self._row_plans[self._variable_key(variable)] = _RowPlan(
                self._variable_index(variable), lazy_slots)
            self._row_slot_ids.update(id(self._tf_variable(s)) for _, s in lazy_slots)

    def _slot_rounding(self):
        return "rne" if self._update_rounding == "kahan" else self._update_rounding

    def _rounded(self, value, rounding, seed_index, step, rows=None):
        """`value` rounded to BF16; a seeded stochastic rounding varies per step.

        With `rows`, `value` holds those rows of the weight, rounded as the
        whole weight would be (the same random bits: `round_rows_bf16`).
        """
        seed = None
        if rounding == "stochastic" and self._seed is not None:
            seed = tf.stack([tf.constant(self._seed, tf.int64) + seed_index,
                             tf.cast(step, tf.int64)])
        if rows is not None:
            return round_rows_bf16(value, rows, rounding, seed=seed)
        return round_bf16(value, rounding, seed=seed)

    @staticmethod
    def _kahan(old, value, compensation):
        """Kahan-compensated BF16 store of `value`: (weight, compensation)."""
        # One fused pass, like the rounding kernel (and only where it is).
        kernel = _kahan_store_xla if rounding_lib._state["use_xla"] else _kahan_store
        return kernel(old, value, compensation)

    # The whole-variable path: after the inner optimizer's step.

    def _check_strategy(self):
        strategy = tf.distribute.get_strategy()
        if tf.distribute.has_strategy() and not isinstance(strategy, _SUPPORTED_STRATEGIES):
            raise NotImplementedError(
                "tfbf16.optimizers.BF16Weights supports no strategy, OneDeviceStrategy, "
                "MirroredStrategy and MultiWorkerMirroredStrategy; got "
                f"{type(strategy).__name__}.")
        if (strategy.num_replicas_in_sync > 1 and self._seed is None
                and "stochastic" in (self._update_rounding, self._slot_rounding())):
            raise ValueError(
                "Stochastic rounding under several replicas needs a seed, so that "
                "every replica rounds its copy of the weights alike: pass "
                "BF16Weights(..., seed=<int>).")

    def _apply_with_rounding(self, grads, variables, inner_apply):
        """Runs `inner_apply()` and stores its results in BF16.

        Weights rounded row by row are handled inside the inner optimizer's
        update step (`_update_step_with_rounding`); the others, and the
        slots not rounded with their rows, are rounded here, after the
        inner step, in the strategy's update context (once per copy of each
        weight, after the all-reduce).
        """
        self._check_strategy()
        whole = [
            (self._variable_index(variable), variable)
            for grad, variable in zip(grads, variables)
            if grad is not None and _is_float(variable) and not self.rounds_rows(variable)
        ]
        old_values = [
            tf.identity(self._tf_variable(variable)) if self._update_rounding == "kahan" else None
            for _, variable in whole
        ]
        result = inner_apply()
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._round_whole_variables, tf.distribute.get_strategy(), whole, old_values)
        return result

    def _round_whole_variables(self, distribution, whole, old_values):
        for (index, variable), old in zip(whole, old_values):
            distribution.extended.update(
                self._tf_variable(variable),
                lambda v, old, index=index: self._round_variable(
                    v, index, old, self._step_after_update()),
                args=(old,), group=False)
        if self._round_slots:
            rounding = self._slot_rounding()
            for index, slot in enumerate(self._inner_slot_variables()):
                if id(self._tf_variable(slot)) in self._row_slot_ids:
                    continue
                distribution.extended.update(
                    self._tf_variable(slot),
                    lambda s, index=index: s.assign(self._rounded(
                        tf.convert_to_tensor(s), rounding, _SLOT_SEED_OFFSET + index,
                        self._step_after_update())),
                    group=False)

    def _round_variable(self, variable, index, old, step):
        value = tf.convert_to_tensor(variable)
        if self._update_rounding == "kahan":
            compensation = self._tf_variable(self._compensation_of(variable))
            rounded, new_compensation = self._kahan(old, value, tf.convert_to_tensor(compensation))
            compensation.assign(new_compensation)
            variable.assign(rounded)
        else:
            variable.assign(self._rounded(value, self._update_rounding, index, step))

    # The row-wise path: inside the inner optimizer's update step.

    @tf.autograph.experimental.do_not_convert
    def _update_step_with_rounding(self, update_step, gradient, variable, *args):
        """The inner optimizer's `update_step` of one weight, then BF16 storage.

        Runs where the inner optimizer updates the weight (after the
        all-reduce, once per copy under a strategy), with the gradient it
        applies. Weights that are not rounded by rows pass through.
        """
        key = self._variable_key(variable)
        plan = self._row_plans.get(key) if key is not None else None
        if plan is None:
            return update_step(gradient, variable, *args)
        kahan = self._update_rounding == "kahan"
        if not isinstance(gradient, tf.IndexedSlices):
            old = tf.identity(variable) if kahan else None
            result = update_step(gradient, variable, *args)
            step = self._step_during_update()
            self._round_variable(variable, plan.index, old, step)
            for index, slot in plan.slots if self._round_slots else ():
                slot = self._tf_variable(slot)
                slot.assign(self._rounded(tf.convert_to_tensor(slot), self._slot_rounding(),
                                          _SLOT_SEED_OFFSET + index, step))
            return result
        rows = gradient.indices  # a repeated row is rounded alike each time
        old = tf.gather(variable, rows) if kahan else None
        result = update_step(gradient, variable, *args)
        step = self._step_during_update()
        value = tf.gather(variable, rows)
        if kahan:
            compensation = self._tf_variable(self._compensation_of(variable))
            rounded, new_compensation = _on_padded_rows(
                self._kahan, old, value, tf.gather(compensation, rows))
            compensation.scatter_update(tf.IndexedSlices(new_compensation, rows))
        else:
            rounded, = _on_padded_rows(
                lambda v, r: self._rounded(v, self._update_rounding, plan.index, step, r),
                value, rows)
        variable.scatter_update(tf.IndexedSlices(rounded, rows))
        for index, slot in plan.slots if self._round_slots else ():
            slot = self._tf_variable(slot)
            rounded_slot, = _on_padded_rows(
                lambda v, r, index=index: self._rounded(
                    v, self._slot_rounding(), _SLOT_SEED_OFFSET + index, step, r),
                tf.gather(slot, rows), rows)
            slot.scatter_update(tf.IndexedSlices(rounded_slot, rows))
        return result

    def _compensation_of(self, variable):
        return self._compensations[self._variable_index(variable)]

    def _tf_variable(self, variable):
        """The `tf.Variable` behind a variable of this optimizer's Keras."""
        return backends.backend_of(self).tf_variable(variable)

    def _inner_slot_variables(self):
        """The inner optimizer's floating-point state but its step and learning rate."""
        excluded = {id(self._tf_variable(self.inner_optimizer.iterations))}
        learning_rate = self._learning_rate_variable()
        if learning_rate is not None:
            excluded.add(id(self._tf_variable(learning_rate)))
        return [
            v for v in self.inner_optimizer.variables
            if _is_float(v) and id(self._tf_variable(v)) not in excluded
        ]

    def _bf16_config(self):
        return {
            "update_rounding": self._update_rounding,
            "round_slots": self._round_slots,
            "seed": self._seed,
            "sparse_updates": self._sparse_updates,
        }

    def _step_after_update(self):
        return tf.convert_to_tensor(self._tf_variable(self.iterations))

    def _install_update_hook(self, optimizer, method_name):
        """Routes `optimizer.<method_name>(gradient, variable, ...)` through
        `_update_step_with_rounding` (the inner optimizer belongs to this
        wrapper from now on)."""
        if method_name in vars(optimizer):
            raise TypeError(
                f"This {type(optimizer).__name__} is already wrapped by a BF16Weights; "
                "give each BF16Weights its own optimizer instance.")
        setattr(optimizer, method_name, functools.partial(
            self._update_step_with_rounding, getattr(optimizer, method_name)))


class BF16Weights(abc.ABC):
    """Wraps a Keras optimizer so that the weights it updates are stored in BF16.

    After every step of the inner optimizer, each weight it updated is
    rounded to a bfloat16 value with `update_rounding`; the weights are also
    rounded (RNE) once when the optimizer is built, so they are BF16 from the
    first step on. With `round_slots=True` the inner optimizer's state
    (momentum, variance, ...; every floating-point optimizer variable except
    the learning rate) is rounded (RNE) when built and after every step,
    with the same rounding ("rne" for "kahan").

    Embedding tables: when a weight's gradient is a `tf.IndexedSlices` and
    the inner optimizer changes only the rows it receives, only those rows
    are rounded (gather, round, scatter; with "kahan" their compensation
    rows too, and under `round_slots` the slot rows that change with them),
    so the rounding of a step costs O(batch rows), not O(table). Lazy in
    this sense (checked by reading their update code and by experiment, in
    both Kerases): SGD without momentum, Adagrad (and its accumulator
    slots), RMSprop without momentum and Adadelta (whose slots decay on
    every row and are rounded whole). Every other optimizer changes every
    row of a table on every step (Adam's and SGD-momentum's moments decay
    everywhere; FTRL recomputes each weight from its accumulators, and sets
    every untouched row to 0 on the first step), so the whole variable is
    rounded, as it is when weight decay, a constraint, a moving average
    (`use_ema`) or gradient accumulation also touch it. For the lazy
    optimizers the result is bit-identical to rounding whole variables
    (`sparse_updates=False`) with every update rounding: stochastic
    rounding draws an element's random bits by its position in the whole
    variable (`tfbf16.rounding.round_rows_bf16`), and rounding a BF16 value
    leaves it unchanged. Rows a step does not update are not rounded,
    so the tables must hold BF16 values already: `build` rounds them, and
    after replacing weights call `round_weights`.

    Distribution: without a strategy, and under `OneDeviceStrategy`,
    `MirroredStrategy` and `MultiWorkerMirroredStrategy`. The rounding runs
    where the inner optimizer updates each weight, after the all-reduce,
    once per copy; stochastic rounding then needs a `seed`, so that every
    replica draws the same bits and the copies stay bit-identical. Kahan
    buffers are created like slots (mirrored under the strategy's scope).

    Works with Keras 3 optimizers (`keras.optimizers.*`) and tf_keras ones
    (`tf_keras.optimizers.*`, what `tf.keras` is under
    `TF_USE_LEGACY_KERAS=1`); `tfbf16.optimizers.BF16Weights(...)` returns
    the implementation for the inner optimizer's Keras, a subclass of that
    Keras' `Optimizer` (and an instance of this class), usable in
    `model.compile`, `fit` and custom loops. Its variables (the inner
    optimizer's and the Kahan compensation buffers) are saved and restored
    by `tf.train.Checkpoint(optimizer=...)` and `model.save`. The inner
    optimizer becomes part of the wrapper: do not use it on its own, nor
    wrap it twice.

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
            random state (single replica only); an int for a stochastic
            rounding that is a pure function of (seed, step, weight, rows).
        sparse_updates: round only the updated rows of sparse updates of
            lazy optimizers (see above); False rounds whole variables (the
            slower path, kept to compare).
        name: the optimizer's name (default "bf16_weights").

    Returns:
        A Keras optimizer.

    Raises:
        ValueError: for an unknown `update_rounding`; when applied under
            several replicas with stochastic rounding and no seed.
        TypeError: if `optimizer` is not a Keras 3 or tf_keras optimizer,
            or is already wrapped.
        NotImplementedError: when applied under another strategy
            (parameter servers, TPUs).

    Example:

    >>> model = tfbf16.wrap(model, "rne")
    >>> optimizer = tfbf16.optimizers.BF16Weights(keras.optimizers.Adam(1e-3),
    ...                                           update_rounding="kahan")
    >>> model.compile(optimizer, "mse"); model.fit(x, y)
    """

    def __new__(cls, optimizer=None, *args, **kwargs):
        if cls is not BF16Weights:
            return super().__new__(cls)
        if not backends.is_keras_object(optimizer):
            raise TypeError(
                "BF16Weights wraps a Keras 3 (keras.optimizers.*) or tf_keras "
                f"(tf_keras.optimizers.*) optimizer instance; got {optimizer!r}."
            )
        return backends.backend_of(optimizer).optimizer_class(optimizer, *args, **kwargs)


# Keras' saving finds the back ends' classes once they are imported.
for _backend in backends.registered_backends():
    _backend.optimizer_class  # noqa: B018  (imports and registers it)
