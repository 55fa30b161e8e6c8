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

Stochastic rounding adds 16 random bits to the 16 bits that are dropped. The
random bits of element i (in row-major order) are the top bits of output
i + 1 of SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; Java's `SplittableRandom`), started from a 64-bit
key that SplitMix64's mixing function makes of the seed. SplitMix64 is a
counter-based generator: output i is a bijective integer hash (Stafford's
"Mix13" finalizer: two 64-bit multiplies, three xor-shifts) of
key + i * 0x9E3779B97F4A7C15, so it is computed in the same fused loop as the
rounding, from the element's index alone, at no measurable cost next to the
memory traffic. Its output sequence passes TestU01's BigCrush; tfbf16's own
tests check uniformity of the bits and independence between neighbouring
elements, steps and seeds. It was chosen over TensorFlow's Philox
(`tf.random.stateless_uniform`: a separate op and memory pass, about 55x
slower in this kernel) and over 32-bit hashes (a 32-bit counter repeats after
2**32 elements, and two keys of a one-round 32-bit hash give permutations of
the same values).
"""

import numbers

import numpy as np
import tensorflow as tf

#: Integer codes for a rounding held in a tensor (e.g. a variable that a
#: callback changes while a traced training step keeps running). Code 0,
#: "fp32", leaves values unchanged.
ROUNDING_CODES = {"fp32": 0, "rne": 1, "trunc": 2, "stochastic": 3}

#: The roundings to bfloat16 values (every code but "fp32").
ROUNDINGS = tuple(name for name in ROUNDING_CODES if name != "fp32")
# The codes of a runtime rounding without stochastic rounding are 0 to 2: a
# kernel that lacks it drops the last code.
_DETERMINISTIC_ROUNDINGS = ROUNDINGS[:-1]
assert ROUNDINGS[-1] == "stochastic" and list(ROUNDING_CODES.values()) == [0, 1, 2, 3]

# float32 bit-pattern constants, as int32 (TensorFlow's integer kernels wrap).
_HIGH_HALF_MASK = -65536  # 0xFFFF0000
_ABS_MASK = 0x7FFFFFFF
_EXP_MASK = 0x7F800000  # +Inf; any larger magnitude pattern is a NaN
_SIGN_MASK = -2147483648  # 0x80000000
_QUIET_NAN = 0x7FC00000
_RNE_BIAS = 0x7FFF

# SplitMix64: the increment ("golden gamma") and the two multipliers of its
# output function (David Stafford's Mix13, as in Java's SplittableRandom).
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_GOLDEN_GAMMA_INVERSE = pow(_GOLDEN_GAMMA, -1, 2**64)
_MIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_MIX_SHIFTS = (30, 27, 31)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_state = {"use_xla": True}


def set_xla_rounding(enabled):
    """Chooses whether the float32 rounding kernel is compiled with XLA.

    XLA fuses the bit operations (and stochastic rounding's random-bit hash)
    into a single pass over memory; without it each bit operation is a
    separate TensorFlow kernel with its own pass (several times slower, much
    more so for stochastic rounding). The results are bit-identical either
    way. Disable it only on a device without XLA support. The setting is
    read when a function is traced.

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

    Raises:
        ValueError: if `rounding` is not one of `allowed`.
    """
    if _is_runtime_code(rounding):
        return rounding
    return _check_name(rounding, allowed)


def _check_name(rounding, allowed):
    if not isinstance(rounding, str) or rounding not in allowed:
        raise ValueError(
            f"Unknown rounding {rounding!r}. Valid roundings are: "
            f"{', '.join(repr(r) for r in allowed)}."
        )
    return rounding


class RuntimeRounding:
    """A rounding code read when the graph runs, and the modes it may hold.

    A plain code tensor (see `ROUNDING_CODES`) may hold every mode, so the
    traced kernel computes stochastic rounding's random bits for every
    element even while the code says "rne" (measured: 8% of an emulated
    DCN training step under XLA). `tfbf16`'s wrappers pass their codes in
    this form with `stochastic=False` unless they may round stochastically;
    such a kernel then treats the stochastic code like an out-of-range one
    (NaN everywhere), so a trace that lacks it cannot go unnoticed.

    Args:
        code: an integer scalar tensor or variable.
        stochastic: whether the stochastic code is among the values `code`
            may hold when the graph runs.
    """

    def __init__(self, code, stochastic=True):
        self.code = code
        self.stochastic = bool(stochastic)

    def __repr__(self):
        return f"RuntimeRounding({self.code!r}, stochastic={self.stochastic})"


def _is_runtime_code(rounding):
    return isinstance(rounding, (tf.Tensor, tf.Variable, RuntimeRounding))


def _read_code(rounding):
    """Reads a runtime rounding code held in a variable (names pass through).

    Reading it before entering a custom-gradient function keeps TensorFlow
    from treating the code variable as a differentiable input.
    """
    if isinstance(rounding, RuntimeRounding):
        return RuntimeRounding(_read_code(rounding.code), rounding.stochastic)
    if isinstance(rounding, tf.Variable):
        return tf.convert_to_tensor(rounding)
    return rounding


def _code_and_modes(rounding):
    """(int32 code tensor, the roundings it may select) of a runtime code."""
    if isinstance(rounding, RuntimeRounding):
        modes = ROUNDINGS if rounding.stochastic else _DETERMINISTIC_ROUNDINGS
        return tf.cast(rounding.code, tf.int32), modes
    return tf.cast(rounding, tf.int32), ROUNDINGS


def rounding_code(rounding):
    """The integer code (see `ROUNDING_CODES`) of a rounding name.

    Raises:
        ValueError: if `rounding` is not a key of `ROUNDING_CODES`.
    """
    return ROUNDING_CODES[_check_name(rounding, tuple(ROUNDING_CODES))]


# ---------------------------------------------------------------- random bits


def _u64(value):
    return tf.constant(value, tf.uint64)


def _mix64(z):
    """SplitMix64's output function: a bijection of uint64 with full avalanche."""
    shift_a, shift_b, shift_c = (_u64(s) for s in _MIX_SHIFTS)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, shift_a)) * _u64(_MIX_MULTIPLIERS[0])
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, shift_b)) * _u64(_MIX_MULTIPLIERS[1])
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, shift_c))


