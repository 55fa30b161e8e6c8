"""Training and evaluation of DCN runs at a precision, resumable.

A run is `(data, model, schedule, precision, seed)`, the precision a
`recsys.precision.Precision`. A `Trainer` holds the model (the plain FP32
model, or the same model wrapped by `tfbf16.wrap(model, rounding=compute)`),
its Adam optimizer (wrapped by `tfbf16.optimizers.BF16Weights` for BF16
weights) and compiled steps; `Trainer.run` resets it to the run's initial
weights, trains it on `bundle.train`, evaluates it periodically for a
learning curve and at the end on the whole eval set, and writes into the
run's `model_dir`:

- `checkpoints/`: `tf.train.CheckpointManager` over model, optimizer (Kahan
  compensation buffers included) and step;
- `train/`, `eval/`: TensorBoard event files (training loss, eval metrics);
  `bf16/`: with `TrainConfig.monitor_every`, the per-layer BF16 statistics
  of `tfbf16.callbacks.PrecisionMonitor` (also in `precision_monitor.json`);
- `run_config.json`: what identifies the run (a restart with different
  settings in the same directory is refused, not silently mixed);
- `history.json`: the learning curve so far; `result.json`: the final result.

Resuming. A run killed and restarted with the same settings restores the
latest checkpoint and skips the training batches it already consumed (the
training stream is deterministic for a given data seed), so it ends with the
same weights and metrics as an uninterrupted run. (Stochastic rounding's
random stream is not checkpointed, so a resumed `precision="stochastic"` run
is statistically, not bitwise, equivalent.)

Example:

    bundle = DataConfig().make_bundle(seed=0)
    result = run(bundle, ModelConfig(), TrainConfig(train_steps=100),
                 precision="rne", seed=0, model_dir="/tmp/dcn_rne")
    result["final"]["log_loss"]
"""

import dataclasses
import hashlib
import json
import os
import time

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from absl import logging
import numpy as np
import tensorflow as tf

from tensorflow.core.framework import summary_pb2

from recsys import distribute
from recsys import metrics
from recsys import model as model_lib
from recsys.precision import Precision

_RUN_CONFIG = "run_config.json"
_HISTORY = "history.json"
_RESULT = "result.json"
_MONITOR = "precision_monitor.json"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data to train and evaluate on (see `recsys.data.make_datasets`).

    Attributes:
        source: "synthetic", "criteo" or "tfrecord".
        data_path: file, directory or glob for file sources.
        batch_size: training (and eval) batch size.
        eval_rows: rows in the evaluation set.
        num_buckets: hash buckets per categorical feature (criteo), or None
            for the data layer's default.
        vocab_scale: cardinality scale of the synthetic stream.
    """
    source: str = "synthetic"
    data_path: str = None
    batch_size: int = 2048
    eval_rows: int = 1 << 18
    num_buckets: int = None
    vocab_scale: float = 0.1

    def make_bundle(self, seed=0, distribution=None):
        """Builds the `DataBundle` of data seed `seed`.

        The seed picks the synthetic stream (its ground truth and rows); file
        sources are read in file order whatever the seed.

        Args:
            seed: the data seed.
            distribution: a `recsys.distribute.Distribution`; with several
                input pipelines (multi-worker), the bundle's training rows
                are this worker's shard (`batch_size` is the global batch
                size, split evenly between the workers).

        Raises:
            ValueError: if the global batch size does not split evenly.
        """
        from recsys.data import make_datasets  # the data layer
        kwargs = {}
        if self.source == "synthetic":
            kwargs["vocab_scale"] = self.vocab_scale
        if self.source == "criteo" and self.num_buckets is not None:
            kwargs["num_buckets"] = self.num_buckets
        shards, index = 1, 0
        if distribution is not None and not distribution.uses_coordinator:
            shards, index = (distribution.num_input_pipelines,
                             distribution.input_pipeline_index)
            if self.batch_size % distribution.num_replicas:
                raise ValueError(
                    f"--batch_size={self.batch_size} (the global batch) does not "
                    f"split evenly over {distribution.num_replicas} replicas; "
                    "choose a multiple.")
        return make_datasets(self.source, data_path=self.data_path,
                             batch_size=self.batch_size // shards, seed=seed,
                             eval_rows=self.eval_rows, num_shards=shards,
                             shard_index=index, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """DCN-V2 architecture; see `recsys.model.build_dcn` for the meaning."""
    embedding_dim: int = 8
    num_cross_layers: int = 2
    projection_dim: int = None
    deep_layers: tuple = (128, 64)
    structure: str = "stacked"

    def build(self, vocab_sizes, seed=None):
        """The FP32 model, initialized from `seed`."""
        return model_lib.build_dcn(
            vocab_sizes, embedding_dim=self.embedding_dim,
            num_cross_layers=self.num_cross_layers,
            projection_dim=self.projection_dim,
            deep_layers=self.deep_layers, structure=self.structure, seed=seed)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization, evaluation and checkpointing schedule.

    Attributes:
        train_steps: number of training batches.
        learning_rate: Adam learning rate (the peak, with a schedule).
        lr_schedule: "constant", or "cosine": cosine decay from
            `learning_rate` to 0 at `train_steps`.
        eval_every: periodic evaluation interval in steps (0: none), for the
            learning curve; step 0 is evaluated too.
        eval_steps: eval batches per periodic evaluation (None: all). The
            final evaluation always uses the whole eval set.
        checkpoint_every: checkpoint interval in steps (and at the end).
        log_every: progress bar / TensorBoard training-loss interval.
        jit_compile: compile the train and eval steps with XLA.
        monitor_every: measure the BF16 rounding error, underflow and
            overflow of every emulated layer's weights, inputs and
            gradients every this many steps
            (`tfbf16.callbacks.PrecisionMonitor`; 0: off). Only emulated
            precisions have layers to measure.
        tensorboard: write TensorBoard event files.
    """
    train_steps: int = 300
    learning_rate: float = 4e-3
    lr_schedule: str = "cosine"
    eval_every: int = 60
    eval_steps: int = 8
    checkpoint_every: int = 100
    log_every: int = 20
    jit_compile: bool = False
    monitor_every: int = 0
    tensorboard: bool = True


