"""Checks tfbf16's "rne" and "trunc" against references on all 2**32 float32 bit patterns.

"rne" is compared with ml_dtypes (`x.astype(ml_dtypes.bfloat16)`), "trunc"
with a NumPy bit-mask reference (drop the low 16 bits; NaN -> quiet NaN of
the same sign). Runs the patterns in chunks through a `tf.function`; takes a
few minutes per mode on 2 cores. Prints the mismatch count per mode and the
first mismatching patterns, and exits non-zero if any differ.

Usage: python -m benchmarks.exhaustive_sweep [--modes rne,trunc] [--chunk_bits 24]
"""

import sys
import time

from absl import app, flags, logging
import ml_dtypes
import numpy as np
import tensorflow as tf

import tfbf16

FLAGS = flags.FLAGS
flags.DEFINE_list("modes", ["rne", "trunc"], "Rounding modes to sweep.")
flags.DEFINE_integer("chunk_bits", 24, "log2 of the bit patterns per chunk.")
flags.DEFINE_bool("jit_compile", False, "Compile the outer function with XLA too.")


def reference(bits, mode):
    if mode == "rne":
        with np.errstate(invalid="ignore"):
            return bits.view(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, (bits & 0x80000000) | 0x7FC00000, bits & 0xFFFF0000).astype(np.uint32)


def sweep(mode, chunk_bits, jit_compile):
    fn = tf.function(lambda x: tfbf16.round_bf16(x, mode), jit_compile=jit_compile)
    chunk = 1 << chunk_bits
    mismatches, examples = 0, []
    for start in range(0, 1 << 32, chunk):
        bits = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32)
        got = fn(tf.constant(bits.view(np.float32))).numpy().view(np.uint32)
        bad = np.nonzero(got != reference(bits, mode))[0]
        mismatches += bad.size
        examples.extend((int(bits[i]), int(got[i])) for i in bad[: max(0, 5 - len(examples))])
        if (start // chunk) % 32 == 31:
            logging.info("%s: %.0f%% swept, %d mismatches", mode, 100 * (start + chunk) / 2**32, mismatches)
    return mismatches, examples


def main(argv):
    del argv
    failed = False
    for mode in FLAGS.modes:
        started = time.time()
        mismatches, examples = sweep(mode, FLAGS.chunk_bits, FLAGS.jit_compile)
        print(f"{mode}: {mismatches} mismatches over 2**32 patterns "
              f"({time.time() - started:.0f} s, jit_compile={FLAGS.jit_compile})")
        for bits, got in examples:
            print(f"  input 0x{bits:08X} -> got 0x{got:08X}")
        failed |= mismatches > 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