def _stream_key(seed):
    """The 64-bit SplitMix64 state of a stateless seed (int64 tensor [2]).

    Both words go through the mixing function, so seeds that differ in one
    bit of either word (or in consecutive steps) give unrelated keys, hence
    unrelated streams.
    """
    words = tf.bitcast(tf.cast(seed, tf.int64), tf.uint64)
    return _mix64(_mix64(words[0] + _u64(_GOLDEN_GAMMA)) + words[1])


def _random_bits(shape, seed, count, positions=None):
    """`count` (1 to 64) uniform random bits per element, a pure function of seed.

    Element i (row-major) gets the top `count` bits of output i + 1 of
    SplitMix64 started from `_stream_key(seed)`.

    Args:
        shape: the int32 shape tensor of the result.
        seed: int64 tensor of shape [2].
        count: how many bits.
        positions: None, or an int64 tensor of `shape` giving each element
            the index i to use instead of its own (see `round_rows_bf16`).

    Returns:
        uint64 tensor of `shape`, values in [0, 2**count).
    """
    if positions is None:
        size = tf.reduce_prod(tf.cast(shape, tf.int64))
        index = tf.range(size, dtype=tf.int64)
    else:
        index = tf.reshape(tf.cast(positions, tf.int64), [-1])
    index = tf.bitcast(index, tf.uint64)
    # key + (i + 1) * gamma, written as (i + offset) * gamma with the runtime
    # scalar offset = key / gamma + 1 (mod 2**64): no array-sized
    # subexpression is constant, so XLA cannot fold the counters into an
    # array constant of the tensor's size.
    offset = _stream_key(seed) * _u64(_GOLDEN_GAMMA_INVERSE) + _u64(1)
    state = (index + offset) * _u64(_GOLDEN_GAMMA)
    bits = tf.bitwise.right_shift(_mix64(state), _u64(64 - count))
    return tf.reshape(bits, shape)