def with_cached_eval(bundle):
    """`bundle` with its eval set cached in memory after one full pass.

    Periodic evaluations then read the same rows without regenerating or
    re-reading them (a synthetic eval set of 2**18 rows takes ~70 MB).
    """
    cached = bundle.eval.cache()
    for _ in cached:  # fill the cache completely before partial reads
        pass
    return dataclasses.replace(bundle, eval=cached)


def with_cached_train(bundle, steps):
    """`bundle` whose training stream is its first `steps` batches, in memory.

    A study trains every (precision, seed) on the same batches; making them
    once instead of once per run leaves the CPU to training (on 2 cores the
    synthetic generator running beside training takes about half of it, see
    `benchmarks/recsys_throughput.py`). A run longer than `steps` would see
    these batches again, so pass the run length.

    Args:
        bundle: a `DataBundle`.
        steps: number of training batches to keep.

    Returns:
        The bundle with `train` replaced by the cached batches.
    """
    cached = bundle.train.take(steps).cache()
    for _ in cached:  # fill the cache once, up front
        pass
    return dataclasses.replace(bundle, train=cached)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_of(train_config):
    """The Adam learning rate (a float or a schedule) of a `TrainConfig`."""
    tc = train_config
    if tc.lr_schedule == "constant":
        return tc.learning_rate
    if tc.lr_schedule == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(
            tc.learning_rate, decay_steps=tc.train_steps, alpha=0.0)
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got "
                     f"{tc.lr_schedule!r}.")


# TensorBoard's scalar-plugin metadata. Scalars are written with the core
# `tf.summary.write` op, so event files need no `tensorboard` package (which
# `tf.summary.scalar` imports) to be written; TensorBoard reads them as usual.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalars(writer, step, values):
    """Writes `{tag: float}` as TensorBoard scalars at `step` and flushes."""
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(value, tf.float32),
                             metadata=_SCALAR_METADATA)
    writer.flush()


