"""Bit-exact rounding of floating-point tensors to bfloat16 values.

bfloat16 keeps float32's sign and 8 exponent bits and the top 7 of its 23
mantissa bits, so every bfloat16 value is a float32 whose low 16 bits are zero.
This module rounds tensors to such values while keeping their dtype, which is
how tfbf16 emulates bfloat16 arithmetic on top of FP32 kernels.

The rounding is done with integer operations on the float32 bit pattern, so it
is exact for every bit pattern, including subnormals (TensorFlow's CPU kernels
flush subnormal *arithmetic* results to zero; integer and bitcast ops do not).
The float32 path is compiled with XLA by default so that the chain of bit
operations fuses into one memory pass even inside a graph that is not itself
XLA-compiled; see `set_xla_rounding`.
"""

import tensorflow as tf

ROUNDINGS = ("rne", "trunc", "stochastic")

#: Integer codes for a rounding held in a tensor (e.g. a variable that a
#: callback changes while a traced training step keeps running). Code 0,
#: "fp32", leaves values unchanged.
ROUNDING_CODES = {"fp32": 0, "rne": 1, "trunc": 2, "stochastic": 3}

# float32 bit-pattern constants, as int32 (TensorFlow's integer kernels wrap).
_HIGH_HALF_MASK = -65536  # 0xFFFF0000
_ABS_MASK = 0x7FFFFFFF
_EXP_MASK = 0x7F800000  # +Inf; any larger magnitude pattern is a NaN
_SIGN_MASK = -2147483648  # 0x80000000
_QUIET_NAN = 0x7FC00000
_RNE_BIAS = 0x7FFF

_state = {"use_xla": True}


def set_xla_rounding(enabled):
    """Chooses whether the float32 rounding kernel is compiled with XLA.

    XLA fuses the bit operations into a single pass over memory (about the
    cost of a copy); without it each bit operation is a separate TensorFlow
    kernel. The results are bit-identical either way. Disable it only on a
    device without XLA support.

    Args:
        enabled: bool.
    """
    _state["use_xla"] = bool(enabled)


def check_rounding(rounding, allowed=ROUNDINGS):
    """Returns `rounding` if it is one of `allowed`, else raises ValueError.

    A tensor (a runtime rounding code, see `ROUNDING_CODES`) is accepted as
    it is: its value is only known when the graph runs.

    Args:
        rounding: the rounding name to check.
        allowed: the valid names.

    Returns:
        `rounding`, unchanged.
    """
    if _is_runtime_code(rounding):
        return rounding
    if rounding not in allowed:
        raise ValueError(
            f"Unknown rounding {rounding!r}. Valid roundings are: "
            f"{', '.join(repr(r) for r in allowed)}."
        )
    return rounding


def _is_runtime_code(rounding):
    return isinstance(rounding, (tf.Tensor, tf.Variable))


def _read_code(rounding):
    """Reads a runtime rounding code held in a variable (names pass through).

    Reading it before entering a custom-gradient function keeps TensorFlow
    from treating the code variable as a differentiable input.
    """
    if isinstance(rounding, tf.Variable):
        return tf.convert_to_tensor(rounding)
    return rounding


def rounding_code(rounding):
    """The integer code (see `ROUNDING_CODES`) of a rounding name."""
    if rounding not in ROUNDING_CODES:
        raise ValueError(
            f"Unknown rounding {rounding!r}. Valid roundings are: "
            f"{', '.join(repr(r) for r in ROUNDING_CODES)}."
        )
    return ROUNDING_CODES[rounding]