# ------------------------------------------------------------- float32 kernel


def _round_float32_static(x, rounding, seed, positions=None):
    """Rounds a float32 tensor with the rounding named by a Python string."""
    bits = tf.bitcast(x, tf.int32)
    if rounding == "trunc":
        return _masked_to_bfloat16(bits, bits)
    return _masked_to_bfloat16(bits, bits + _increment(bits, rounding, seed, positions))


def _increment(bits, rounding, seed, positions=None):
    """What `rounding` adds to the float32 bits before their low 16 are cleared.

    RNE adds 0x7FFF plus the lowest kept bit (ties go to even), stochastic
    rounding 16 random bits (truncation adds nothing and never asks).
    """
    if rounding == "rne":
        return _RNE_BIAS + tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 16), 1)
    return tf.cast(_random_bits(tf.shape(bits), seed, 16, positions), tf.int32)


def _masked_to_bfloat16(bits, bits_to_mask):
    """The float32 of `bits_to_mask` with its low 16 bits cleared; NaNs kept NaN.

    A NaN of `bits` becomes the canonical quiet NaN with its sign kept (what
    ml_dtypes and AVX512_BF16 produce); without this guard adding a bias or
    masking can turn a NaN into an Inf.
    """
    rounded = tf.bitwise.bitwise_and(bits_to_mask, _HIGH_HALF_MASK)
    is_nan = tf.bitwise.bitwise_and(bits, _ABS_MASK) > _EXP_MASK
    nan_bits = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(bits, _SIGN_MASK), _QUIET_NAN)
    return tf.bitcast(tf.where(is_nan, nan_bits, rounded), tf.float32)


def _round_float32_bits(x, rounding, seed, modes=ROUNDINGS, positions=None):
    """Rounds a float32 tensor to bfloat16 values with integer bit ops.

    The path without XLA: a runtime code chooses its mode's kernel with
    `tf.switch_case`, so that only the chosen mode's ops run.

    Args:
        x: float32 tensor.
        rounding: one of `ROUNDINGS`, or an int32 scalar tensor holding a
            code of `ROUNDING_CODES` (the mode is chosen when the graph runs).
        seed: int64 tensor of shape [2], the seed of the random bits of
            stochastic rounding (unused by the other modes).
        modes: the roundings a runtime code may select: `ROUNDINGS` or
            `_DETERMINISTIC_ROUNDINGS`.
        positions: None, or the positions that choose stochastic
            rounding's random bits (see `_random_bits`).

    Returns:
        float32 tensor whose low 16 bits are zero (or a canonical NaN), or
        x unchanged for the runtime code of "fp32". A runtime code outside
        `modes` gives NaN everywhere, so that it cannot go unnoticed.
    """
    if not _is_runtime_code(rounding):
        return _round_float32_static(x, rounding, seed, positions)
    branches = [lambda: tf.identity(x)] + [
        (lambda name: lambda: _round_float32_static(x, name, seed, positions))(name)
        for name in modes
    ]
    return tf.switch_case(
        tf.cast(rounding, tf.int32), branches,
        default=lambda: tf.fill(tf.shape(x), np.float32(np.nan)),
    )


