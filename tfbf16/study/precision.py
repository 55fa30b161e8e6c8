"""The precision of a study's run: what it computes in and stores weights in.

A `Precision` has two parts:

- `compute`: "fp32" trains the plain model; "rne", "trunc" and
  "stochastic" train it wrapped by `tfbf16.wrap(model, rounding=compute)`
  (BF16-rounded GEMM inputs, weights and error gradients, FP32
  accumulation); "native" computes in real bfloat16 kernels.
- `weights`: "fp32" keeps FP32 master weights (Kalamkar et al. 2019);
  "bf16" stores every weight as a BF16 value after every update, rounded
  with `update_rounding` ("rne", "trunc", "stochastic" or "kahan";
  `tfbf16.optimizers.BF16Weights`, Zamirai et al. 2020).

Its `name` is what flags, run directories and result tables use: the compute
name alone for FP32 weights ("rne"), `<compute>+bf16w_<update_rounding>`
for BF16 weights ("rne+bf16w_kahan": RNE compute, BF16 weights with Kahan
updates; "fp32+bf16w_rne": FP32 compute, weights stored in BF16 with RNE).
"fp32" is the baseline every study compares against.

Example:

>>> p = Precision.parse("rne+bf16w_kahan")
>>> p.compute, p.weights, p.update_rounding
('rne', 'bf16', 'kahan')
>>> Precision("trunc").name
'trunc'
"""

import dataclasses
from typing import Optional

import tfbf16
from tfbf16.optimizers import UPDATE_ROUNDINGS
from tfbf16.rounding import ROUNDINGS

#: The emulated roundings (`tfbf16.ROUNDINGS`).
EMULATED = ROUNDINGS
BASELINE = "fp32"
#: Every compute precision: FP32, the emulated roundings, real bfloat16.
COMPUTE_PRECISIONS = (BASELINE,) + EMULATED + ("native",)
WEIGHTS_PRECISIONS = ("fp32", "bf16")
_LABELS = {"fp32": "FP32", "stochastic": "BF16-SR", "native": "BF16-native"}
DEFAULT_UPDATE_ROUNDING = "rne"

_BF16_WEIGHTS = "+bf16w_"


@dataclasses.dataclass(frozen=True)
class Precision:
    """A compute precision and a weight-storage precision.

    Attributes:
        compute: one of `COMPUTE_PRECISIONS`.
        weights: "fp32" or "bf16".
        update_rounding: with `weights="bf16"`, how each updated weight is
            rounded to BF16 (one of `UPDATE_ROUNDINGS`; default "rne");
            must be None with FP32 weights.

    Raises:
        ValueError: on an unknown or inconsistent value.
    """

    compute: str = BASELINE
    weights: str = "fp32"
    update_rounding: Optional[str] = None

    def __post_init__(self):
        if self.compute not in COMPUTE_PRECISIONS:
            raise ValueError(f"Unknown compute precision {self.compute!r}; choose "
                             f"from {', '.join(COMPUTE_PRECISIONS)}.")
        if self.weights not in WEIGHTS_PRECISIONS:
            raise ValueError(f"Unknown weights precision {self.weights!r}; choose "
                             f"from {', '.join(WEIGHTS_PRECISIONS)}.")
        if self.weights == "fp32":
            if self.update_rounding is not None:
                raise ValueError(
                    f"update_rounding={self.update_rounding!r} needs BF16 weights "
                    "(weights='bf16', --weights_precision=bf16); FP32 weights are "
                    "updated in FP32.")
            return
        if self.update_rounding is None:
            object.__setattr__(self, "update_rounding", DEFAULT_UPDATE_ROUNDING)
        if self.update_rounding not in UPDATE_ROUNDINGS:
            raise ValueError(f"Unknown update_rounding {self.update_rounding!r}; "
                             f"choose from {', '.join(UPDATE_ROUNDINGS)}.")

    @classmethod
    def parse(cls, value):
        """The `Precision` of a name such as "rne" or "rne+bf16w_kahan".

        A `Precision` is returned unchanged.

        Raises:
            ValueError: naming the valid forms.
        """
        if isinstance(value, Precision):
            return value
        if not isinstance(value, str):
            raise ValueError(f"A precision is a name such as 'rne' or "
                             f"'rne+bf16w_kahan'; got {value!r}.")
        compute, bf16_weights, update = value.partition(_BF16_WEIGHTS)
        try:
            if bf16_weights:
                return cls(compute, "bf16", update)
            return cls(compute)
        except ValueError as e:
            raise ValueError(
                f"Invalid precision {value!r}: {e} Valid names: a compute "
                f"precision ({', '.join(COMPUTE_PRECISIONS)}), optionally with "
                f"'{_BF16_WEIGHTS}<update rounding>' for BF16 weights "
                f"({', '.join(UPDATE_ROUNDINGS)}), e.g. 'rne{_BF16_WEIGHTS}kahan'."
            ) from None

    @property
    def name(self):
        """The precision's name (see the module docstring)."""
        if self.weights == "fp32":
            return self.compute
        return f"{self.compute}{_BF16_WEIGHTS}{self.update_rounding}"

    def __str__(self):
        return self.name

    @property
    def is_baseline(self):
        """Whether this is FP32 compute with FP32 weights."""
        return self.compute == BASELINE and self.weights == "fp32"

    @property
    def compute_kind(self):
        """"fp32", "emulated" or "native".

        The emulated roundings share one wrapped model, whose rounding
        `tfbf16.set_rounding` switches without retracing.
        """
        return "emulated" if self.compute in EMULATED else self.compute

    @property
    def trainer_kind(self):
        """What one `recsys.trainer.Trainer` can run: precisions of equal
        `trainer_kind` share a model, an optimizer and compiled steps.

        Stochastic compute rounding has its own: a model wrapped with a
        deterministic rounding is traced without it (see `tfbf16.set_rounding`).
        """
        stochastic = self.compute == "stochastic"
        return (self.compute_kind, stochastic, self.weights, self.update_rounding)

    @property
    def label(self):
        """The precision's name in tables and plots: "FP32", "BF16-RNE", ...,
        "BF16-RNE + BF16 weights (kahan)"."""
        compute = _LABELS.get(self.compute, f"BF16-{self.compute.upper()}")
        if self.weights == "fp32":
            return compute
        return f"{compute} + BF16 weights ({self.update_rounding})"

    def describe(self):
        """A short human-readable description."""
        compute = {"fp32": "FP32 compute", "native": "native bfloat16 compute"}.get(
            self.compute, f"BF16-{self.compute.upper()} emulated compute")
        if self.weights == "fp32":
            return f"{compute}, FP32 weights"
        return f"{compute}, BF16 weights ({self.update_rounding} updates)"

    def apply(self, model):
        """The model to train: `model` itself for FP32 compute, else
        `tfbf16.wrap(model, rounding=compute)` (sharing its weights)."""
        if self.compute == BASELINE:
            return model
        return tfbf16.wrap(model, rounding=self.compute)

    def optimizer(self, inner, seed=None):
        """`inner` for FP32 weights, else `tfbf16.optimizers.BF16Weights`
        around it, storing the weights it updates in BF16.

        Args:
            inner: the Keras optimizer that computes the updates.
            seed: the stochastic update rounding's seed (None: TensorFlow's
                global random state; a seed is needed under several
                replicas, so that every replica draws the same bits).
        """
        if self.weights == "fp32":
            return inner
        return tfbf16.optimizers.BF16Weights(inner, update_rounding=self.update_rounding,
                                             seed=seed)


