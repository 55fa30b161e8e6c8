"""`tfbf16.study.precision`: names, validation and a study's expansion."""

import pytest

import tfbf16

from tfbf16.study import precision as precision_lib
from tfbf16.study.precision import Precision


def test_names_round_trip():
    for name in ["fp32", "rne", "trunc", "stochastic", "native", "fp32+bf16w_rne",
                 "rne+bf16w_kahan", "native+bf16w_stochastic", "trunc+bf16w_trunc"]:
        assert Precision.parse(name).name == name
    assert Precision("rne", "bf16") == Precision.parse("rne+bf16w_rne")
    assert Precision().is_baseline and not Precision("fp32", "bf16").is_baseline
    assert Precision.parse("rne").trainer_kind == Precision.parse("trunc").trainer_kind
    # A deterministic rounding's trace leaves stochastic rounding out.
    assert Precision.parse("rne").trainer_kind != Precision.parse("stochastic").trainer_kind
    assert Precision.parse("rne").trainer_kind != Precision.parse("rne+bf16w_rne").trainer_kind


def test_names_come_from_tfbf16():
    assert precision_lib.UPDATE_ROUNDINGS is tfbf16.optimizers.UPDATE_ROUNDINGS
    assert precision_lib.COMPUTE_PRECISIONS == ("fp32",) + tfbf16.ROUNDINGS + ("native",)


@pytest.mark.parametrize("name, message", [
    ("fp16", "Unknown compute precision 'fp16'"),
    ("rne+bf16w_nearest", "Unknown update_rounding 'nearest'"),
    ("rne+bf16w_", "Unknown update_rounding ''"),
    (3, "a name such as"),
])
def test_bad_names_say_what_is_valid(name, message):
    with pytest.raises(ValueError, match=message) as raised:
        Precision.parse(name)
    if isinstance(name, str):
        assert "rne+bf16w_kahan" in str(raised.value)


def test_update_rounding_needs_bf16_weights():
    with pytest.raises(ValueError, match="needs BF16 weights"):
        Precision("rne", "fp32", "kahan")


def names(*args):
    return [p.name for p in precision_lib.expand(*args)]


def test_expand():
    assert names(["fp32", "rne", "trunc"]) == ["fp32", "rne", "trunc"]
    assert names(["rne", "fp32"]) == ["fp32", "rne"]
    assert names(["fp32", "rne"], ["fp32", "bf16"], ["rne", "kahan"]) == [
        "fp32", "fp32+bf16w_rne", "fp32+bf16w_kahan", "rne", "rne+bf16w_rne",
        "rne+bf16w_kahan"]
    assert names(["fp32"], ["bf16"]) == ["fp32", "fp32+bf16w_rne"]
    assert names(["fp32", "rne+bf16w_stochastic"]) == ["fp32", "rne+bf16w_stochastic"]


@pytest.mark.parametrize("args, message", [
    ((["rne"],), "must include 'fp32'"),
    ((["fp32", "rne", "rne"],), "repeat"),
    ((["fp32"], ["bf16"], ["rne", "rne"]), "repeat"),
    ((["fp32", "rne"], ["fp32"], ["kahan"]), "add bf16 to the weights precisions"),
    ((["fp32"], ["fp8"]), "Weights precisions must be among"),
    ((["fp32", "rne", "rne+bf16w_rne"], ["bf16"]), "listed twice"),
])
def test_expand_errors(args, message):
    with pytest.raises(ValueError, match=message):
        precision_lib.expand(*args)