def _round_float32_bits_fused(x, rounding, seed, modes=ROUNDINGS, positions=None):
    """`_round_float32_bits` for XLA: a runtime code selects, it does not branch.

    Every mode's result is computed in the one fused loop and the code picks
    one per element with selects (the same values as `_round_float32_bits`,
    bit for bit). XLA compiles a `tf.switch_case` per rounding site as a
    conditional with its own computations, and in a model compiled with
    `jit_compile=True` those made compilation more than ten times slower
    (measured: an emulated DCN's first step 108 s against 8 s). The selects'
    extra arithmetic is hidden by the memory traffic, except stochastic
    rounding's random bits: hence `modes`.
    """
    if not _is_runtime_code(rounding):
        return _round_float32_static(x, rounding, seed, positions)
    code = tf.cast(rounding, tf.int32)
    bits = tf.bitcast(x, tf.int32)
    increment = tf.zeros_like(bits)  # truncation's
    for name in ("rne", "stochastic"):
        if name in modes:
            increment = tf.where(code == ROUNDING_CODES[name],
                                 _increment(bits, name, seed, positions), increment)
    result = _masked_to_bfloat16(bits, bits + increment)
    in_range = (code >= 0) & (code <= len(modes))
    return tf.where(code == ROUNDING_CODES["fp32"], x,
                    tf.where(in_range, result, np.float32(np.nan)))


_round_float32_bits_xla = tf.function(
    _round_float32_bits_fused, jit_compile=True, autograph=False, reduce_retracing=True
)


def _round_float32(x, rounding, seed, positions=None):
    modes = ROUNDINGS
    if _is_runtime_code(rounding):
        rounding, modes = _code_and_modes(rounding)
    if _is_runtime_code(rounding) or rounding == "stochastic":
        seed = _seed_for_call(seed)
    else:
        seed = tf.zeros([2], tf.int64)
    kernel = _round_float32_bits_xla if _state["use_xla"] else _round_float32_bits
    rounded = kernel(x, rounding, seed, modes, positions)
    if not tf.executing_eagerly():
        rounded.set_shape(x.shape)  # the traced kernel may relax the shape
    return rounded


# ---------------------------------------------------------------- seeds


def _seed_for_call(seed):
    """A stateless seed (int64 tensor [2]) for one rounding call.

    An explicit seed is used as it is; with None a fresh seed is drawn from
    TensorFlow's global random state, so results follow `tf.random.set_seed`
    and every call (also every call inside one traced function) differs.
    Under `jit_compile=True` TensorFlow ignores the global seed for this
    draw: calls still differ, but are not reproducible.
    """
    if seed is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    return _as_stateless_seed(seed)


def _check_seed(seed):
    """Validates a user seed (see `round_bf16`); a variable is read, the rest kept.

    Raises:
        TypeError: for a bool, float or non-integer seed.
        ValueError: for an int outside int64 or a tensor not of shape [2].
    """
    if seed is None or _is_python_int(seed):
        _check_int64(seed, "seed")
        return seed
    if isinstance(seed, (bool, np.bool_, float, np.floating)):
        raise TypeError(f"seed must be None, an int or an integer tensor of shape [2]; "
                        f"got {type(seed).__name__} {seed!r}.")
    if isinstance(seed, (list, tuple)):
        if len(seed) != 2 or not all(_is_python_int(s) for s in seed):
            raise TypeError(f"seed given as a list must hold two ints; got {seed!r}.")
        for word in seed:
            _check_int64(word, "seed")
        return seed
    dtype = getattr(seed, "dtype", None)
    if dtype is None:
        raise TypeError(f"seed must be None, an int or an integer tensor of shape [2]; "
                        f"got {type(seed).__name__} {seed!r}.")
    dtype = tf.as_dtype(dtype)
    if not dtype.is_integer:
        raise TypeError(f"seed must be an integer tensor of shape [2]; got dtype {dtype.name}.")
    shape = tf.TensorShape(seed.shape)
    if shape != tf.TensorShape([2]):
        raise ValueError(f"seed must be an integer tensor of shape [2]; got shape {shape}.")
    if isinstance(seed, tf.Variable):
        # Read now: a variable read inside the custom-gradient function would
        # be taken for a differentiable input.
        return tf.convert_to_tensor(seed)
    return seed