def _round_float32_bits(x, rounding, seed):
    """Rounds a float32 tensor to bfloat16 values with integer bit ops.

    Args:
        x: float32 tensor.
        rounding: one of `ROUNDINGS`, or an int32 scalar tensor holding a
            code of `ROUNDING_CODES` (all modes in one fused kernel).
        seed: int64 tensor of shape [2], the stateless seed of the random
            bits of stochastic rounding (unused by the other modes).

    Returns:
        float32 tensor whose low 16 bits are zero (or a canonical NaN), or
        x unchanged for the runtime code of "fp32".
    """
    bits = tf.bitcast(x, tf.int32)
    original = bits
    mask = _HIGH_HALF_MASK
    if _is_runtime_code(rounding):
        lsb = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 16), 1)
        random_bits = tf.cond(
            tf.equal(rounding, ROUNDING_CODES["stochastic"]),
            lambda: _stateless_random_bits(tf.shape(x), seed),
            lambda: tf.zeros(tf.shape(x), tf.int32),
        )
        bias = tf.where(
            tf.equal(rounding, ROUNDING_CODES["rne"]),
            _RNE_BIAS + lsb,
            random_bits,
        )
        bits = bits + bias
        mask = tf.where(tf.equal(rounding, ROUNDING_CODES["fp32"]), -1, _HIGH_HALF_MASK)
    elif rounding == "rne":
        lsb = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 16), 1)
        bits = bits + (_RNE_BIAS + lsb)
    elif rounding == "stochastic":
        bits = bits + _stateless_random_bits(tf.shape(x), seed)
    rounded = tf.bitwise.bitwise_and(bits, mask)
    # A NaN becomes the canonical quiet NaN with its sign kept (what
    # ml_dtypes and AVX512_BF16 produce); without this guard adding a bias
    # or masking can turn a NaN into an Inf.
    is_nan = tf.bitwise.bitwise_and(original, _ABS_MASK) > _EXP_MASK
    nan_bits = tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_and(original, _SIGN_MASK), _QUIET_NAN
    )
    if _is_runtime_code(rounding):
        nan_bits = tf.where(tf.equal(rounding, ROUNDING_CODES["fp32"]), original, nan_bits)
    return tf.bitcast(tf.where(is_nan, nan_bits, rounded), tf.float32)


_round_float32_bits_xla = tf.function(
    _round_float32_bits, jit_compile=True, autograph=False, reduce_retracing=True
)


def _stateless_random_bits(shape, seed):
    """16 uniform random bits per element (int32), a pure function of seed."""
    return tf.random.stateless_uniform(shape, seed=seed, maxval=2**16, dtype=tf.int32)


def _seed_for_call(seed):
    """A stateless seed for one rounding call.

    An explicit seed is used as it is; with None a fresh seed is drawn from
    TensorFlow's global random state, so results follow `tf.random.set_seed`
    and every call (also every call inside one traced function) differs.
    """
    if seed is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    return _as_stateless_seed(seed)


