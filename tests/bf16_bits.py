"""Bit-level reference helpers shared by the tests (NumPy and ml_dtypes only)."""

import ml_dtypes
import numpy as np


def rnd(value):
    """RNE to bfloat16 values with ml_dtypes (the reference rounding), as float32."""
    return np.asarray(value, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def trunc(value):
    """Truncation toward zero to bfloat16 values (the low 16 bits cleared)."""
    return (bits(value) & 0xFFFF0000).view(np.float32)


def bits(value):
    """The float32 bit patterns of `value`, as uint32."""
    return np.asarray(value, np.float32).view(np.uint32)


def assert_bits_equal(actual, expected, what=""):
    """Asserts two float32 arrays are equal bit for bit (same shape)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    mismatched = bits(actual) != bits(expected)
    assert not mismatched.any(), (
        f"{what}: {mismatched.sum()} of {mismatched.size} values differ; "
        f"max abs diff {np.max(np.abs(actual - expected))}"
    )


def is_bf16(value):
    """Whether every value is a bfloat16 value (low 16 bits zero)."""
    return not (bits(value) & 0xFFFF).any()


def not_bf16(rng, shape, scale=1.0):
    """Random float32 values, none of which is a bfloat16 value."""
    value = (rng.standard_normal(shape) * scale).astype(np.float32)
    return (bits(value) | 0x1).view(np.float32)  # a set low bit: never bf16