def _is_python_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_int64(value, name):
    if value is not None and not _INT64_MIN <= int(value) <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64 ([-2**63, 2**63 - 1]); got {value}.")


def _as_stateless_seed(seed):
    """Converts a checked seed (int, two ints or an integer tensor [2]) to int64 [2]."""
    if _is_python_int(seed):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    if isinstance(seed, (list, tuple)):
        return tf.constant([int(s) for s in seed], dtype=tf.int64)
    return tf.cast(seed, tf.int64)


def _derive_seed(seed, stream):
    """A seed for a second random stream, unrelated to `seed` and to its steps.

    The first word is xor-ed with a multiple of SplitMix64's increment, so the
    result cannot coincide with the seeds [base + index, step] that callers
    build from small integers (adding 1 to the second word would: it is the
    next step's seed). None stays None.
    """
    if seed is None:
        return None
    seed = _as_stateless_seed(seed)
    offset = (stream * _GOLDEN_GAMMA) % 2**64
    offset = offset - 2**64 if offset > _INT64_MAX else offset
    return tf.bitwise.bitwise_xor(seed, tf.constant([offset, 0], tf.int64))


# ---------------------------------------------------------------- float64


# float64 bit-pattern constants.
_F64_ABS_MASK = 0x7FFFFFFFFFFFFFFF
_F64_INF = 0x7FF0000000000000
_F64_QUIET_NAN = 0x7FF8000000000000
_F64_MANTISSA_BITS = 52
_BF16_MIN_EXPONENT = -126  # smallest normal bfloat16 exponent
_BF16_DROPPED_BITS = 45  # 52 - 7 mantissa bits dropped for a normal result
_BF16_MAX_FINITE = float.fromhex("0x1.fep127")