def _as_stateless_seed(seed):
    """Converts an int or a shape-[2] integer tensor into a stateless seed."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            "seed must be None, a Python int or an integer tensor of shape [2]; "
            f"got {seed!r}."
        )
    return seed


def _derive_seed(seed, offset):
    """A second, distinct stateless seed derived from `seed` (None stays None)."""
    if seed is None:
        return None
    seed = _as_stateless_seed(seed)
    return seed + tf.constant([0, offset], dtype=seed.dtype)


def _round_float32(x, rounding, seed):
    if _is_runtime_code(rounding):
        rounding = tf.cast(rounding, tf.int32)
    if _is_runtime_code(rounding) or rounding == "stochastic":
        seed = _seed_for_call(seed)
    else:
        seed = tf.zeros([2], tf.int64)
    kernel = _round_float32_bits_xla if _state["use_xla"] else _round_float32_bits
    rounded = kernel(x, rounding, seed)
    if not tf.executing_eagerly():
        rounded.set_shape(x.shape)  # the traced kernel may relax the shape
    return rounded


# float64 bit-pattern constants.
_F64_ABS_MASK = 0x7FFFFFFFFFFFFFFF
_F64_INF = 0x7FF0000000000000
_F64_QUIET_NAN = 0x7FF8000000000000
_F64_MANTISSA_BITS = 52
_BF16_MIN_EXPONENT = -126  # smallest normal bfloat16 exponent
_BF16_DROPPED_BITS = 45  # 52 - 7 mantissa bits dropped for a normal result
_BF16_MAX_FINITE = float.fromhex("0x1.fep127")


def _round_float64(x, rounding, seed):
    """Rounds a float64 tensor to bfloat16 values in one correct rounding.

    Everything happens on the integer bit pattern: TensorFlow's CPU casts
    between float64 and float32 flush float32 subnormals to zero, so no
    float32 intermediate is used.
    """
    bits = tf.bitcast(x, tf.int64)
    sign = tf.bitwise.bitwise_and(bits, tf.constant(-(2**63), tf.int64))
    magnitude = tf.bitwise.bitwise_and(bits, _F64_ABS_MASK)
    biased_exponent = tf.bitwise.right_shift(magnitude, _F64_MANTISSA_BITS)
    exponent = biased_exponent - 1023
    significand = tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_and(magnitude, 2**_F64_MANTISSA_BITS - 1),
        tf.where(biased_exponent > 0, tf.constant(2**_F64_MANTISSA_BITS, tf.int64), 0),
    )
    # Below bfloat16's normal range the grid is fixed at 2**-133, so more
    # bits are dropped; from 55 on nothing of the significand is kept.
    shift = _BF16_DROPPED_BITS + tf.maximum(_BF16_MIN_EXPONENT - exponent, 0)
    kept_shift = tf.minimum(shift, 55)
    kept = tf.bitwise.right_shift(significand, kept_shift)
    remainder = significand - tf.bitwise.left_shift(kept, kept_shift)
    if rounding == "rne":
        half = tf.bitwise.left_shift(tf.constant(1, tf.int64), kept_shift - 1)
        odd = tf.equal(tf.bitwise.bitwise_and(kept, 1), 1)
        up = tf.logical_or(remainder > half, tf.logical_and(tf.equal(remainder, half), odd))
    elif rounding == "trunc":
        up = tf.zeros_like(kept, tf.bool)
    else:
        # The top 32 bits of the dropped fraction against 32 random bits.
        fraction = tf.bitwise.right_shift(remainder, tf.minimum(shift - 32, 63))
        threshold = tf.random.stateless_uniform(
            tf.shape(x), seed=_seed_for_call(seed), maxval=2**32, dtype=tf.int64
        )
        up = fraction + threshold >= 2**32
    kept = kept + tf.cast(up, tf.int64)
    # The result is kept * 2**scale_exponent, a normal float64: an exact
    # integer times an exact power of two built from its bit pattern.
    scale_exponent = tf.maximum(exponent, _BF16_MIN_EXPONENT) - 7
    scale = tf.bitcast(tf.bitwise.left_shift(scale_exponent + 1023, _F64_MANTISSA_BITS), tf.float64)
    magnitude_value = tf.cast(kept, tf.float64) * scale
    overflow = magnitude_value > _BF16_MAX_FINITE
    overflow_value = (
        _BF16_MAX_FINITE if rounding == "trunc" else float("inf")
    )
    magnitude_value = tf.where(overflow, tf.constant(overflow_value, tf.float64), magnitude_value)
    result_bits = tf.bitwise.bitwise_or(tf.bitcast(magnitude_value, tf.int64), sign)
    is_nan = magnitude > _F64_INF
    result_bits = tf.where(
        is_nan, tf.bitwise.bitwise_or(sign, _F64_QUIET_NAN), result_bits
    )
    result_bits = tf.where(tf.equal(magnitude, _F64_INF), bits, result_bits)
    return tf.bitcast(result_bits, tf.float64)


def _round_raw(x, rounding, seed):
    """Rounding without gradient; `x` is a floating tensor, `rounding` valid."""
    dtype = x.dtype
    if dtype == tf.bfloat16:
        return x
    if dtype == tf.float32:
        return _round_float32(x, rounding, seed)
    if dtype == tf.float16:
        # float16 -> float32 is exact, and so is the way back for every
        # bfloat16 value inside float16's range (larger ones become +-Inf).
        return tf.cast(_round_float32(tf.cast(x, tf.float32), rounding, seed), dtype)
    if dtype == tf.float64:
        if _is_runtime_code(rounding):
            return tf.switch_case(
                tf.cast(rounding, tf.int32),
                [lambda: x] + [
                    (lambda r: lambda: _round_float64(x, r, seed))(r) for r in ROUNDINGS
                ],
            )
        return _round_float64(x, rounding, seed)
    raise TypeError(_dtype_error(dtype))


def _dtype_error(dtype):
    return (
        f"tfbf16 rounds floating-point tensors only; got dtype {dtype.name}. "
        "Cast integer or boolean tensors to a float dtype first, or leave "
        "them unrounded (ids and masks need no rounding)."
    )


def _to_float_tensor(x):
    """Converts x to a tensor and checks that its dtype is floating."""
    if isinstance(x, tf.IndexedSlices):
        raise TypeError(
            "round_bf16 takes dense tensors; round an IndexedSlices through "
            "its .values."
        )
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(_dtype_error(x.dtype))
    return x


def round_bf16(x, rounding="rne", *, seed=None):
    """Rounds `x` to values representable in bfloat16, keeping its dtype.

    The gradient passes straight through (identity), so this can be used in
    a model without blocking backpropagation; use `quantize` to also round
    the gradient.

    Semantics for float32 input:
    - "rne": round to nearest, ties to even; bit-exact with
      `x.astype(ml_dtypes.bfloat16)`: signed zeros keep their sign,
      subnormals round like other values, values past the largest bfloat16
      become +-Inf, NaN becomes the quiet NaN of the same sign.
    - "trunc": round toward zero (drop the low 16 mantissa bits); a NaN
      stays a NaN (the canonical quiet NaN of the same sign).
    - "stochastic": round away from zero with probability equal to the
      distance to the neighbour nearer zero divided by the gap between the
      two neighbours, so that E[round_bf16(x)] = x. Inf and NaN are kept.

    float16 input is rounded as its exact float32 value would be; float64
    input is rounded once, correctly (no double rounding through float32);
    bfloat16 input is returned unchanged.

    Args:
        x: a floating-point tensor (or anything `tf.convert_to_tensor`
            accepts).
        rounding: one of `tfbf16.ROUNDINGS`, or an integer scalar tensor
            (e.g. a variable) holding a code of `ROUNDING_CODES`, which lets
            a traced function switch rounding without retracing.
        seed: only for "stochastic". None draws from TensorFlow's global
            random state (reproducible under `tf.random.set_seed`; each call
            inside a `tf.function` draws fresh bits); a Python int or an
            integer tensor of shape [2] makes the result a pure function of
            `x` and `seed`.

    Returns:
        A tensor of x's dtype and shape.

    Raises:
        TypeError: if x is not floating point.
        ValueError: if `rounding` is not one of `tfbf16.ROUNDINGS`.

    Example:

    >>> tfbf16.round_bf16(tf.constant([1.00390625, 3.14159]))
    <tf.Tensor: shape=(2,), dtype=float32, numpy=array([1.       , 3.140625], dtype=float32)>
    """
    rounding = _read_code(check_rounding(rounding))
    x = _to_float_tensor(x)
    return _straight_through_round(x, rounding, seed)


def _straight_through_round(x, rounding, seed):
    @tf.custom_gradient
    def _round(value):
        def grad(upstream):
            return upstream

        return _round_raw(value, rounding, seed), grad

    return _round(x)


def round_gradient(gradient, rounding, *, seed=None):
    """Rounds a gradient, dense or `tf.IndexedSlices` (kept sparse).

    Args:
        gradient: a tensor, an `IndexedSlices`, or None.
        rounding: one of `tfbf16.ROUNDINGS`, or None to return it unchanged.
        seed: as in `round_bf16`.

    Returns:
        The rounded gradient, of the same kind as `gradient`.
    """
    if gradient is None or rounding is None:
        return gradient
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            _round_raw(gradient.values, rounding, seed),
            gradient.indices,
            gradient.dense_shape,
        )
    return _round_raw(tf.convert_to_tensor(gradient), rounding, seed)


def quantize(x, rounding="rne", grad_rounding="rne", *, seed=None):
    """Rounds `x` to bfloat16 values and rounds its gradient on the way back.

    This is the emulation op: the forward pass is `round_bf16(x, rounding)`;
    the backward pass rounds the incoming gradient with `grad_rounding`.
    Gradients that arrive as `tf.IndexedSlices` (from embedding lookups) are
    rounded in their values and stay sparse.

    Args:
        x: a floating-point tensor.
        rounding: forward rounding, one of `tfbf16.ROUNDINGS` (or a
            runtime code tensor, as in `round_bf16`).
        grad_rounding: backward rounding, one of `tfbf16.ROUNDINGS` (or a
            runtime code tensor), or None to pass the gradient through
            unchanged.
        seed: as in `round_bf16`. With an explicit seed, the backward pass
            uses a different seed derived from it.

    Returns:
        A tensor of x's dtype and shape.

    Raises:
        TypeError: if x is not floating point.
        ValueError: if a rounding name is unknown.

    Example:

    >>> x = tf.Variable([1.00390625])
    >>> with tf.GradientTape() as tape:
    ...     y = tfbf16.quantize(x) * 3.0
    >>> tape.gradient(y, x)   # 3.0 is exact in bfloat16
    <tf.Tensor: ... numpy=array([3.], dtype=float32)>
    """
    rounding = _read_code(check_rounding(rounding))
    if grad_rounding is not None:
        grad_rounding = _read_code(check_rounding(grad_rounding))
    x = _to_float_tensor(x)
    backward_seed = _derive_seed(seed, 1)

    @tf.custom_gradient
    def _quantize(value):
        def grad(upstream):
            return round_gradient(upstream, grad_rounding, seed=backward_seed)

        return _round_raw(value, rounding, seed), grad

    return _quantize(x)
