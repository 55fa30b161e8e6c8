"""Speed of tfbf16's rounding modes relative to a copy of the same tensor.

Prints two tables, all candidates measured side by side in one process
(interleaved rounds, see benchmarks/timing.py; medians of per-round ratios):

1. A --size float32 tensor (default 16M elements), in three settings (rows):
   "default path": a `tf.function` without XLA in which tfbf16's float32
   kernel is its own XLA cluster (what a wrapped Keras model runs);
   "no XLA anywhere": `set_xla_rounding(False)`, every bit op a TensorFlow
   kernel; "inside jit_compile": the whole function compiled by XLA.
   Columns: the copy's milliseconds, then each op's time as a ratio to the
   copy of the same row. The copy is `x * v` with `v` a variable holding
   1.0: one pass that reads x and writes a new tensor, as a rounding does
   (`x * 1.0` is no copy: TensorFlow and XLA simplify it to `x` and return
   the input buffer itself). Then the tf.cast round trip through bfloat16;
   rne, trunc, stochastic (seed=None: a fresh seed drawn per call); and
   "rne (code)", rne selected by a runtime rounding code (an int32
   variable, as `tfbf16.wrap`'s layers do).
2. Layer-sized tensors (--layer_sizes) in the default path: the cost per op
   when one traced function rounds --ops_per_call distinct tensors, all kept
   alive (no op can reuse its input's buffer), launch overhead of the XLA
   kernel included: microseconds of the copy and the ratios of each rounding.

A call is timed until it returns its result tensor; eager execution on CPU
is synchronous, so the work is done by then. The result is not fetched with
`.numpy()`, which would add a NumPy copy of the whole tensor to every
candidate.

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
                   "Calls per candidate per round are chosen to take about this long.")
flags.DEFINE_integer("ops_per_call", 32,
                     "Layer-size table: tensors rounded per traced call.", lower_bound=1)

COLUMNS = ("copy", "tf.cast round trip", "rne", "trunc", "stochastic", "rne (code)")
ROWS = (
    ("default path", dict(jit=False, inner_xla=True)),
    ("no XLA anywhere", dict(jit=False, inner_xla=False)),
    ("inside jit_compile", dict(jit=True, inner_xla=True)),
)


def _ops(code, one):
    """The timed ops, by column name (plain functions of x)."""
    ops = {
        "copy": lambda x: x * one,
        "tf.cast round trip": lambda x: tf.cast(tf.cast(x, tf.bfloat16), tf.float32),
    }
    for mode in tfbf16.ROUNDINGS:
        ops[mode] = (lambda m: lambda x: tfbf16.round_bf16(x, m))(mode)
    ops["rne (code)"] = lambda x: tfbf16.round_bf16(x, code)
    return ops


def traced_candidates(x, variables, *, jit, inner_xla, columns=COLUMNS, prefix=""):
    """Zero-argument callables, one per column, traced for one setting.

    `set_xla_rounding` is read when a function is traced, so every function
    is traced here (and the setting restored) before any is timed.
    """
    rounding_lib.set_xla_rounding(inner_xla)
    try:
        made = {}
        for name in columns:
            fn = tf.function(_ops(*variables)[name], jit_compile=jit, autograph=False)
            fn(x)  # trace and compile now, under this setting
            made[prefix + name] = (lambda f: lambda: f(x))(fn)
        return made
    finally:
        rounding_lib.set_xla_rounding(True)


def _variables():
    """The runtime rounding code (rne) and the copy's factor 1.0."""
    return (tf.Variable(rounding_lib.rounding_code("rne"), dtype=tf.int32),
            tf.Variable(1.0, dtype=tf.float32))


def _table(results, rows, columns, *, cpu, row_format, scale=1e3, unit="copy ms"):
    """Rows of: the copy's time (seconds times `scale`), then each column's
    median ratio to the copy."""
    kind = "process CPU time" if cpu else "wall time"
    lines = [f"  {kind:<22}{unit:>12}" + "".join(f"{c:>20}" for c in columns[1:])]
    for row in rows:
        copy = results[f"{row}/copy"]
        value = (copy.cpu_median if cpu else copy.median) * scale
        cells = "".join(f"{results[f'{row}/{c}'].ratio_to(copy, cpu=cpu):>19.2f}x"
                        for c in columns[1:])
        lines.append(f"    {row_format(row):<20}{value:>12.3f}{cells}")
    return lines


def large_tensor_table(size, rounds, round_seconds):
    x = tf.random.normal([size], dtype=tf.float32, seed=1)
    candidates = {}
    for row, setting in ROWS:
        candidates.update(traced_candidates(x, _variables(), prefix=f"{row}/", **setting))
    calls = {name: timing.calls_for(fn, round_seconds) for name, fn in candidates.items()}
    results = timing.interleave(candidates, rounds=rounds, calls=calls)
    lines = [f"{size:,} float32 elements; ratio to the copy of the same row "
             f"(median of {rounds} interleaved rounds)"]
    rows = [row for row, _ in ROWS]
    for cpu in (False, True):
        lines += _table(results, rows, COLUMNS, cpu=cpu, row_format=str)
    return "\n".join(lines)


def layer_size_table(sizes, rounds, round_seconds, ops_per_call):
    """Per-op cost of rounding layer-sized tensors inside one traced function.

    Each call rounds `ops_per_call` distinct tensors that stay alive (as a
    layer's activations do for the backward pass, so that no op can reuse
    its input's buffer); the launch overhead of tfbf16's XLA kernel is
    included, Python's call overhead is shared by all ops of a call.
    """
    columns = ("copy", "rne", "trunc", "stochastic", "rne (code)")
    variables = _variables()
    candidates, calls = {}, {}
    for size in sizes:
        xs = [tf.random.normal([size], dtype=tf.float32, seed=i) for i in range(ops_per_call)]
        for name in columns:
            op = _ops(*variables)[name]
            fn = tf.function((lambda o: lambda ts: [o(t) for t in ts])(op), autograph=False)
            fn(xs)  # trace and compile
            candidate = (lambda f: lambda: f(xs))(fn)
            candidates[f"{size}/{name}"] = candidate
            calls[f"{size}/{name}"] = timing.calls_for(candidate, round_seconds)
    results = timing.interleave(candidates, rounds=rounds, calls=calls)
    lines = [f"Layer-sized tensors, default path: {ops_per_call} ops per traced call "
             f"(launch overhead included); copy in microseconds per op, ratios to the "
             f"copy (median of {rounds} interleaved rounds)"]
    for cpu in (False, True):
        lines += _table(results, sizes, columns, cpu=cpu, scale=1e6 / ops_per_call,
                        unit="copy us/op", row_format=lambda size: f"{size:,} elements")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    tf.get_logger().setLevel("ERROR")  # retracing notes: each candidate is traced once
    print(f"load average at start: {timing.machine_load()}")
    print(large_tensor_table(FLAGS.size, FLAGS.rounds, FLAGS.round_seconds))
    sizes = [int(s) for s in FLAGS.layer_sizes]
    if sizes:
        print()
        print(layer_size_table(sizes, FLAGS.rounds, FLAGS.round_seconds, FLAGS.ops_per_call))
    print(f"\nload average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