def _round_float64(x, rounding, seed, positions=None):
    """Rounds a float64 tensor to bfloat16 values in one correct rounding.

    Everything happens on the integer bit pattern: TensorFlow's CPU casts
    between float64 and float32 flush float32 subnormals to zero, so no
    float32 intermediate is used. Stochastic rounding compares the top 32
    dropped bits with 32 bits of the same generator as the float32 path.
    This path is not XLA-compiled on its own (float64 models are rare).
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
        threshold = tf.cast(_random_bits(tf.shape(x), _seed_for_call(seed), 32, positions),
                            tf.int64)
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


# ---------------------------------------------------------------- dispatch


def _round_raw(x, rounding, seed, positions=None):
    """Rounding without gradient; `x` is a floating tensor, `rounding` valid.

    `positions` (None: each element's own index) chooses stochastic
    rounding's random bits, see `_random_bits`.
    """
    dtype = x.dtype
    if dtype == tf.bfloat16:
        return x
    if dtype == tf.float32:
        return _round_float32(x, rounding, seed, positions)
    if dtype == tf.float16:
        # float16 -> float32 is exact, and so is the way back for every
        # bfloat16 value inside float16's range (larger ones become +-Inf).
        return tf.cast(_round_float32(tf.cast(x, tf.float32), rounding, seed, positions), dtype)
    if dtype == tf.float64:
        if _is_runtime_code(rounding):
            code, modes = _code_and_modes(rounding)
            return tf.switch_case(
                code,
                [lambda: x] + [
                    (lambda r: lambda: _round_float64(x, r, seed, positions))(r) for r in modes
                ],
                default=lambda: tf.fill(tf.shape(x), np.float64(np.nan)),
            )
        return _round_float64(x, rounding, seed, positions)
    raise TypeError(_dtype_error(dtype))


def _dtype_error(dtype):
    return (
        f"tfbf16 rounds floating-point tensors only; got dtype {dtype.name}. "
        "Cast integer or boolean tensors to a float dtype first, or leave "
        "them unrounded (ids and masks need no rounding)."
    )


def _to_float_tensor(x, what="round_bf16"):
    """Converts x to a tensor and checks that its dtype is floating."""
    if isinstance(x, tf.IndexedSlices):
        raise TypeError(
            f"{what} takes dense tensors; round an IndexedSlices through "
            "its .values (or with round_gradient)."
        )
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(_dtype_error(x.dtype))
    return x


def _map_values(x, fn):
    """Applies `fn` to a dense tensor, or to the values of a ragged or sparse
    tensor (whose structure is kept: their implicit zeros are exact in BF16)."""
    if isinstance(x, tf.RaggedTensor):
        return x.with_flat_values(fn(x.flat_values))
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, fn(x.values), x.dense_shape)
    return fn(x)


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
    - "stochastic": the result is one of the two bfloat16 neighbours of x;
      it is the one farther from zero with probability (distance to the
      neighbour nearer zero) / (gap between them), to 16 bits of resolution,
      so that E[round_bf16(x)] = x. Inf and NaN are kept as in "trunc"; a
      value above the largest bfloat16 may round to Inf.

    float16 input is rounded as its exact float32 value would be; float64
    input is rounded once, correctly (no double rounding through float32);
    bfloat16 input is returned unchanged. A `tf.RaggedTensor` or
    `tf.SparseTensor` is rounded in its values and keeps its structure.

    Args:
        x: a floating-point tensor (or anything `tf.convert_to_tensor`
            accepts), or a ragged or sparse tensor of floats.
        rounding: one of `tfbf16.ROUNDINGS`, or an integer scalar tensor
            (e.g. a variable) holding a code of `ROUNDING_CODES`, which lets
            a traced function switch rounding without retracing.
        seed: only for "stochastic". None draws a fresh seed from
            TensorFlow's global random state at every call (reproducible
            under `tf.random.set_seed` in eager mode and `tf.function`; every
            call, also inside one traced function, gets fresh bits; under
            `jit_compile=True` calls still differ but TensorFlow ignores the
            global seed). A Python int (in int64), two ints or an integer
            tensor of shape [2] makes the result a pure function of `x`,
            `seed` and the position of each element.

    Returns:
        A tensor of x's dtype and shape (ragged/sparse in, ragged/sparse out).

    Raises:
        TypeError: if x is not floating point, or seed is not an integer.
        ValueError: if `rounding` is not one of `tfbf16.ROUNDINGS`, or seed
            is outside int64 or not of shape [2].

    Example:

    >>> tfbf16.round_bf16(tf.constant([1.00390625, 3.14159]))
    <tf.Tensor: shape=(2,), dtype=float32, numpy=array([1.       , 3.140625], dtype=float32)>
    """
    rounding = _read_code(check_rounding(rounding))
    seed = _check_seed(seed)
    return _map_values(x, lambda values: _straight_through_round(
        _to_float_tensor(values), rounding, seed))


def round_rows_bf16(rows_values, rows, rounding, *, seed=None):
    """Rounds rows of a tensor exactly as rounding the whole tensor would.

    For RNE and truncation this is `round_bf16(rows_values, rounding)`.
    Stochastic rounding draws each element's random bits by its position
    in the whole tensor (row * row size + offset in the row), not in
    `rows_values`, so that with the same seed the result is bit for bit
    the whole tensor's rounding gathered at `rows`. `BF16Weights` rounds the
    rows a sparse update changed this way.

    Args:
        rows_values: floating tensor [n, ...]: rows of a tensor.
        rows: integer tensor [n], their row indices in that tensor.
        rounding: one of `tfbf16.ROUNDINGS`.
        seed: as in `round_bf16`.

    Returns:
        The rounded rows (no gradient is defined).

    Raises:
        ValueError, TypeError: as `round_bf16`.

    Example:

    >>> table = tf.random.normal([100, 4])
    >>> rows = tf.constant([7, 3])
    >>> np.array_equal(
    ...     tfbf16.rounding.round_rows_bf16(tf.gather(table, rows), rows, "stochastic", seed=1),
    ...     tf.gather(tfbf16.round_bf16(table, "stochastic", seed=1), rows))
    True
    """
    rounding = _check_name(rounding, ROUNDINGS)
    seed = _check_seed(seed)
    values = _to_float_tensor(rows_values, "round_rows_bf16")
    positions = None
    if rounding == "stochastic":
        row_size = tf.reduce_prod(tf.shape(values, out_type=tf.int64)[1:])
        positions = tf.reshape(tf.cast(rows, tf.int64)[:, tf.newaxis] * row_size
                               + tf.range(row_size, dtype=tf.int64)[tf.newaxis, :],
                               tf.shape(values))
    return _round_raw(values, rounding, seed, positions)


def _straight_through_round(x, rounding, seed):
    @tf.custom_gradient
    def _round(value):
        def grad(upstream):
            return upstream

        return _round_raw(value, rounding, seed), grad

    return _round(x)


def round_gradient(gradient, rounding, *, seed=None):
    """Rounds a gradient, dense, `tf.IndexedSlices` or ragged/sparse (kept so).

    Args:
        gradient: a tensor, an `IndexedSlices`, a ragged or sparse tensor,
            or None.
        rounding: one of `tfbf16.ROUNDINGS` (or a runtime code tensor, as in
            `round_bf16`), or None to return the gradient unchanged.
        seed: as in `round_bf16`.

    Returns:
        The rounded gradient, of the same kind as `gradient`.

    Raises:
        TypeError: if the gradient is not floating point, or seed is not an
            integer.
        ValueError: if `rounding` is an unknown name, or seed is invalid.
    """
    if rounding is not None:
        rounding = _read_code(check_rounding(rounding))
    seed = _check_seed(seed)
    if gradient is None or rounding is None:
        return gradient
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            _round_raw(_to_float_tensor(gradient.values, "round_gradient"), rounding, seed),
            gradient.indices,
            gradient.dense_shape,
        )
    return _map_values(gradient, lambda values: _round_raw(
        _to_float_tensor(values, "round_gradient"), rounding, seed))


