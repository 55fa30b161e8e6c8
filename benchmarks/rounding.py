"""Speed of tfbf16's rounding modes relative to a copy of the same tensor.

Prints two tables, all candidates measured side by side in one process
(interleaved rounds, see benchmarks/timing.py; median of per-round ratios):

1. A --size float32 tensor (default 16M elements), in three settings (rows):
   "default path": a `tf.function` without XLA in which tfbf16's float32
   kernel is its own XLA cluster (what a wrapped Keras model runs);
   "no XLA anywhere": `set_xla_rounding(False)`, every bit op a TensorFlow
   kernel; "inside jit_compile": the whole function compiled by XLA.
   Columns: the copy's milliseconds, then each op's time as a ratio to the
   copy of the same row: "copy" is `x * 1.0` (TensorFlow turns it into an
   Identity, so the copy is a memcpy into a new buffer); "-x" is a
   one-pass elementwise TensorFlow/XLA kernel for comparison; the tf.cast
   round trip through bfloat16; rne, trunc, stochastic (seed=None, a fresh
   seed per call); "rne (code)" rounds with a runtime rounding code (an
   int32 variable, as `tfbf16.wrap`'s layers do).
2. Layer-sized tensors (--layer_sizes) in the default path, call overhead
   included: milliseconds of the copy and ratios of each rounding mode.

Every candidate's time includes fetching the result (`.numpy()`, which on
CPU shares the buffer), so the time of the output allocation counts for all.

Usage: python -m benchmarks.rounding [--size N] [--rounds R]
    [--layer_sizes 65536,262144,1048576]
"""

from absl import app, flags

import tensorflow as tf

import tfbf16
from benchmarks import timing
from tfbf16 import rounding as rounding_lib
from tfbf16.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 1 << 24, "Elements of the large float32 tensor.", lower_bound=1)
flags.DEFINE_integer("rounds", 15, "Interleaved timed rounds.", lower_bound=1)
flags.DEFINE_list("layer_sizes", ["65536", "262144", "1048576"],
                  "Elements of the layer-sized tensors (empty: skip that table).")
flags.DEFINE_float("round_seconds", 0.05,
                   "Layer-size table: calls per round are chosen to take about this long.")

COLUMNS = ("copy", "-x", "tf.cast round trip", "rne", "trunc", "stochastic", "rne (code)")
ROWS = (
    ("default path", dict(jit=False, inner_xla=True)),
    ("no XLA anywhere", dict(jit=False, inner_xla=False)),
    ("inside jit_compile", dict(jit=True, inner_xla=True)),
)


def _ops(code):
    """The timed ops, by column name (plain functions of x)."""
    ops = {
        "copy": lambda x: x * 1.0,
        "-x": lambda x: -x,
        "tf.cast round trip": lambda x: tf.cast(tf.cast(x, tf.bfloat16), tf.float32),
    }
    for mode in tfbf16.ROUNDINGS:
        ops[mode] = (lambda m: lambda x: tfbf16.round_bf16(x, m))(mode)
    ops["rne (code)"] = lambda x: tfbf16.round_bf16(x, code)
    return ops


def traced_candidates(x, code, *, jit, inner_xla, columns=COLUMNS, prefix=""):
    """Zero-argument callables, one per column, traced for one setting.

    `set_xla_rounding` is read when a function is traced, so every function
    is traced here (and the setting restored) before any is timed.
    """
    rounding_lib.set_xla_rounding(inner_xla)
    try:
        made = {}
        for name in columns:
            fn = tf.function(_ops(code)[name], jit_compile=jit, autograph=False)
            fn(x).numpy()  # trace and compile now, under this setting
            made[prefix + name] = (lambda f: lambda: f(x).numpy())(fn)
        return made
    finally:
        rounding_lib.set_xla_rounding(True)


def large_tensor_table(size, rounds):
    x = tf.random.normal([size], dtype=tf.float32, seed=1)
    code = tf.Variable(rounding_lib.rounding_code("rne"), dtype=tf.int32)
    candidates = {}
    for row, setting in ROWS:
        candidates.update(traced_candidates(x, code, prefix=f"{row}/", **setting))
    results = timing.interleave(candidates, rounds=rounds)
    lines = [f"{size:,} float32 elements; ratio to the copy of the same row "
             f"(median of {rounds} interleaved rounds)",
             f"  {'':<20}{'copy ms':>9}" + "".join(f"{c:>20}" for c in COLUMNS[1:])]
    for row, _ in ROWS:
        copy = results[f"{row}/copy"]
        cells = "".join(f"{results[f'{row}/{c}'].ratio_to(copy):>19.2f}x" for c in COLUMNS[1:])
        lines.append(f"  {row:<20}{copy.median_ms:>9.2f}{cells}")
    return "\n".join(lines)


def layer_size_table(sizes, rounds, round_seconds):
    columns = ("copy", "rne", "trunc", "stochastic", "rne (code)")
    code = tf.Variable(rounding_lib.rounding_code("rne"), dtype=tf.int32)
    candidates, calls = {}, {}
    for size in sizes:
        x = tf.random.normal([size], dtype=tf.float32, seed=2)
        made = traced_candidates(x, code, jit=False, inner_xla=True, columns=columns,
                                 prefix=f"{size}/")
        candidates.update(made)
        calls.update({name: timing.calls_for(fn, round_seconds) for name, fn in made.items()})
    results = timing.interleave(candidates, rounds=rounds, calls=calls)
    lines = [f"Layer-sized tensors, default path (call overhead included); ratio to the "
             f"copy (median of {rounds} interleaved rounds)",
             f"  {'elements':>10}{'copy ms':>10}" + "".join(f"{c:>14}" for c in columns[1:])]
    for size in sizes:
        copy = results[f"{size}/copy"]
        cells = "".join(f"{results[f'{size}/{c}'].ratio_to(copy):>13.2f}x" for c in columns[1:])
        lines.append(f"  {size:>10,}{copy.median_ms:>10.3f}{cells}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    print(f"load average at start: {timing.machine_load()}")
    print(large_tensor_table(FLAGS.size, FLAGS.rounds))
    sizes = [int(s) for s in FLAGS.layer_sizes]
    if sizes:
        print()
        print(layer_size_table(sizes, FLAGS.rounds, FLAGS.round_seconds))
    print(f"\nload average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