# Under several replicas, embedding gradients (tf.IndexedSlices) of tables of
# at most this many bytes are all-reduced as dense tensors, which the
# strategy packs into few all-reduces; larger tables' are all-gathered as
# sparse slices, one collective per table. Measured with 2 workers on this
# machine (26 small tables; a standalone script of this step, batch 64):
# 13-25 ms per step dense, 174-580 ms sparse.
DENSE_ALLREDUCE_BYTES = 4 << 20


def make_train_step(model, optimizer, *, strategy=None, jit_compile=False,
                    step_counter=None, dense_allreduce_bytes=DENSE_ALLREDUCE_BYTES):
    """A compiled training step for a logit model.

    Each replica's loss is the sum of its per-example losses over the global
    batch size (its batch size times the replicas in sync: the replicas get
    equal batches), so that the all-reduced gradient is the gradient of the
    global batch mean.

    Args:
        model: a Keras model mapping features to logits (built under
            `strategy.scope()`).
        optimizer: a Keras optimizer (built or not).
        strategy: the `tf.distribute.Strategy` (None: the current one).
        jit_compile: compile each replica's step with XLA.
        step_counter: optional int64 `tf.Variable` incremented by each step.
        dense_allreduce_bytes: with several replicas, the sparse gradients
            of variables up to this size are densified before the
            all-reduce (see `DENSE_ALLREDUCE_BYTES`).

    Returns:
        A `tf.function` `(features, labels) -> loss` (per-replica values
        under a multi-replica strategy) that applies one update of the mean
        binary cross-entropy computed from FP32 logits, and returns that
        mean over the global batch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    loss_fn = tf.keras.losses.BinaryCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.NONE)
    variables = model.trainable_variables
    densify = [strategy.num_replicas_in_sync > 1 and
               v.shape.num_elements() * v.dtype.size <= dense_allreduce_bytes
               for v in variables]

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            per_example = loss_fn(labels[:, tf.newaxis], logits[:, tf.newaxis])
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, variables)
        grads = [tf.convert_to_tensor(g) if dense and isinstance(g, tf.IndexedSlices)
                 else g for g, dense in zip(grads, densify)]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    def train_step(features, labels):
        losses = strategy.run(replica_step, args=(features, labels))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        if step_counter is not None:
            step_counter.assign_add(1)
        return loss

    return tf.function(train_step)


def weights_fingerprint(model):
    """SHA-256 (hex) of a model's weights, in order, as float bytes.

    Equal on every worker of a synchronous multi-worker run; a cheap check
    that replicas stayed in sync, and that two runs ended bit-identical.
    """
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()


def load_checkpointed_model(model_dir, model_config, vocab_sizes, precision):
    """The plain FP32 model with the weights of a run's latest checkpoint.

    A run checkpoints the model it trained (wrapped by `tfbf16.wrap` for the
    emulated precisions, sharded over parameter servers with that
    strategy); its weights are restored here into an unwrapped, unsharded
    model of the same config.

    Args:
        model_dir: the run's directory.
        model_config: the run's `ModelConfig`.
        vocab_sizes: the 26 table sizes.
        precision: the run's precision (a `Precision` or its name).

    Returns:
        A `tf.keras.Model` (FP32, unwrapped).

    Raises:
        FileNotFoundError: if `model_dir` holds no checkpoint.
    """
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"{model_dir} holds no checkpoint (checkpoints/).")
    model = model_config.build(vocab_sizes)
    checkpoint = tf.train.Checkpoint(model=Precision.parse(precision).apply(model))
    checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    return model


def set_model_weights(model, values):
    """`model.set_weights(values)` that also takes sharded variables.

    Under a parameter-server strategy a large variable is a
    `ShardedVariable` whose shards `model.weights` lists one by one; here
    it takes the full value, as in an unsharded model's `get_weights()`.

    Raises:
        ValueError: if the number of values does not match.
    """
    parents = {id(shard): variable for variable in distribute.sharded_variables(model)
               for shard in variable.variables}
    if not parents:
        model.set_weights(values)
        return
    variables, seen = [], set()
    for weight in model.weights:
        parent = parents.get(id(weight))
        if parent is None:
            variables.append(weight)
        elif id(parent) not in seen:
            seen.add(id(parent))
            variables.append(parent)
    if len(variables) != len(values):
        raise ValueError(f"{len(values)} weight values for {len(variables)} "
                         f"variables of {model.name!r}.")
    for variable, value in zip(variables, values):
        variable.assign(value)


def _write_json(path, value):
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path):
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def run_identity(bundle, model_config, train_config, precision, seed,
                 data_seed):
    """The settings that determine a run's result (a JSON-compatible dict).

    Settings that do not change the trained weights (checkpoint, log,
    eval and monitoring intervals, TensorBoard; the number of steps under a
    constant learning rate) are left out, so such a run may be extended or
    re-evaluated in place.
    """
    schedule = {"lr_schedule": train_config.lr_schedule}
    if train_config.lr_schedule != "constant":
        schedule["train_steps"] = int(train_config.train_steps)
    return {
        "schedule": schedule,
        "data": str(bundle.description),
        "global_batch_size": bundle.global_batch_size,
        "data_seed": int(data_seed),
        "model": json.loads(json.dumps(dataclasses.asdict(model_config))),
        "learning_rate": float(train_config.learning_rate),
        "jit_compile": bool(train_config.jit_compile),
        "precision": Precision.parse(precision).name,
        "seed": int(seed),
    }


def _check_run_dir(model_dir, identity, is_chief=True):
    path = os.path.join(model_dir, _RUN_CONFIG)
    if is_chief:
        tf.io.gfile.makedirs(model_dir)
    existing = _read_json(path)
    if existing is None:
        if is_chief:
            _write_json(path, identity)
    elif existing != identity:
        changed = sorted(k for k in set(existing) | set(identity)
                         if existing.get(k) != identity.get(k))
        raise ValueError(
            f"{model_dir} holds a run with other settings: "
            f"{json.dumps({k: existing.get(k) for k in changed})}, now "
            f"{json.dumps({k: identity.get(k) for k in changed})}. Use another "
            "directory, or delete it to start over.")


def run(bundle, model_config, train_config, *, precision, seed, model_dir,
        data_seed=0, initial_weights=None, callbacks=(), verbose=1,
        distribution=None):
    """Trains and evaluates one run; resumes from `model_dir` if possible.

    A shortcut for `Trainer(model_config, bundle.vocab_sizes, train_config,
    precision, distribution).run(bundle, ...)`; see `Trainer.run` for the
    arguments and the result.
    """
    return Trainer(model_config, bundle.vocab_sizes, train_config, precision,
                   distribution).run(
        bundle, precision=precision, seed=seed, model_dir=model_dir,
        data_seed=data_seed, initial_weights=initial_weights,
        callbacks=callbacks, verbose=verbose)


class Trainer:
    """A model at a precision, its optimizer and compiled steps, for many runs.

    Building, wrapping and tracing the DCN takes seconds (the wrapped one
    ~10 s on 2 cores), so a `Trainer` is built once and reused: each `run`
    resets the weights to the run's initial FP32 weights (rounded to BF16
    for BF16 weights), zeroes the optimizer state and the step, and for the
    emulated roundings (rne, trunc, stochastic) switches the rounding with
    `tfbf16.set_rounding`, which the traced step reads at run time. A run
    on a reused `Trainer` gives the same result as on a new one.

    Args:
        model_config: a `ModelConfig`.
        vocab_sizes: the 26 categorical id space sizes.
        train_config: a `TrainConfig`.
        precision: the first precision to run (a `Precision` or its name);
            the `Trainer` can then run every precision of the same
            `Precision.trainer_kind`: the same weights precision and update
            rounding, and "fp32" compute (the plain model), the emulated
            roundings (one wrapped model), or "native".
        distribution: a `recsys.distribute.Distribution` (None: the default
            strategy); the model, optimizer and steps are built in its
            scope, and `run` then needs a bundle made for it
            (`DataConfig.make_bundle(distribution=...)`).

    Raises:
        ValueError: for settings the strategy does not support.

    Example:

    >>> emulated = Trainer(ModelConfig(), bundle.vocab_sizes, TrainConfig(), "rne")
    >>> rne = emulated.run(bundle, precision="rne", seed=0, model_dir="/tmp/r")
    >>> trunc = emulated.run(bundle, precision="trunc", seed=0, model_dir="/tmp/t")
    """

    def __init__(self, model_config, vocab_sizes, train_config, precision,
                 distribution=None):
        precision = Precision.parse(precision)
        if distribution is None:
            distribution = distribute.make_distribution("default")
        _check_supported(precision, train_config, distribution)
        self.model_config = model_config
        self.train_config = train_config
        self.vocab_sizes = list(vocab_sizes)
        self.kind = precision.trainer_kind
        self.distribution = distribution
        with distribution.strategy.scope():
            self.fp32_model = model_config.build(self.vocab_sizes)
            self.model = precision.apply(self.fp32_model)
            self.optimizer = precision.optimizer(tf.keras.optimizers.Adam(
                learning_rate=learning_rate_of(train_config)))
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.train_step = make_train_step(
            self.model, self.optimizer, strategy=distribution.strategy,
            jit_compile=train_config.jit_compile, step_counter=self.step)
        # PrecisionMonitor measures emulated layers; the plain FP32 and the
        # native model have none.
        self.monitored = bool(train_config.monitor_every
                              and precision.compute_kind == "emulated")
        if self.monitored:
            import tfbf16
            self.train_step = tfbf16.callbacks.instrument(self.train_step, self.model)
        self.logit_fn = metrics.make_logit_fn(
            self.model, jit_compile=train_config.jit_compile)
        self.coordinator = None
        if distribution.uses_coordinator:
            for variable in distribute.sharded_variables(self.fp32_model):
                logging.info("%s", distribute.describe_shards(variable))
            self.coordinator = tf.distribute.coordinator.ClusterCoordinator(
                distribution.strategy)
            train_step = self.train_step
            self.scheduled_step = tf.function(
                lambda iterator: train_step(*next(iterator)))

    def per_worker_iterator(self, dataset):
        """An iterator over `dataset` on each parameter-server worker.

        The dataset is serialized once and rebuilt on every worker, which
        keeps every `num_input_pipelines`-th batch of it, starting at its
        own index (`tf.distribute.coordinator.experimental_get_current_worker_index`).
        """
        serialized = tf.raw_ops.DatasetToGraphV2(
            input_dataset=tf.data.experimental.to_variant(dataset),
            external_state_policy=0,  # warn about (and rebuild) caches
            strip_device_assignment=True)
        spec = dataset.element_spec
        workers = self.distribution.num_input_pipelines

        def dataset_fn():
            rebuilt = tf.data.experimental.from_variant(
                tf.raw_ops.DatasetFromGraph(graph_def=serialized), spec)
            return rebuilt.shard(
                workers, tf.distribute.coordinator.experimental_get_current_worker_index())

        return iter(self.coordinator.create_per_worker_dataset(dataset_fn))

    def reset(self, initial_weights, precision):
        """Sets the initial weights, zero optimizer state and step 0."""
        precision = Precision.parse(precision)
        if precision.trainer_kind != self.kind:
            raise ValueError(f"This Trainer runs precisions of kind {self.kind}, "
                             f"not {precision.name!r}; build another Trainer.")
        if precision.compute_kind == "emulated":
            import tfbf16
            tfbf16.set_rounding(self.model, precision.compute)
        set_model_weights(self.fp32_model, initial_weights)
        if precision.weights == "bf16":
            self.optimizer.round_weights(self.model.trainable_variables)
        for variable in self.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        self.step.assign(0)

    def monitor(self, model_dir):
        """A `PrecisionMonitor` for a run in `model_dir`, or None if off."""
        if not self.monitored:
            return None
        import tfbf16
        tc = self.train_config
        log_dir = os.path.join(model_dir, "bf16") if tc.tensorboard else None
        return tfbf16.callbacks.PrecisionMonitor(
            tc.monitor_every, log_dir=log_dir, optimizer=self.optimizer)

    def run(self, bundle, *, precision, seed, model_dir, data_seed=0,
            initial_weights=None, callbacks=(), verbose=1):
        """Trains and evaluates one run; resumes from `model_dir` if possible.

        Args:
            bundle: the `DataBundle` (its `train` must be the deterministic
                stream of data seed `data_seed`).
            precision: a `Precision` or its name, of this Trainer's kind.
            seed: model initialization seed; also seeds TensorFlow, NumPy
                and Python (`tf.keras.utils.set_random_seed`).
            model_dir: directory for checkpoints, TensorBoard logs, results.
            data_seed: the data seed `bundle` was built with (recorded).
            initial_weights: the FP32 initial weights (`get_weights()` of a
                model of this config); None builds them from `seed`.
            callbacks: `tf.keras.callbacks.Callback`s; `on_train_batch_begin`/
                `on_train_batch_end(step, logs)` are called around every step
                with the 1-based global step (and `logs={"loss": <scalar
                tensor>}` at the end). An exception raised there stops the
                run; the latest checkpoint stays, so it can be resumed.
            verbose: 1 for a Keras progress bar, 0 for none.

        Returns:
            A dict with "precision" (the name), "seed", "steps", "final" (the
            `metrics.click_metrics` of the whole eval set), "history" (the
            periodic evaluations: `{"step", "log_loss", "auc",
            "calibration", ...}`), "train_seconds" and "examples_per_second"
            (of the steps run by this call, evaluations and checkpoints
            included), "steady_examples_per_second" (steps after the first,
            without them) and "input_wait_fraction" (of that time, the part
            spent waiting for the input pipeline), "weights_sha256"
            (`weights_fingerprint`), and "resumed_from" (the step training
            started at). A finished run in `model_dir` is loaded
            from its `result.json` instead of being trained again ("loaded"
            is then True).

        Raises:
            ValueError: on invalid settings or a `model_dir` of another run.
        """
        precision = Precision.parse(precision)
        tc = self.train_config
        _check_bundle(bundle, self.distribution)
        _check_run_dir(model_dir, run_identity(
            bundle, self.model_config, tc, precision, seed, data_seed),
            self.distribution.is_chief)
        done = _read_json(os.path.join(model_dir, _RESULT))
        if done is not None and done["steps"] == tc.train_steps:
            logging.info("%s seed %d: already complete in %s.", precision.name,
                         seed, model_dir)
            return dict(done, loaded=True)
        if initial_weights is None:
            initial_weights = self.model_config.build(
                self.vocab_sizes, seed=seed).get_weights()
        self.reset(initial_weights, precision)
        tf.keras.utils.set_random_seed(int(seed))
        return _Run(self, bundle, precision, seed, model_dir, callbacks,
                    verbose).execute()


def _check_supported(precision, train_config, distribution):
    """Raises ValueError for what a strategy cannot run, saying what to change."""
    if distribution.is_server_only:
        raise ValueError(f"This process is a {distribution.task_type} task of a "
                         "parameter-server cluster: it serves, it does not train.")
    multi = distribution.num_replicas > 1 or distribution.uses_coordinator
    if multi and precision.weights == "bf16":
        raise ValueError(
            f"BF16 weights ({precision.name}) are not supported under the "
            f"{distribution.name} strategy with {distribution.num_replicas} "
            "replicas (tfbf16.optimizers.BF16Weights is single-replica); use "
            "--weights_precision=fp32 or --strategy=default.")
    if multi and train_config.monitor_every:
        raise ValueError(
            "--monitor_every (tfbf16.callbacks.PrecisionMonitor) is not supported "
            f"under the {distribution.name} strategy with several replicas; set "
            "--monitor_every=0 or use --strategy=default.")
    if (distribution.name == "multi_worker" and train_config.jit_compile
            and not tf.config.list_physical_devices("GPU")):
        raise ValueError(
            "--jit_compile with --strategy=multi_worker needs GPUs: XLA does not "
            "compile the all-reduce on CPUs (TensorFlow: 'Collectives are not yet "
            "implemented for CPU devices when compiling with XLA'); drop --jit_compile.")


def _check_bundle(bundle, distribution):
    """Raises ValueError if `bundle` was not made for `distribution`."""
    shards = bundle.shard.count if bundle.shard is not None else 1
    index = bundle.shard.index if bundle.shard is not None else 0
    wanted = (1, 0) if distribution.uses_coordinator else (
        distribution.num_input_pipelines, distribution.input_pipeline_index)
    if (shards, index) != wanted:
        raise ValueError(
            f"The data bundle is shard {index} of {shards}, but this process is "
            f"input pipeline {wanted[1]} of {wanted[0]} of the {distribution.name} "
            "strategy: make it with DataConfig.make_bundle(distribution=...).")


_END = object()


class _Run:
    """The loop of one `Trainer.run` call."""

    def __init__(self, trainer, bundle, precision, seed, model_dir, callbacks,
                 verbose):
        self.trainer, self.bundle, self.tc = trainer, bundle, trainer.train_config
        self.precision, self.seed, self.model_dir = precision.name, seed, model_dir
        self.distribution = trainer.distribution
        self.is_chief = self.distribution.is_chief
        self.verbose = verbose if self.is_chief else 0
        callbacks = list(callbacks)
        self.monitor = trainer.monitor(model_dir)
        if self.monitor is not None:
            callbacks.append(self.monitor)
        self.callbacks = tf.keras.callbacks.CallbackList(callbacks,
                                                         model=trainer.model)
        self.checkpoint = tf.train.Checkpoint(model=trainer.model,
                                              optimizer=trainer.optimizer,
                                              step=trainer.step)
        # Every worker saves (multi-worker saving is collective); only the
        # chief's copy, in `checkpoint_dir`, is kept and restored from.
        self.checkpoint_dir = os.path.join(model_dir, "checkpoints")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.distribution.write_dir(self.checkpoint_dir),
            max_to_keep=2)

    def _path(self, name):
        return os.path.join(self.model_dir, name)

    def _evaluate(self, steps):
        return metrics.evaluate(None, self.bundle.eval, steps=steps,
                                logit_fn=self.trainer.logit_fn)

    def _log_eval(self, writer, step, result, prefix=""):
        if writer is not None:
            write_scalars(writer, step, {prefix + name: result[name] for name in
                                         ("log_loss", "auc", "calibration")})

    def _writer(self, name):
        if not self.tc.tensorboard or not self.is_chief:
            return None
        return tf.summary.create_file_writer(self._path(name))

    def _save(self, history, monitor_records):
        self.manager.save(checkpoint_number=self.trainer.step)
        self.distribution.remove_write_dir(self.checkpoint_dir)
        if not self.is_chief:
            return
        _write_json(self._path(_HISTORY), history)
        if self.monitor is not None:
            _write_json(self._path(_MONITOR), monitor_records + self.monitor.records)

    def _restore(self):
        """Restores the chief's latest checkpoint; returns its path or None."""
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest is not None:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def _training_steps(self, start):
        """How to run steps `start + 1 ..`.

        Returns:
            `(items, run, value, sync)`: `run(item)` runs (or, with a
            parameter-server coordinator, schedules) the step of each item
            and returns its loss; `value(loss)` is that loss as a number
            (waiting for the step); `sync()` waits for scheduled steps.
        """
        tc, trainer = self.tc, self.trainer
        if trainer.coordinator is None:
            batches = self._training_batches(start)
            return (batches, lambda batch: trainer.train_step(*batch),
                    lambda loss: loss, lambda: None)
        # Asynchronous: each worker takes its next batch when it is free.
        iterator = trainer.per_worker_iterator(self.bundle.train.repeat().skip(start))
        return (range(start, tc.train_steps),
                lambda _: trainer.coordinator.schedule(trainer.scheduled_step,
                                                       args=(iterator,)),
                lambda loss: loss.fetch(), trainer.coordinator.join)

    def _training_batches(self, start):
        """The batches of steps `start + 1 ..`, distributed to the replicas."""
        tc = self.tc
        # The stream is deterministic: skip the batches already trained on.
        # File sources are one epoch long: repeat them for more steps.
        batches = (self.bundle.train.repeat().skip(start)
                   .take(tc.train_steps - start))
        strategy = self.distribution.strategy
        if strategy.num_replicas_in_sync == 1:
            return batches
        # Each input pipeline's batch is split between its replicas.
        replicas_per_pipeline = (strategy.num_replicas_in_sync
                                 // self.distribution.num_input_pipelines)
        rows = self.bundle.train.element_spec[1].shape[0] // replicas_per_pipeline
        return strategy.distribute_datasets_from_function(
            lambda context: batches.rebatch(rows, drop_remainder=True))

    def execute(self):
        tc, trainer = self.tc, self.trainer
        restored = self._restore()
        start = int(trainer.step.numpy())
        history = [h for h in (_read_json(self._path(_HISTORY)) or [])
                   if h["step"] <= start]
        # Measurements of steps before `start` (an earlier invocation's).
        monitor_records = [r for r in (_read_json(self._path(_MONITOR)) or [])
                           if r["step"] < start]
        if restored:
            logging.info("%s seed %d: resumed from %s at step %d",
                         self.precision, self.seed, restored, start)
        if start > tc.train_steps:
            raise ValueError(
                f"{self.model_dir} already holds a run of {start} steps, more "
                f"than train_steps={tc.train_steps}.")

        train_writer = self._writer("train")
        eval_writer = self._writer("eval")
        if tc.eval_every and start == 0 and not history:
            history.append({"step": 0, **self._evaluate(tc.eval_steps)})
            self._log_eval(eval_writer, 0, history[-1])

        progbar = (tf.keras.utils.Progbar(tc.train_steps, stateful_metrics=["loss"],
                                          unit_name="step")
                   if self.verbose else None)
        if progbar is not None and start:
            progbar.update(start)
        items, run_step, loss_value, sync = self._training_steps(start)
        self.callbacks.on_train_begin()
        window, step, batch_size = [], start, self.bundle.global_batch_size
        # Steady-state timing, from the second step on (the first one traces):
        # seconds waiting for the input pipeline and running steps.
        input_seconds = step_seconds = 0.0
        began = time.perf_counter()
        iterator = iter(items)
        while True:
            waited = time.perf_counter()
            item = next(iterator, _END)
            ran = time.perf_counter()
            if item is _END:
                break
            self.callbacks.on_train_batch_begin(step + 1)
            loss = run_step(item)
            if step > start:
                input_seconds += ran - waited
                step_seconds += time.perf_counter() - ran
            step += 1
            window.append(loss)
            self.callbacks.on_train_batch_end(step, {"loss": loss})
            if step % tc.log_every == 0 or step == tc.train_steps:
                mean_loss = float(np.mean([loss_value(v) for v in window]))
                window = []
                if train_writer is not None:
                    write_scalars(train_writer, step, {"loss": mean_loss})
                if progbar is not None:
                    progbar.update(step, [("loss", mean_loss)])
            if tc.eval_every and step % tc.eval_every == 0:
                sync()
                history.append({"step": step, **self._evaluate(tc.eval_steps)})
                self._log_eval(eval_writer, step, history[-1])
            if step % tc.checkpoint_every == 0:
                sync()
                self._save(history, monitor_records)
        sync()
        seconds = time.perf_counter() - began
        if step != tc.train_steps:
            raise ValueError(
                f"The training data ran out after {step} of {tc.train_steps} "
                "steps.")
        self.callbacks.on_train_end()
        if step % tc.checkpoint_every or step == start:
            self._save(history, monitor_records)

        final = self._evaluate(None)
        self._log_eval(eval_writer, step, final, prefix="final_")
        trained = step - start
        # (Scheduled parameter-server steps return at once: no steady timing.)
        steady = input_seconds + step_seconds if trainer.coordinator is None else 0.0
        result = {
            "precision": self.precision,
            "seed": int(self.seed),
            "steps": step,
            "final": final,
            "history": history,
            "resumed_from": start,
            "train_seconds": seconds,
            "examples_per_second": (trained * batch_size / seconds
                                    if trained else None),
            # Steps after the first, without evaluations and checkpoints:
            "steady_examples_per_second": ((trained - 1) * batch_size / steady
                                           if trained > 1 and steady else None),
            "input_wait_fraction": input_seconds / steady if steady else None,
            "weights_sha256": weights_fingerprint(trainer.fp32_model),
            "loaded": False,
        }
        logging.info("%s seed %d: final weights sha256 %s (%s)", self.precision,
                     self.seed, result["weights_sha256"],
                     self.distribution.describe())
        if self.is_chief:
            _write_json(self._path(_RESULT), result)
        # No worker leaves (and maybe exits) while another is still working.
        self.distribution.barrier()
        logging.info("%s seed %d: eval log loss %.6f, AUC %.5f, calibration "
                     "%.4f after %d steps", self.precision, self.seed,
                     final["log_loss"], final["auc"], final["calibration"], step)
        return result