def quantize(x, rounding="rne", grad_rounding="rne", *, seed=None):
    """Rounds `x` to bfloat16 values and rounds its gradient on the way back.

    This is the emulation op: the forward pass is `round_bf16(x, rounding)`;
    the backward pass rounds the incoming gradient with `grad_rounding`.
    Gradients that arrive as `tf.IndexedSlices` (from embedding lookups) are
    rounded in their values and stay sparse. A ragged or sparse `x` is
    quantized in its values.

    Args:
        x: a floating-point tensor (or a ragged or sparse one).
        rounding: forward rounding, one of `tfbf16.ROUNDINGS` (or a
            runtime code tensor, as in `round_bf16`).
        grad_rounding: backward rounding, one of `tfbf16.ROUNDINGS` (or a
            runtime code tensor), or None to pass the gradient through
            unchanged.
        seed: as in `round_bf16`. With an explicit seed, the backward pass
            uses a different seed derived from it (unrelated to the seeds of
            other steps).

    Returns:
        A tensor of x's dtype and shape.

    Raises:
        TypeError: if x is not floating point, or seed is not an integer.
        ValueError: if a rounding name is unknown, or seed is invalid.

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
    seed = _check_seed(seed)
    backward_seed = _derive_seed(seed, 1)

    def quantize_dense(values):
        @tf.custom_gradient
        def _quantize(value):
            def grad(upstream):
                return round_gradient(upstream, grad_rounding, seed=backward_seed)

            return _round_raw(value, rounding, seed), grad

        return _quantize(_to_float_tensor(values, "quantize"))

    return _map_values(x, quantize_dense)
