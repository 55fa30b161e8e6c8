"""`SensitivityProbe`: the same weights evaluated under several roundings."""

import numpy as np

from tfbf16.callbacks.base import Callback, wrapped_layers
from tfbf16.rounding import rounding_code
from tfbf16.wrap import set_rounding


def _emulated_wrappers(model):
    """The model's wrappers; ValueError if none, or if some run native bfloat16."""
    wrappers = [w for _, w in wrapped_layers(model)]
    if not wrappers:
        raise ValueError(f"SensitivityProbe found no tfbf16.BF16Wrapper in {model.name!r}.")
    native = [w.name for w in wrappers if w.settings.rounding == "native"]
    if native:
        raise ValueError(
            "SensitivityProbe switches roundings at run time, which native-bfloat16 "
            f"layers cannot do ({native}); wrap the model with an emulated rounding."
        )
    return wrappers


def _floats(metrics):
    return {name: float(np.asarray(value)) for name, value in metrics.items()}


class SensitivityProbe(Callback):
    """Evaluates the current weights under several roundings at epoch ends.

    At the end of every epoch (or every `every_n_steps` steps) the model is
    evaluated on `validation_data` once per rounding, with the same
    weights, and for each metric `m` the logs get
    `"sensitivity/<rounding>/<m>"` and, for every rounding but the first
    (the reference), `"sensitivity/<rounding>/<m>_delta"` = its value minus
    the reference's. Each layer's previous rounding is restored afterwards.
    Nothing is retraced: the roundings are switched through
    `tfbf16.set_rounding`.

    Args:
        validation_data: what `model.evaluate` takes as `x`: a dataset, or a
            tuple `(x, y)` / `(x, y, sample_weight)` of arrays.
        roundings: the roundings to compare; the first is the reference.
        layers: None for every wrapped layer, or the names / regular
            expressions of the layers to switch.
        evaluate_fn: optional `fn(model) -> {metric: value}` used instead
            of `model.evaluate` (e.g. for an uncompiled model in a custom
            loop).
        every_n_steps: None to probe at epoch ends; an int to probe every
            that many steps instead (results in `self.records` only).
        batch_size: passed to `model.evaluate` for array data.

    Raises:
        ValueError: for no, repeated or unknown roundings or an invalid
            `every_n_steps`; in `on_train_begin`, for a model without
            emulated `tfbf16.BF16Wrapper`s.

    Example:

    >>> probe = tfbf16.callbacks.SensitivityProbe((x_val, y_val))
    >>> history = bf16_model.fit(x, y, epochs=3, callbacks=[probe])
    >>> history.history["sensitivity/trunc/loss_delta"]
    """

    def __init__(self, validation_data, roundings=("fp32", "rne", "trunc"), *, layers=None,
                 evaluate_fn=None, every_n_steps=None, batch_size=None):
        super().__init__()
        roundings = tuple(roundings)
        if len(roundings) < 1:
            raise ValueError("roundings must name at least one rounding.")
        for rounding in roundings:
            rounding_code(rounding)  # raises ValueError naming the valid roundings
        if len(set(roundings)) != len(roundings):
            raise ValueError(f"roundings repeat: {roundings}.")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be None or an int >= 1; got {every_n_steps!r}.")
        self.validation_data = validation_data
        self.roundings = roundings
        self.layers = layers
        self.evaluate_fn = evaluate_fn
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.records = []

    def get_config(self):
        return {"roundings": list(self.roundings), "layers": self.layers,
                "every_n_steps": self.every_n_steps, "batch_size": self.batch_size}

    @property
    def validation_data(self):
        return self._probe_data

    @validation_data.setter
    def validation_data(self, value):
        # tf_keras' Callback.__init__ sets validation_data = None; keep ours.
        if value is not None or not hasattr(self, "_probe_data"):
            self._probe_data = value

    def _evaluate(self):
        if self.evaluate_fn is not None:
            return _floats(self.evaluate_fn(self.model))
        data = self._probe_data
        if isinstance(data, tuple):
            x, y, *rest = data
            result = self.model.evaluate(
                x, y, sample_weight=rest[0] if rest else None, batch_size=self.batch_size,
                verbose=0, return_dict=True,
            )
        else:
            result = self.model.evaluate(data, verbose=0, return_dict=True)
        return _floats(result)

    def probe(self):
        """Evaluates under each rounding now.

        Returns:
            The flat log dict: `"sensitivity/<rounding>/<metric>"` and
            `"sensitivity/<rounding>/<metric>_delta"` (against the first
            rounding) to floats.
        """
        wrappers = _emulated_wrappers(self.model)
        previous = [(w, w.current_rounding()) for w in wrappers]
        results = {}
        try:
            for rounding in self.roundings:
                set_rounding(self.model, rounding, layers=self.layers)
                results[rounding] = self._evaluate()
        finally:
            for wrapper, (forward, gradient) in previous:
                wrapper.set_rounding(forward, gradient)
        logs = {}
        reference = results[self.roundings[0]]
        for rounding, metrics in results.items():
            for metric, value in metrics.items():
                logs[f"sensitivity/{rounding}/{metric}"] = value
                if rounding != self.roundings[0] and metric in reference:
                    logs[f"sensitivity/{rounding}/{metric}_delta"] = value - reference[metric]
        return logs

    def on_train_begin(self, logs=None):
        _emulated_wrappers(self.model)
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps is not None and self._step % self.every_n_steps == 0:
            self.records.append({"step": self._step, **self.probe()})

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_steps is not None:
            return
        values = self.probe()
        self.records.append({"epoch": epoch, **values})
        if logs is not None:
            logs.update(values)