def expand(compute_precisions, weights_precisions=("fp32",), update_roundings=None):
    """The precisions of a study: every combination, baseline first.

    Args:
        compute_precisions: names (a compute precision, or a full name such
            as "rne+bf16w_kahan", taken as it is); must include "fp32".
        weights_precisions: "fp32" and/or "bf16": each compute precision is
            run with each (FP32 compute with FP32 weights is the baseline).
        update_roundings: the update roundings of the BF16-weights runs
            (None: ["rne"]); only with "bf16" in `weights_precisions`.

    Returns:
        A list of distinct `Precision`s, the baseline first.

    Raises:
        ValueError: on unknown names, repeats, a missing baseline, or
            update roundings without BF16 weights.

    Example:

    >>> [p.name for p in expand(["fp32", "rne"], ["bf16"], ["rne", "kahan"])]
    ['fp32', 'fp32+bf16w_rne', 'fp32+bf16w_kahan', 'rne+bf16w_rne', 'rne+bf16w_kahan']
    """
    weights_precisions = list(weights_precisions)
    unknown = [w for w in weights_precisions if w not in WEIGHTS_PRECISIONS]
    if unknown or not weights_precisions:
        raise ValueError(f"Weights precisions must be among "
                         f"{', '.join(WEIGHTS_PRECISIONS)}; got {weights_precisions}.")
    if update_roundings is not None and "bf16" not in weights_precisions:
        raise ValueError("Update roundings apply to BF16 weights: add bf16 to the "
                         "weights precisions (--weights_precision=bf16).")
    update_roundings = list(update_roundings or [DEFAULT_UPDATE_ROUNDING])
    repeated = sorted({str(n) for n in compute_precisions
                       if list(map(str, compute_precisions)).count(str(n)) > 1})
    if repeated or len(set(update_roundings)) != len(update_roundings):
        raise ValueError(f"Precisions or update roundings repeat: "
                         f"{list(compute_precisions)}, {update_roundings}.")
    parsed = [Precision.parse(name) for name in compute_precisions]
    if not any(p.is_baseline for p in parsed):
        raise ValueError(f"The precisions must include {BASELINE!r}, the baseline "
                         f"of the paired differences; got {list(compute_precisions)}.")
    result = [Precision()]
    for given in parsed:
        if given.weights == "bf16":  # a full name: as it is
            candidates = [given]
        else:
            candidates = []
            for weights in weights_precisions:
                if weights == "fp32":
                    candidates.append(given)
                else:
                    candidates += [Precision(given.compute, "bf16", u)
                                   for u in update_roundings]
        for precision in candidates:
            if precision in result:
                if not precision.is_baseline:
                    raise ValueError(f"Precision {precision.name!r} is listed twice "
                                     "(by name and by expansion).")
                continue
            result.append(precision)
    return result
