r"""BF16 weights: how the rounding of the weight update compares with FP32.

Stores the weights in BF16 and rounds every update with rne, trunc,
stochastic or kahan (`tfbf16.optimizers.BF16Weights`), on two small tasks
whose late updates are small (the learning rate decays to 0 along a cosine),
where round-to-nearest cancels updates below half a BF16 ulp of the weight
(Zamirai et al. 2020, "Revisiting BFloat16 Training"):

- "linreg": linear regression, 64 features, y = X w* + noise (MSE; SGD);
- "mlp": a one-hidden-layer (64 ReLU) MLP classifying the labels of a
  random teacher MLP (log loss; Adam).

Each is trained from the same initial weights and batches, for --seeds seeds,
with:

- FP32: no emulation, FP32 weights;
- BF16 compute, FP32 weights: `tfbf16.wrap(model, "rne")` (Kalamkar et al.);
- BF16 weights with update rounding rne / trunc / stochastic / kahan:
  the wrapped model plus `BF16Weights(optimizer, update_rounding)`.

Prints, per task and configuration, the final test loss (mean and spread
over seeds), its difference to FP32, and the fraction of weights that did
not change at all during the last 10% of training (cancelled updates), and
writes a PNG of the test-loss curves to --output.

Usage:

    python -m benchmarks.update_rounding [--steps=N] [--seeds=S] [--tasks=linreg,mlp]
        [--output=update_rounding.png]
    python -m benchmarks.update_rounding --steps=200 --seeds=2 --eval_every=100  # quick
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfbf16  # noqa: E402
from tfbf16.optimizers import BF16Weights  # noqa: E402
from tfbf16.study import stats  # noqa: E402
from tfbf16.utils import cli  # noqa: E402
from tfbf16.utils.files import atomic_write  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 2000, "Training steps per run (a multiple of --eval_every).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
flags.DEFINE_integer("eval_every", 100, "Test-loss evaluation interval (steps).",
                     lower_bound=1)
flags.DEFINE_integer("seeds", 4, "Independent replicates (initial weights and batches).",
                     lower_bound=1)
flags.DEFINE_list("tasks", ["linreg", "mlp"], "Tasks to run: linreg, mlp.")
flags.DEFINE_bool("jit_compile", False,
                  "Compile each chunk of training steps with XLA (about as fast here; "
                  "XLA ignores TensorFlow's seed for stochastic rounding, so results "
                  "are then not reproducible).")
flags.DEFINE_string("output", "update_rounding.png", "Path of the PNG plot.")

# (label, emulate BF16 compute, update rounding or None for FP32 weights)
CONFIGS = (
    ("FP32", False, None),
    ("BF16 compute, FP32 weights", True, None),
    ("BF16 weights, rne", True, "rne"),
    ("BF16 weights, trunc", True, "trunc"),
    ("BF16 weights, stochastic", True, "stochastic"),
    ("BF16 weights, kahan", True, "kahan"),
)


# Every seed is its own model: the layers below hold one independent set of
# weights per seed (an extra leading axis, EinsumDense), fed its own batches,
# and the loss is the sum of the per-seed mean losses, so each seed's
# gradients, Adam/SGD updates and roundings are exactly those of a separate
# run; one traced training loop then serves all seeds of a configuration.


def _dense(seeds, d_in, d_out, name, activation=None):
    return keras.layers.EinsumDense(
        "bsi,sio->bso", output_shape=(seeds, d_out), bias_axes="so", activation=activation,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(d_in)),
        name=name)


class LinearRegression:
    """y = X w* + 0.1 noise, 64 features; MSE; plain SGD, cosine decay."""

    name = "linreg"
    loss_name = "test MSE"
    features = 64

    def __init__(self, seeds):
        rng = np.random.default_rng(1000)
        self.seeds = seeds
        self.w = rng.normal(size=(self.features, 1)).astype(np.float32)
        self.x_train, self.y_train = self._sample(rng, 1 << 17)
        self.x_test, self.y_test = self._sample(rng, 8192)

    def _sample(self, rng, n):
        x = rng.normal(size=(n, self.features)).astype(np.float32)
        return x, (x @ self.w + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)

    def build(self):
        return keras.Sequential([keras.Input((self.seeds, self.features)),
                                 _dense(self.seeds, self.features, 1, "linear")])

    def optimizer(self, steps):
        return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.02, steps))

    def losses(self, y, outputs):
        """Per-seed mean losses, shape [seeds]."""
        return tf.reduce_mean(tf.square(outputs - y), axis=[0, 2])


class TeacherMLP:
    """Binary labels from a random teacher MLP; a 64-unit ReLU MLP; log loss; Adam, cosine."""

    name = "mlp"
    loss_name = "test log loss"
    features = 16

    def __init__(self, seeds):
        rng = np.random.default_rng(2000)
        self.seeds = seeds
        self.teacher = [rng.normal(size=(self.features, 32)) / 2.0,
                        rng.normal(size=(32, 1)) / np.sqrt(32) * 4.0]
        self.x_train, self.y_train = self._sample(rng, 1 << 17)
        self.x_test, self.y_test = self._sample(rng, 8192)

    def _sample(self, rng, n):
        x = rng.normal(size=(n, self.features))
        logits = np.maximum(x @ self.teacher[0], 0.0) @ self.teacher[1]
        y = (rng.uniform(size=(n, 1)) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return x.astype(np.float32), y

    def build(self):
        s = self.seeds
        return keras.Sequential([
            keras.Input((s, self.features)),
            _dense(s, self.features, 64, "hidden", "relu"),
            _dense(s, 64, 1, "logit"),
        ])

    def optimizer(self, steps):
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps))

    def losses(self, y, outputs):
        y = tf.broadcast_to(y, tf.shape(outputs))
        return tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=outputs), axis=[0, 2])


TASKS = {"linreg": LinearRegression, "mlp": TeacherMLP}


def run(task, config, steps, batch_size, eval_every, seed=0):
    """Trains one configuration for all of the task's seeds at once.

    `steps` must be a multiple of `eval_every` (every chunk of steps has one
    shape, so the training loop is traced once).

    Returns:
        (eval steps [E], test losses [E, seeds], frozen fraction per seed).
    """
    label, emulate, update_rounding = config
    keras.utils.set_random_seed(seed)
    model = task.build()
    if emulate:
        model = tfbf16.wrap(model, "rne")
    optimizer = task.optimizer(steps)
    if update_rounding is not None:
        optimizer = BF16Weights(optimizer, update_rounding)
    variables = model.trainable_variables
    optimizer.build(variables)
    x_train, y_train = tf.constant(task.x_train), tf.constant(task.y_train)
    x_test = tf.constant(np.repeat(task.x_test[:, None, :], task.seeds, axis=1))
    y_test = tf.constant(task.y_test[:, None, :])
    # Each seed reads its own batches: indices [steps, batch, seeds].
    batches = np.random.default_rng(seed).integers(
        0, len(task.x_train), size=(steps, batch_size, task.seeds))

    @tf.function(jit_compile=FLAGS.jit_compile)
    def train(indices):
        for i in tf.range(tf.shape(indices)[0]):
            x = tf.gather(x_train, indices[i])  # [batch, seeds, features]
            y = tf.gather(y_train, indices[i])  # [batch, seeds, 1]
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(task.losses(y, model(x, training=True)))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def test_losses():
        return task.losses(y_test, model(x_test, training=False))

    eval_steps, losses = [0], [test_losses().numpy()]
    chunks = steps // eval_every
    late_chunks = max(1, round(0.1 * chunks))  # the last ~10% of the steps
    late_weights = None
    for chunk in range(chunks):
        if chunk == chunks - late_chunks:
            late_weights = [v.numpy().copy() for v in variables]
        start = chunk * eval_every
        train(tf.constant(batches[start:start + eval_every]))
        eval_steps.append(start + eval_every)
        losses.append(test_losses().numpy())
    # Fraction of each seed's weights that did not move in the late steps.
    frozen = np.zeros(task.seeds)
    total = 0
    for v, w in zip(variables, late_weights):
        same = (v.numpy() == w).reshape(task.seeds, -1)  # the seed axis leads
        frozen += same.sum(axis=1)
        total += same.shape[1]
    if update_rounding is not None:
        bits = [np.ascontiguousarray(v.numpy()).view(np.uint32) & 0xFFFF for v in variables]
        if any(b.any() for b in bits):
            raise RuntimeError(f"{label}: BF16Weights left weights that are not BF16 values.")
    return np.array(eval_steps), np.array(losses), frozen / total


def _format_table(task, results):
    fp32 = results["FP32"][1][-1]
    lines = [
        f"### {task.name}: {task.loss_name} after {FLAGS.steps} steps "
        f"({len(fp32)} seeds: mean ± std)",
        "",
        f"| configuration | {task.loss_name} | vs FP32 (mean of paired differences, "
        f"{stats.CONFIDENCE:.0%} t interval) | weights frozen in last 10% of steps |",
        "| --- | --- | --- | --- |",
    ]
    for label, _, _ in CONFIGS:
        final = results[label][1][-1]
        frozen = results[label][2]
        if label == "FP32":
            versus = "baseline"
        elif np.all(np.isfinite(final)):
            diff = stats.paired_difference(final, fp32)
            versus = (f"{diff.mean:+.5f} ± {diff.half_width:.5f} "
                      f"({diff.mean / fp32.mean():+.1%})")
        else:
            versus = "diverged (non-finite loss)"
        lines.append(f"| {label} | {final.mean():.5f} ± {final.std():.5f} | {versus} | "
                     f"{frozen.mean():.0%} |")
    return "\n".join(lines)


def _plot(tasks, all_results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    styles = {"FP32": ("black", "-"), "BF16 compute, FP32 weights": ("gray", "--"),
              "BF16 weights, rne": ("tab:red", "-"), "BF16 weights, trunc": ("tab:orange", "-"),
              "BF16 weights, stochastic": ("tab:blue", "-"),
              "BF16 weights, kahan": ("tab:green", ":")}
    for axis, task in zip(axes[0], tasks):
        for label, _, _ in CONFIGS:
            steps, losses, _ = all_results[task.name][label]
            mean = losses.mean(axis=1)
            color, line = styles[label]
            axis.plot(steps, mean, color=color, linestyle=line, label=label)
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel(f"{task.loss_name} (mean over seeds)")
        axis.set_title(f"{task.name}: weight-update rounding")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    plt.close(figure)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    began = time.perf_counter()
    if FLAGS.steps % FLAGS.eval_every:
        raise app.UsageError("--steps must be a multiple of --eval_every.")
    unknown = [t for t in FLAGS.tasks if t not in TASKS]
    if unknown:
        raise app.UsageError(f"Unknown tasks {unknown}; choose from {sorted(TASKS)}.")
    tasks, all_results, tables = [], {}, []
    for name in FLAGS.tasks:
        task = TASKS[name](FLAGS.seeds)
        results = {config[0]: run(task, config, FLAGS.steps, FLAGS.batch_size,
                                  FLAGS.eval_every) for config in CONFIGS}
        tasks.append(task)
        all_results[name] = results
        tables.append(_format_table(task, results))
        print(tables[-1] + "\n", flush=True)
    _plot(tasks, all_results, FLAGS.output)
    print(f"Plot: {os.path.abspath(FLAGS.output)}")
    print(f"Total time: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    cli.run(main)
