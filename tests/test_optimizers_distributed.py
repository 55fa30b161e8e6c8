"""BF16Weights under MirroredStrategy and MultiWorkerMirroredStrategy.

Each test runs its training in fresh processes (a MirroredStrategy's
collective keys would collide with another strategy's in the test process):
one process with two logical CPU devices for MirroredStrategy, two worker
processes on 127.0.0.1 (TF_CONFIG, free ports) for MultiWorkerMirroredStrategy.
Every process trains the same small model (an embedding table, whose
sparse updates Adagrad rounds row by row, and a dense layer) for a few
steps of the same global batches, with each replica taking its slice, and
also trains it without a strategy on the whole global batch. The copies of
every weight must end bit-identical on every replica and worker, and equal
to the single-process weights up to the tolerance of
tests/recsys/test_multi_worker.py (the all-reduce sums the halves of the
batch gradient in another order, so FP32 results may differ in their last
bits; here, with BF16 weights, they came out equal).

`python -m tests.test_optimizers_distributed` is the program these
processes run.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recsys.local_cluster import REPO, LocalCluster

# How far the multi-replica weights may be from the single-process ones
# (tests/recsys/test_multi_worker.py's tolerance for emulated BF16 runs).
TOLERANCE = 1e-5
ROWS, DIM, GLOBAL_BATCH, STEPS = 64, 4, 16, 4
# (Keras, inner optimizer, update rounding): Adagrad rounds the table's rows
# inside its update step, Adam whole variables after its step.
CONFIGS = [(flavour, inner, rounding)
           for flavour in ("keras3", "tf_keras")
           for inner, rounding in (("adagrad", "rne"), ("adagrad", "stochastic"),
                                   ("adagrad", "kahan"), ("adam", "stochastic"),
                                   ("adam", "kahan"))]


def _sha256(weights):
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _train(strategy, local_replicas, flavour, inner, rounding):
    """Trains the model under `strategy` (with `local_replicas` in this
    process); returns (weights, copies identical)."""
    import keras
    import tensorflow as tf
    import tf_keras

    from tfbf16.optimizers import BF16Weights

    K = keras if flavour == "keras3" else tf_keras
    with strategy.scope():
        K.utils.set_random_seed(0)
        ids = K.Input((3,), dtype="int32")
        embedded = K.layers.Embedding(ROWS, DIM, name="table")(ids)
        model = K.Model(ids, K.layers.Dense(1)(K.layers.Flatten()(embedded)))
        optimizer = BF16Weights(
            K.optimizers.Adagrad(0.2) if inner == "adagrad" else K.optimizers.Adam(0.02),
            rounding, round_slots=True, seed=7)
        optimizer.build(model.trainable_variables)
    assert optimizer.rounds_rows(model.get_layer("table").embeddings) == (inner == "adagrad")
    variables = model.trainable_variables

    @tf.function
    def train_step(global_ids, global_labels):
        def replica_step():
            context = tf.distribute.get_replica_context()
            size = GLOBAL_BATCH // context.num_replicas_in_sync
            start = context.replica_id_in_sync_group * size
            with tf.GradientTape() as tape:
                errors = model(global_ids[start:start + size]) - global_labels[start:start + size]
                loss = tf.reduce_sum(tf.square(errors)) / GLOBAL_BATCH
            grads = tape.gradient(loss, variables)
            assert isinstance(grads[0], tf.IndexedSlices)
            optimizer.apply_gradients(zip(grads, variables))

        strategy.run(replica_step)

    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        train_step(tf.constant(rng.integers(0, ROWS // 2, size=(GLOBAL_BATCH, 3)), tf.int32),
                   tf.constant(rng.normal(size=(GLOBAL_BATCH, 1)), tf.float32))
    copies = [strategy.experimental_local_results(v.value if isinstance(v, keras.Variable) else v)
              for v in list(variables) + list(optimizer.variables)]
    assert all(len(c) == local_replicas for c in copies)
    copies_identical = all(len({np.asarray(c).tobytes() for c in copy}) == 1 for copy in copies)
    return [np.asarray(w) for w in model.get_weights()], copies_identical


def main(argv=None):
    """Trains every config under the strategy of this process and writes
    `<output>.json` (per config: SHA-256 of the weights, copies identical)
    and `<output>.npz` (the weights, and the single-process weights)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--mirrored", action="store_true",
                        help="MirroredStrategy over two logical CPU devices "
                             "(else MultiWorkerMirroredStrategy from TF_CONFIG).")
    args = parser.parse_args(argv)
    import tensorflow as tf

    if args.mirrored:
        cpu, = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        output, local_replicas = args.output, 2
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        output, local_replicas = f"{args.output}_{strategy.cluster_resolver.task_id}", 1
    assert strategy.num_replicas_in_sync == 2
    summary, arrays = {}, {}
    for number, config in enumerate(CONFIGS):
        weights, copies_identical = _train(strategy, local_replicas, *config)
        summary["/".join(config)] = {"sha256": _sha256(weights),
                                     "copies_identical": copies_identical}
        arrays.update({f"{number}_multi_{i}": w for i, w in enumerate(weights)})
        if args.mirrored or strategy.cluster_resolver.task_id == 0:
            single, _ = _train(tf.distribute.get_strategy(), 1, *config)
            arrays.update({f"{number}_single_{i}": w for i, w in enumerate(single)})
    if args.mirrored:
        summary["refusals"] = _refusals(strategy)
    np.savez(output + ".npz", **arrays)
    with open(output + ".json", "w") as f:
        json.dump(summary, f)


