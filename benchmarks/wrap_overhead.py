"""Training-step time of `tfbf16.wrap`ped models relative to the FP32 model.

For two models, measured side by side in one run (interleaved rounds,
benchmarks/timing.py), with and without `jit_compile`:

- DCN: a tf_keras functional Deep & Cross Network of Criteo size: 13 dense
  features, 26 categorical features embedded in 16 dimensions (--vocab rows
  each), 3 full-rank `tfrs` Cross layers, a 512-256 deep tower, batch
  --dcn_batch.
- CNN: a small Keras 3 convolutional network (4 Conv2D, 1 Dense) on 32x32x3
  images, batch --cnn_batch.

Variants: the FP32 model, the emulated model (`wrap(model, "rne")`) and real
bfloat16 compute (`wrap(model, "native")`), each stepped by its compiled
train function (what `fit` runs). The table gives the median milliseconds
per training step (wall clock) and the median over rounds of the ratio to
FP32 in the same round, of wall time and of process CPU time (steadier on a
machine shared with other jobs).

With --profile, the emulated DCN step (no jit) is also timed with parts of
the emulation switched off (gradient rounding, input rounding, the inner XLA
cluster of the rounding kernel), and with --census the rounding ops traced
into one training step are counted, to see where the overhead comes from.

Usage:

    python -m benchmarks.wrap_overhead [--rounds=R] [--steps=S] [--round_seconds=T]
        [--models=dcn,cnn] [--jit_compile=false,true] [--[no]profile] [--[no]census]
    python -m benchmarks.wrap_overhead --rounds=2 --steps=2 --round_seconds=0.1 \
        --dcn_batch=64 --cnn_batch=16 --vocab=1000    # a quick run
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tensorflow-recommenders needs it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import collections  # noqa: E402

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfbf16  # noqa: E402
from benchmarks import timing  # noqa: E402
from tfbf16 import rounding as rounding_lib  # noqa: E402
from tfbf16.emulation import tensors as emulated_tensors  # noqa: E402
from tfbf16.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 7, "Interleaved timed rounds.", lower_bound=1)
flags.DEFINE_integer("steps", 10, "Most training steps per variant per round.",
                     lower_bound=1)
flags.DEFINE_float("round_seconds", 1.0,
                   "Target time of a variant's steps in one round: a variant runs fewer "
                   "than --steps steps per round (at least 1) when its steps are slow.")
flags.DEFINE_list("models", ["dcn", "cnn"], "Which models to time: dcn, cnn.")
flags.register_validator("models", lambda names: set(names) <= {"dcn", "cnn"},
                         "--models must be among dcn, cnn.")
flags.DEFINE_list("jit_compile", ["false", "true"],
                  "The jit_compile settings of the main table (empty: no table).")
flags.register_validator("jit_compile",
                         lambda values: set(values) <= {"false", "true"},
                         "--jit_compile must be among false, true.")
flags.DEFINE_bool("profile", True, "Also time partial emulations of the DCN step.")
flags.DEFINE_bool("census", True, "Also count the rounding ops of one emulated DCN step.")
flags.DEFINE_integer("dcn_batch", 512, "DCN batch size.", lower_bound=1)
flags.DEFINE_integer("cnn_batch", 128, "CNN batch size.", lower_bound=1)
flags.DEFINE_integer("vocab", 10_000, "Rows of each DCN embedding table.", lower_bound=1)

NUM_DENSE, NUM_CATEGORICAL, EMBEDDING_DIM = 13, 26, 16


# ---------------------------------------------------------------- models


def dcn_model():
    import tensorflow_recommenders as tfrs
    import tf_keras as K

    K.utils.set_random_seed(0)
    dense = K.Input((NUM_DENSE,), name="dense")
    cats = [K.Input((1,), dtype="int32", name=f"c{i}") for i in range(NUM_CATEGORICAL)]
    embedded = [
        K.layers.Flatten()(K.layers.Embedding(FLAGS.vocab, EMBEDDING_DIM, name=f"emb{i}")(c))
        for i, c in enumerate(cats)
    ]
    x0 = K.layers.Concatenate()([dense] + embedded)
    x = x0
    for i in range(3):
        x = tfrs.layers.dcn.Cross(name=f"cross{i}")(x0, x)
    x = K.layers.Dense(512, activation="relu", name="deep0")(x)
    x = K.layers.Dense(256, activation="relu", name="deep1")(x)
    model = K.Model([dense] + cats, K.layers.Dense(1, name="logit")(x), name="dcn")
    return model, K


def dcn_data():
    rng = np.random.default_rng(0)
    batch = FLAGS.dcn_batch
    x = [tf.constant(np.log1p(rng.exponential(3.0, (batch, NUM_DENSE))).astype(np.float32))]
    x += [tf.constant(rng.integers(0, FLAGS.vocab, (batch, 1)).astype(np.int32))
          for _ in range(NUM_CATEGORICAL)]
    y = tf.constant(rng.integers(0, 2, (batch, 1)).astype(np.float32))
    return tuple(x), y


def cnn_model():
    import keras as K

    K.utils.set_random_seed(0)
    model = K.Sequential([
        K.Input((32, 32, 3)),
        K.layers.Conv2D(32, 3, activation="relu", name="conv0"),
        K.layers.Conv2D(32, 3, activation="relu", name="conv1"),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(64, 3, activation="relu", name="conv2"),
        K.layers.Conv2D(64, 3, activation="relu", name="conv3"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(10, name="logits"),
    ], name="cnn")
    return model, K


def cnn_data():
    rng = np.random.default_rng(1)
    batch = FLAGS.cnn_batch
    x = tf.constant(rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, (batch,)).astype(np.int32))
    return x, y


MODELS = {
    "dcn": (dcn_model, dcn_data, "binary_crossentropy_logits"),
    "cnn": (cnn_model, cnn_data, "sparse_ce_logits"),
}


def _loss(K, name):
    if name == "binary_crossentropy_logits":
        return K.losses.BinaryCrossentropy(from_logits=True)
    return K.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---------------------------------------------------------------- timing


class Variant:
    """One compiled model whose training steps are timed (`step` runs one)."""

    def __init__(self, name, *, make_model, loss_name, data, rounding=None, policy=None,
                 jit=False, inner_xla=True):
        self.name = name
        model, K = make_model()
        if rounding is not None:
            model = tfbf16.wrap(model, rounding, policy=policy)
        model.compile(optimizer=K.optimizers.Adam(1e-3), loss=_loss(K, loss_name), jit_compile=jit)
        self.model = model
        # fit's own inner loop: the compiled train function on an iterator
        # (train_on_batch adds a data-adapter set-up of several ms per call).
        self.iterator = iter(tf.data.Dataset.from_tensors(data).repeat())
        model.make_train_function()  # Keras 3 returns None, tf_keras the function
        self.train_function = model.train_function
        # The inner-XLA switch is read when the step is traced: trace now.
        rounding_lib.set_xla_rounding(inner_xla)
        try:
            self.step()
            self.step()
        finally:
            rounding_lib.set_xla_rounding(True)

    def step(self):
        """Runs one training step and waits for it (returns None)."""
        logs = self.train_function(self.iterator)
        float(logs["loss"])  # a host value: the step has finished


def make_variants(specs):
    """Builds each variant; one that fails to build is reported, not timed."""
    made, failed = [], {}
    for name, kwargs in specs:
        try:
            made.append(Variant(name, **kwargs))
        except Exception as error:  # noqa: BLE001 - reported in the table
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return made, failed


def measure(variants, rounds, base="fp32"):
    """Times the variants' steps side by side (`benchmarks.timing.interleave`).

    Each variant runs about --round_seconds of steps per round (at most
    --steps, at least 1).

    Returns:
        (median ms/step per variant, per variant the median per-round ratio
        to the `base` variant of (wall, CPU) time); both empty if the base
        variant failed to build.
    """
    if base not in [v.name for v in variants]:
        return {}, {}
    calls = {v.name: timing.calls_for(v.step, FLAGS.round_seconds, most=FLAGS.steps)
             for v in variants}
    results = timing.interleave({v.name: v.step for v in variants}, rounds=rounds,
                                warmup=0, calls=calls)
    base = results[base]
    return ({name: r.median_ms for name, r in results.items()},
            {name: (r.ratio_to(base), r.ratio_to(base, cpu=True))
             for name, r in results.items()})


# ---------------------------------------------------------------- rounding census


def rounding_census(make_model, loss_name, data, batch):
    """Rounding ops traced into one emulated training step, and their sizes.

    Counts, while the train function of a freshly wrapped model is traced,
    the calls of tfbf16's rounding kernel: backward ones are those made by
    `round_gradient` (every gradient rounding goes through it), the rest are
    forward. Unknown batch dimensions count as `batch`.
    """
    calls, sizes = collections.Counter(), collections.Counter()
    state = {"backward": 0}
    original_raw, original_gradient = rounding_lib._round_raw, rounding_lib.round_gradient

    def counting_raw(x, *args, **kwargs):
        kind = "backward" if state["backward"] else "forward"
        dims = x.shape.as_list() if x.shape.rank is not None else []
        calls[kind] += 1
        sizes[kind] += int(np.prod([batch if d is None else d for d in dims]))
        return original_raw(x, *args, **kwargs)

    def counting_gradient(*args, **kwargs):
        state["backward"] += 1
        try:
            return original_gradient(*args, **kwargs)
        finally:
            state["backward"] -= 1

    variant = Variant("census", make_model=make_model, loss_name=loss_name, data=data,
                      rounding="rne")
    patched = [(rounding_lib, "_round_raw", counting_raw),
               (rounding_lib, "round_gradient", counting_gradient),
               (emulated_tensors, "round_gradient", counting_gradient)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        variant.model.make_train_function(force=True)
        variant.train_function = variant.model.train_function
        variant.step()  # traces the step once, with the counters in place
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
    return calls, sizes


# ---------------------------------------------------------------- main


def _cell(results, ratios, name):
    if name not in results:
        return f"{'failed':>22}"
    wall, cpu = ratios[name]
    return f"{results[name]:>9.1f}{wall:>6.2f}x{cpu:>6.2f}x "


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    print(f"load average at start: {timing.machine_load()}")
    print(f"tfbf16.wrap overhead: {FLAGS.rounds} interleaved rounds of up to {FLAGS.steps} "
          f"training steps (~{FLAGS.round_seconds} s; fit's train function) per variant; "
          "median ms/step (wall) and median per-round ratio to FP32 of wall time and of "
          "process CPU time")
    print(f"bf16 hardware: {tfbf16.bf16_hardware()}")
    failures = {}
    for key in FLAGS.models:
        make_model, make_data, loss_name = MODELS[key]
        common = dict(make_model=make_model, loss_name=loss_name, data=make_data())
        names = ("fp32", "emulated rne", "native bf16")
        print(f"\n{key.upper()}")
        print(f"  {'':<18}" + "".join(f"{n:>22}" for n in names))
        print(f"  {'':<18}" + f"{'ms/step  wall   cpu':>22}" * len(names))
        for jit in (value == "true" for value in FLAGS.jit_compile):
            variants, failed = make_variants([
                ("fp32", dict(common, jit=jit)),
                ("emulated rne", dict(common, rounding="rne", jit=jit)),
                ("native bf16", dict(common, rounding="native", jit=jit)),
            ])
            results, ratios = measure(variants, FLAGS.rounds)
            row = "".join(_cell(results, ratios, n) for n in names)
            print(f"  {f'jit_compile={jit}':<18}{row}", flush=True)
            failures.update({f"{key} {n} jit={jit}": why for n, why in failed.items()})

        if key == "dcn" and FLAGS.profile:
            print("\n  DCN emulation breakdown (no jit): what the overhead is made of")
            no_grad = dict(round_input_gradients=False, round_output_gradients=False)
            variants, failed = make_variants([
                ("fp32", common),
                ("full emulation", dict(common, rounding="rne")),
                ("no gradient rounding", dict(common, rounding="rne",
                                              policy=tfbf16.BF16Policy(**no_grad))),
                ("weights only", dict(common, rounding="rne",
                                      policy=tfbf16.BF16Policy(round_inputs=False, **no_grad))),
                ("full, inner XLA off", dict(common, rounding="rne", inner_xla=False)),
            ])
            results, ratios = measure(variants, FLAGS.rounds)
            print(f"    {'':<24}{'ms/step':>9}{'wall':>7}{'cpu':>7}   added (wall)")
            for name, ms in results.items():
                wall, cpu = ratios[name]
                print(f"    {name:<24}{ms:>9.1f}{wall:>6.2f}x{cpu:>6.2f}x"
                      f"   {(wall - 1) * results['fp32']:+.1f} ms")
            failures.update({f"dcn profile {n}": why for n, why in failed.items()})
        if key == "dcn" and FLAGS.census:
            calls, sizes = rounding_census(make_model, loss_name, common["data"], FLAGS.dcn_batch)
            if not calls:
                failures["dcn rounding census"] = (
                    "no rounding op counted: its hooks (tfbf16.rounding._round_raw, "
                    "round_gradient) no longer see tfbf16's rounding calls")
            for kind in ("forward", "backward"):
                if calls.get(kind):
                    print(f"    {kind} rounding ops per step: {calls[kind]}, "
                          f"{sizes[kind] / 1e6:.2f}M elements "
                          f"(mean {sizes[kind] / calls[kind] / 1e3:.1f}K per op)")
    for what, why in failures.items():
        print(f"\nfailed: {what}: {why}")
    print(f"load average at end: {timing.machine_load()}")


if __name__ == "__main__":
    cli.run(main)
