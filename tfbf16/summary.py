"""`tfbf16.summary`: what a wrapped model emulates, layer by layer."""

from tfbf16.backends import registry
from tfbf16.emulation import kinds
from tfbf16.wrap import iter_layers
from tfbf16.wrapper_base import BF16Wrapper

_WHY_FP32 = {
    kinds.NO_GEMM: "FP32 (no GEMM)",
    kinds.UNSUPPORTED: "FP32 (not supported)",
}


def _check_model(model):
    if not (registry.is_keras_object(model) and registry.backend_of(model).is_layer(model)):
        raise TypeError(
            "tfbf16.summary takes a Keras 3 or tf_keras model or layer; got "
            f"{type(model).__module__}.{type(model).__qualname__}."
        )


def summary_rows(model):
    """One dict per layer: path, class, emulated, tensors, rounding.

    Args:
        model: a Keras model or layer (wrapped or not).

    Returns:
        A list of dicts with keys "layer", "class" (the wrapped layer's
        class for a wrapper), "emulated" (bool), "tensors" (what is rounded)
        and "rounding".

    Raises:
        TypeError: if `model` is not a Keras model or layer.
    """
    _check_model(model)
    rows = []
    for path, layer in iter_layers(model):
        if isinstance(layer, BF16Wrapper):
            inner = layer.layer
            rounding, grad_rounding = layer.current_rounding()
            native = rounding == "native"
            rows.append({
                "layer": path,
                "class": type(inner).__name__,
                "emulated": True,
                "tensors": "computes in bfloat16" if native
                else kinds.rounded_tensors_of(layer.kind),
                "rounding": rounding if native else f"{rounding} (grad: {grad_rounding})",
            })
            continue
        kind = kinds.layer_kind(layer)
        if kind == kinds.MODEL or type(layer).__name__ == "InputLayer":
            continue
        rows.append({
            "layer": path,
            "class": type(layer).__name__,
            "emulated": False,
            "tensors": "",
            "rounding": _WHY_FP32.get(kind, "FP32 (not wrapped)"),
        })
    return rows


def summary(model, print_fn=print):
    """Prints a table of what `tfbf16.wrap` emulates in `model`.

    Args:
        model: a Keras model or layer (wrapped or not).
        print_fn: where each line goes.

    Returns:
        The table as a string.

    Raises:
        TypeError: if `model` is not a Keras model or layer.

    Example:

    >>> tfbf16.summary(tfbf16.wrap(model))
    layer            class   emulated  rounded tensors              rounding
    model/dense      Dense   yes       inputs, weights, gradients   rne (grad: rne)
    """
    rows = summary_rows(model)
    header = {"layer": "layer", "class": "class", "emulated": "emulated",
              "tensors": "rounded tensors", "rounding": "rounding"}
    cells = [header] + [
        {**row, "emulated": "yes" if row["emulated"] else "no"} for row in rows
    ]
    widths = {key: max(len(str(c[key])) for c in cells) for key in header}
    lines = ["  ".join(str(c[key]).ljust(widths[key]) for key in header).rstrip() for c in cells]
    emulated = sum(row["emulated"] for row in rows)
    lines.append(f"{emulated} of {len(rows)} layers emulated")
    text = "\n".join(lines)
    for line in lines:
        print_fn(line)
    return text