def _refusals(mirrored):
    """The errors of what BF16Weights refuses: {case: message}."""
    import keras
    import tensorflow as tf

    from tfbf16.optimizers import BF16Weights

    def apply_under(strategy, **options):
        with strategy.scope():
            weight = keras.Variable(np.ones(4, np.float32))
            optimizer = BF16Weights(keras.optimizers.SGD(0.1), "stochastic", **options)
            optimizer.build([weight])
        try:
            strategy.run(tf.function(
                lambda: optimizer.apply_gradients([(tf.ones(4), weight)])))
        except (ValueError, NotImplementedError) as error:
            return str(error)
        return None

    return {
        "stochastic without seed": apply_under(mirrored),
        "central storage": apply_under(
            tf.distribute.experimental.CentralStorageStrategy(["/cpu:0", "/cpu:1"]), seed=1),
    }


def _check_against_single_process(output):
    arrays = np.load(output + ".npz")
    for number, config in enumerate(CONFIGS):
        names = sorted(k for k in arrays.files if k.startswith(f"{number}_multi_"))
        assert names
        worst = max(float(np.max(np.abs(arrays[n] - arrays[n.replace("multi", "single")])))
                    for n in names)
        print(f"{config}: max |multi-replica - single-process weight| = {worst:g}")
        assert worst <= TOLERANCE, (config, worst)


@pytest.mark.slow
def test_mirrored_strategy_keeps_copies_identical_and_matches_one_replica(tmp_path):
    output = str(tmp_path / "mirrored")
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_optimizers_distributed", f"--output={output}",
         "--mirrored"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(output + ".json") as f:
        summary = json.load(f)
    refusals = summary.pop("refusals")
    assert "needs a seed" in refusals["stochastic without seed"]
    assert "supports no strategy, OneDeviceStrategy" in refusals["central storage"]
    assert set(summary) == {"/".join(c) for c in CONFIGS}
    assert all(result["copies_identical"] for result in summary.values()), summary
    _check_against_single_process(output)


@pytest.mark.slow
def test_two_workers_end_bit_identical_and_match_one_process(tmp_path):
    output = str(tmp_path / "worker")
    with LocalCluster(tmp_path, {"worker": 2}, "tests.test_optimizers_distributed",
                      [f"--output={output}"]) as workers:
        codes = workers.wait(workers.tasks, timeout=900)
        assert codes == [0, 0], workers.tail()
    summaries = []
    for index in range(2):
        with open(f"{output}_{index}.json") as f:
            summaries.append(json.load(f))
    assert set(summaries[0]) == {"/".join(c) for c in CONFIGS}
    assert summaries[0] == summaries[1]  # same SHA-256 of the weights on both workers
    assert all(result["copies_identical"] for result in summaries[0].values())
    _check_against_single_process(f"{output}_0")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
