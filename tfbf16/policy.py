"""`BF16Policy`: what a wrapped model rounds to bfloat16, and where."""

import dataclasses
import re

from tfbf16.rounding import ROUNDINGS, check_rounding

#: Roundings a wrapper accepts: the emulated ones, plus real bfloat16 compute.
WRAP_ROUNDINGS = ROUNDINGS + ("native",)


@dataclasses.dataclass(frozen=True)
class LayerRounding:
    """The resolved emulation settings of one layer (see `BF16Policy`)."""

    rounding: str
    grad_rounding: str
    inputs: bool = True
    weights: bool = True
    outputs: bool = False
    input_gradients: bool = True
    output_gradients: bool = True
    weight_gradients: bool = False

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class BF16Policy:
    """What `tfbf16.wrap` rounds to bfloat16, and in which layers.

    The defaults follow Kalamkar et al. 2019: every compute layer's
    floating-point inputs and weights are rounded in the forward pass, the
    error gradients flowing into its inputs and out of its outputs are
    rounded in the backward pass, the matmul/conv itself accumulates in FP32,
    and master weights, weight gradients and optimizer state stay FP32.

    Args:
        round_inputs: round a layer's floating-point inputs (forward).
        round_weights: round the weights a layer reads (forward).
        round_outputs: also round a layer's outputs (forward).
        round_input_gradients: round the gradient with respect to a layer's
            inputs (backward).
        round_output_gradients: round the gradient arriving at a layer's
            outputs (backward).
        round_weight_gradients: round the gradient with respect to the
            weights before the (FP32) update.
        round_normalization: emulate BatchNormalization, LayerNormalization
            and GroupNormalization too; False keeps them FP32.
        keep_first_fp32: keep the first compute layer (in topological order)
            FP32.
        keep_last_fp32: keep the last compute layer FP32.
        include: if given, only layers matching one of these are emulated.
            Each entry is a layer name, a regular expression (matched in full
            against the name) or a layer class.
        exclude: layers matching one of these stay FP32 (same forms).
        layer_roundings: dict from a layer name or regular expression to
            the rounding ("rne", "trunc", "stochastic") of matching layers.

    `tfbf16.wrap` refuses (ValueError) a policy with an `include` or
    `exclude` entry or a `layer_roundings` key that matches no layer of the
    model (a typo would otherwise quietly leave the model FP32, or
    emulated where FP32 was meant), and warns when the policy leaves nothing
    of the model emulated.

    Example:

    >>> policy = tfbf16.BF16Policy(keep_last_fp32=True, exclude=["embed.*"],
    ...                            layer_roundings={"cross_.*": "trunc"})
    >>> model = tfbf16.wrap(model, "rne", policy=policy)
    """

    def __init__(
        self,
        *,
        round_inputs=True,
        round_weights=True,
        round_outputs=False,
        round_input_gradients=True,
        round_output_gradients=True,
        round_weight_gradients=False,
        round_normalization=True,
        keep_first_fp32=False,
        keep_last_fp32=False,
        include=None,
        exclude=None,
        layer_roundings=None,
    ):
        self.round_inputs = bool(round_inputs)
        self.round_weights = bool(round_weights)
        self.round_outputs = bool(round_outputs)
        self.round_input_gradients = bool(round_input_gradients)
        self.round_output_gradients = bool(round_output_gradients)
        self.round_weight_gradients = bool(round_weight_gradients)
        self.round_normalization = bool(round_normalization)
        self.keep_first_fp32 = bool(keep_first_fp32)
        self.keep_last_fp32 = bool(keep_last_fp32)
        self.include = _check_selectors("include", include)
        self.exclude = _check_selectors("exclude", exclude)
        self.layer_roundings = dict(layer_roundings or {})
        for pattern, rounding in self.layer_roundings.items():
            if not isinstance(pattern, str):
                raise TypeError(
                    f"layer_roundings keys must be layer names or regular "
                    f"expressions (str); got {pattern!r}."
                )
            check_rounding(rounding, WRAP_ROUNDINGS)

    def selects(self, layer):
        """Whether `include`/`exclude` let `layer` be emulated."""
        if self.include is not None and not _matches_any(layer, self.include):
            return False
        return not (self.exclude and _matches_any(layer, self.exclude))

    def unmatched_entries(self, layers):
        """The entries of this policy that select none of `layers`.

        Args:
            layers: the layers of a model.

        Returns:
            A list of `(what, entry)`: "include entry", "exclude entry" and
            "layer_roundings key" entries that match no layer.
        """
        unmatched = []
        for field, selectors in (("include entry", self.include),
                                 ("exclude entry", self.exclude)):
            for selector in selectors or ():
                if not any(_matches_any(layer, [selector]) for layer in layers):
                    unmatched.append((field, selector))
        for pattern in self.layer_roundings:
            if not any(_name_matches(layer.name, pattern) for layer in layers):
                unmatched.append(("layer_roundings key", pattern))
        return unmatched

    def resolve(self, layer, rounding, grad_rounding):
        """The `LayerRounding` of `layer` under this policy.

        Args:
            layer: the layer.
            rounding: the model-wide rounding.
            grad_rounding: the model-wide gradient rounding.

        Returns:
            A `LayerRounding`.
        """
        for pattern, layer_rounding in self.layer_roundings.items():
            if _name_matches(layer.name, pattern):
                rounding = layer_rounding
                grad_rounding = layer_rounding if layer_rounding != "native" else None
                break
        return LayerRounding(
            rounding=rounding,
            grad_rounding=grad_rounding,
            inputs=self.round_inputs,
            weights=self.round_weights,
            outputs=self.round_outputs,
            input_gradients=self.round_input_gradients,
            output_gradients=self.round_output_gradients,
            weight_gradients=self.round_weight_gradients,
        )

    def get_config(self):
        def names(selectors):
            if selectors is None:
                return None
            return [s if isinstance(s, str) else f"class:{s.__name__}" for s in selectors]

        return {
            "round_inputs": self.round_inputs,
            "round_weights": self.round_weights,
            "round_outputs": self.round_outputs,
            "round_input_gradients": self.round_input_gradients,
            "round_output_gradients": self.round_output_gradients,
            "round_weight_gradients": self.round_weight_gradients,
            "round_normalization": self.round_normalization,
            "keep_first_fp32": self.keep_first_fp32,
            "keep_last_fp32": self.keep_last_fp32,
            "include": names(self.include),
            "exclude": names(self.exclude),
            "layer_roundings": dict(self.layer_roundings),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        defaults = BF16Policy().get_config()
        changed = {k: v for k, v in self.get_config().items() if v != defaults[k]}
        return f"BF16Policy({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _check_selectors(name, selectors):
    if selectors is None:
        return None
    if isinstance(selectors, (str, type)):
        selectors = [selectors]
    selectors = list(selectors)
    for selector in selectors:
        if not isinstance(selector, (str, type)):
            raise TypeError(
                f"{name} entries must be layer names, regular expressions or "
                f"layer classes; got {selector!r}."
            )
        if isinstance(selector, str) and not selector.startswith("class:"):
            try:
                re.compile(selector)
            except re.error as error:
                raise ValueError(f"{name} entry {selector!r} is not a valid regular expression: {error}")
    return selectors


def _name_matches(name, pattern):
    return name == pattern or re.fullmatch(pattern, name) is not None


def _matches_any(layer, selectors):
    for selector in selectors:
        if isinstance(selector, type):
            if isinstance(layer, selector):
                return True
        elif selector.startswith("class:"):
            if any(c.__name__ == selector[6:] for c in type(layer).__mro__):
                return True
        elif _name_matches(layer.name, selector):
            return True
    return False
