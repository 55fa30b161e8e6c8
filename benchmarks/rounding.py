"""Speed of tfbf16's rounding modes relative to a copy and to tf.cast.

Prints, for a 16M-element float32 tensor, the time of each rounding mode
relative to a same-size elementwise FP32 op (`x * 1.0`) and relative to a
`tf.cast` bfloat16 round trip, all measured side by side in one run
(interleaved repetitions, median of each), with and without XLA on the
outer `tf.function`. "inner XLA" is tfbf16's default: the rounding kernel is
its own XLA cluster even when the surrounding graph is not compiled.

Usage: python -m benchmarks.rounding [--size N] [--repeats R]
"""

import statistics
import time

from absl import app, flags

import tensorflow as tf

import tfbf16
from tfbf16 import rounding as rounding_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 1 << 24, "Number of float32 elements.")
flags.DEFINE_integer("repeats", 15, "Timed repetitions of each candidate.")


def _candidates(jit):
    def copy(x):
        return x * 1.0

    def cast_round_trip(x):
        return tf.cast(tf.cast(x, tf.bfloat16), tf.float32)

    made = {"copy (x * 1.0)": copy, "tf.cast round trip": cast_round_trip}
    for mode in tfbf16.ROUNDINGS:
        made[mode] = (lambda m: lambda x: tfbf16.round_bf16(x, m))(mode)
    return {name: tf.function(fn, jit_compile=jit) for name, fn in made.items()}


def _time(fn, x):
    start = time.perf_counter()
    fn(x).numpy()  # .numpy() waits for the result; the copy out is included for all
    return time.perf_counter() - start


def measure(size, repeats, jit, inner_xla):
    """Median seconds per candidate, interleaved so that noise hits all alike."""
    rounding_lib.set_xla_rounding(inner_xla)
    x = tf.random.normal([size], dtype=tf.float32)
    fns = _candidates(jit)
    for fn in fns.values():  # trace and compile
        _time(fn, x)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn, x))
    rounding_lib.set_xla_rounding(True)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
    del argv
    print(f"{FLAGS.size:,} float32 elements, median of {FLAGS.repeats} interleaved runs")
    configs = [
        ("tf.function, inner XLA (wrap's default path)", False, True),
        ("tf.function, no XLA anywhere", False, False),
        ("tf.function(jit_compile=True)", True, True),
    ]
    for title, jit, inner_xla in configs:
        med = measure(FLAGS.size, FLAGS.repeats, jit, inner_xla)
        copy, cast = med["copy (x * 1.0)"], med["tf.cast round trip"]
        print(f"\n{title}")
        print(f"  {'op':<22}{'ms':>9}{'/copy':>9}{'/cast':>9}")
        for name, seconds in med.items():
            print(f"  {name:<22}{seconds * 1e3:>9.2f}{seconds / copy:>9.2f}{seconds / cast:>9.2f}")


if __name__ == "__main__":
    app.run(main)
