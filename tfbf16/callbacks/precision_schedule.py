"""`PrecisionSchedule`: switches roundings at given epochs or steps, without retracing."""

from tfbf16.callbacks.base import Callback, start_step
from tfbf16.rounding import rounding_code
from tfbf16.wrap import set_rounding


def _checked_rounding(rounding):
    rounding_code(rounding)  # raises ValueError naming the valid roundings
    return rounding


class PrecisionSchedule(Callback):
    """Changes the model's (or named layers') rounding at given epochs or steps.

    The wrappers read their rounding from variables, so a change takes effect
    at the next step without recompiling or retracing (see
    `tfbf16.set_rounding`). Entries apply cumulatively in key order: the
    rounding in effect at epoch/step `n` is the result of applying every
    entry with key <= n, so training resumed with `initial_epoch` (or a
    restored optimizer step count) gets the right roundings.

    Args:
        schedule: dict from an epoch (or step) number to either a rounding
            for every wrapped layer ("fp32", "rne", "trunc", "stochastic"),
            or a dict from layer names / regular expressions (as in
            `tfbf16.set_rounding(layers=...)`) to roundings.
        unit: "epoch" (applied at epoch begin) or "step" (applied before the
            step with that 0-based index; steps are counted from the
            optimizer's `iterations` at the start of training).
        grad_rounding: None to round gradients like the forward pass, or a
            fixed gradient rounding.
        verbose: 1 prints each change.
        optimizer: the optimizer whose `iterations` count the steps (None:
            `model.optimizer`; without one, steps count from 0).

    Raises:
        ValueError: for an empty schedule, keys that are not ints >= 0,
            unknown roundings or an unknown unit.

    Example:

    >>> schedule = tfbf16.callbacks.PrecisionSchedule({0: "fp32", 2: "rne"})
    >>> bf16_model.fit(x, y, epochs=5, callbacks=[schedule])
    """

    def __init__(self, schedule, unit="epoch", *, grad_rounding=None, verbose=0,
                 optimizer=None):
        super().__init__()
        if not isinstance(schedule, dict) or not schedule:
            raise ValueError(f"schedule must be a non-empty dict; got {schedule!r}.")
        checked = {}
        for key, value in schedule.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise ValueError(f"schedule keys must be ints >= 0; got {key!r}.")
            if isinstance(value, dict):
                if not value:
                    raise ValueError(f"schedule[{key}] is an empty dict.")
                checked[key] = {str(k): _checked_rounding(v) for k, v in value.items()}
            else:
                checked[key] = _checked_rounding(value)
        if unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step'; got {unit!r}.")
        if grad_rounding is not None:
            _checked_rounding(grad_rounding)
        self.schedule = dict(sorted(checked.items()))
        self.unit = unit
        self.grad_rounding = grad_rounding
        self.verbose = verbose
        self.optimizer = optimizer
        self.applied = []  # (epoch or step, entry) in the order applied

    def get_config(self):
        return {"schedule": self.schedule, "unit": self.unit,
                "grad_rounding": self.grad_rounding, "verbose": self.verbose}

    def _apply_up_to(self, position):
        for key, entry in self.schedule.items():
            if key > position or key <= self._applied_key:
                continue
            if isinstance(entry, dict):
                for layers, rounding in entry.items():
                    set_rounding(self.model, rounding, grad_rounding=self.grad_rounding,
                                 layers=[layers])
            else:
                set_rounding(self.model, entry, grad_rounding=self.grad_rounding)
            self._applied_key = key
            self.applied.append((position, entry))
            if self.verbose:
                print(f"PrecisionSchedule: {self.unit} {position}: rounding {entry}")

    def on_train_begin(self, logs=None):
        self._applied_key = -1
        self._step = start_step(self.model, self.optimizer)
        if self.unit == "step":
            self._apply_up_to(self._step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            # Entries skipped by `initial_epoch` are applied first, in order.
            self._apply_up_to(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            self._apply_up_to(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
