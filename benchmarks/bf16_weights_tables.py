r"""Training-step time of BF16 weights on big embedding tables, against FP32.

`tfbf16.optimizers.BF16Weights` rounds only the rows that a sparse update of
a lazy optimizer (here Adagrad) changed. This benchmark times one training
step of a DCN-like model with 26 embedding tables of `--rows` rows (13 dense
features, 2 full-rank cross layers, a 256-128 deep tower, batch `--batch`)
with:

- "fp32": the Adagrad optimizer alone (FP32 weights);
- "<rounding>, rows": `BF16Weights(Adagrad, rounding)`, rounding only the
  updated rows (the default);
- "<rounding>, whole": the same with `sparse_updates=False`, rounding every
  row of every table after every step (the path before row rounding).

For each update rounding they run side by side in interleaved rounds
(`benchmarks.timing`), sharing one model, and the table gives the median
milliseconds per step and the median over rounds of the ratio to FP32 in
the same round (wall clock and process CPU time). Memory: with the default
26 x 1M x 16 tables the model holds 1.7 GB of weights and every Adagrad
(and every set of Kahan buffers) as much again, so one rounding with both
paths needs 6.6 GB (kahan: 10 GB); on a shared machine time one rounding
and one path per run (the process does not give all memory back between
roundings).

Usage:

    python -m benchmarks.bf16_weights_tables --roundings=kahan --paths=rows
    python -m benchmarks.bf16_weights_tables --roundings=rne,kahan --rows=100000
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from tfbf16.optimizers import UPDATE_ROUNDINGS, BF16Weights  # noqa: E402
from tfbf16.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 1_000_000, "Rows of each of the 26 embedding tables.", lower_bound=1)
flags.DEFINE_integer("dim", 16, "Embedding dimension.", lower_bound=1)
flags.DEFINE_integer("batch", 512, "Batch size.", lower_bound=1)
flags.DEFINE_list("roundings", list(UPDATE_ROUNDINGS), "Update roundings to time.")
flags.DEFINE_list("paths", ["rows", "whole"],
                  "Which BF16 paths to time beside FP32: rows (only the updated rows are "
                  "rounded, the default) and whole (sparse_updates=False).")
flags.DEFINE_enum("keras", "tf_keras", ["tf_keras", "keras3"], "Which Keras builds the model.")
flags.DEFINE_integer("rounds", 7, "Interleaved timed rounds.", lower_bound=1)
flags.DEFINE_float("round_seconds", 1.0, "Target seconds of one candidate in one round.")

NUM_DENSE, NUM_TABLES = 13, 26


def _keras():
    if FLAGS.keras == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def dcn_model(K):
    """A DCN-V2-like logit model: dense features and 26 embedded ids."""
    K.utils.set_random_seed(0)
    dense = K.Input((NUM_DENSE,), name="dense")
    ids = [K.Input((1,), dtype="int32", name=f"c{i}") for i in range(NUM_TABLES)]
    embedded = [K.layers.Flatten()(K.layers.Embedding(FLAGS.rows, FLAGS.dim,
                                                      name=f"table{i}")(c))
                for i, c in enumerate(ids)]
    x0 = K.layers.Concatenate()([dense] + embedded)
    x = x0
    for i in range(2):  # x_{l+1} = x0 * (W x_l + b) + x_l
        x = K.layers.Add()([K.layers.Multiply()([x0, K.layers.Dense(x0.shape[-1],
                                                                     name=f"cross{i}")(x)]), x])
    for i, units in enumerate((256, 128)):
        x = K.layers.Dense(units, activation="relu", name=f"deep{i}")(x)
    return K.Model([dense] + ids, K.layers.Dense(1, name="logit")(x))


def batch_data():
    rng = np.random.default_rng(0)
    x = [tf.constant(np.log1p(rng.exponential(3.0, (FLAGS.batch, NUM_DENSE))), tf.float32)]
    x += [tf.constant(rng.integers(0, FLAGS.rows, (FLAGS.batch, 1)), tf.int32)
          for _ in range(NUM_TABLES)]
    return tuple(x), tf.constant(rng.integers(0, 2, (FLAGS.batch, 1)), tf.float32)


def train_step(model, optimizer, features, labels):
    """A compiled function running one training step; returns its loss."""
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda: step().numpy()


def measure(K, model, data, rounding):
    """Interleaved timing of FP32, row-wise and whole-variable rounding."""
    candidates = {"fp32": train_step(model, K.optimizers.Adagrad(0.01), *data)}
    for path in FLAGS.paths:
        bf16 = BF16Weights(K.optimizers.Adagrad(0.01), rounding, seed=0,
                           sparse_updates=path == "rows")
        candidates[f"{rounding}, {path}"] = train_step(model, bf16, *data)
        if bf16.rounds_rows(model.get_layer("table0").embeddings) != (path == "rows"):
            raise AssertionError(f"{rounding}: the {path} path was not taken")
    for fn in candidates.values():
        fn()  # trace and compile
    calls = {name: timing.calls_for(fn, FLAGS.round_seconds) for name, fn in candidates.items()}
    return timing.interleave(candidates, rounds=FLAGS.rounds, calls=calls)


def main(argv):
    del argv
    for rounding in FLAGS.roundings:
        if rounding not in UPDATE_ROUNDINGS:
            raise ValueError(f"--roundings: unknown {rounding!r}; valid: {UPDATE_ROUNDINGS}.")
    if not FLAGS.paths or not set(FLAGS.paths) <= {"rows", "whole"}:
        raise ValueError(f"--paths: rows and/or whole; got {FLAGS.paths}.")
    K = _keras()
    print(f"BF16 weights on {NUM_TABLES} tables of {FLAGS.rows:,} x {FLAGS.dim} ({FLAGS.keras}, "
          f"Adagrad, batch {FLAGS.batch}), {FLAGS.rounds} interleaved rounds per rounding")
    print(f"load average at start: {timing.machine_load()}\n")
    model = dcn_model(K)
    data = batch_data()
    print("| variant | ms/step | ratio to FP32 (wall) | ratio to FP32 (CPU) |")
    print("| --- | --- | --- | --- |")
    for rounding in FLAGS.roundings:
        results = measure(K, model, data, rounding)
        base = results["fp32"]
        for name, result in results.items():
            ratio = "1" if name == "fp32" else f"{result.ratio_to(base):.2f}x"
            cpu = "1" if name == "fp32" else f"{result.ratio_to(base, cpu=True):.2f}x"
            print(f"| {name} | {result.median_ms:.1f} | {ratio} | {cpu} |", flush=True)
        del results
        gc.collect()  # free this rounding's optimizers before the next one's
    print(f"\nload average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
