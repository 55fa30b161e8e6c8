"""Training and evaluation of DCN runs at a precision, resumable.

A run is `(data, model, schedule, precision, seed)`, the precision a
`tfbf16.study.precision.Precision`. A `Trainer` holds the model (the plain FP32
model, or the same model wrapped by `tfbf16.wrap(model, rounding=compute)`),
its Adam optimizer (wrapped by `tfbf16.optimizers.BF16Weights` for BF16
weights) and compiled steps; `Trainer.run` resets it to the run's initial
weights, trains it on `bundle.train`, evaluates it periodically for a
learning curve and at the end on the whole eval set, and writes the run
directory (`recsys.run_dir`): checkpoints, TensorBoard logs, the learning
curve and the result, which includes the input report (rows read and
malformed lines per split).

Resuming. A run killed and restarted with the same settings restores the
latest checkpoint and skips the training batches it already consumed (the
training stream is deterministic for a given data seed), so it ends with the
same weights and metrics as an uninterrupted run. A finished run is loaded
instead of trained again, but only when its identity (settings, input
fingerprint, software) is the one asked for; otherwise the directory is
refused unless `overwrite` is set. (Stochastic rounding's random stream is
not checkpointed, so a resumed `precision="stochastic"` run is
statistically, not bitwise, equivalent.)

Example:

    bundle = batches.make_bundle(DataConfig())
    result = run(bundle, DataConfig(), ModelConfig(), TrainConfig(train_steps=100),
                 precision="rne", seed=0, model_dir="/tmp/dcn_rne")
    result["final"]["log_loss"]
"""

import hashlib
import os
import time

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from absl import logging
import numpy as np
import tensorflow as tf

from tfbf16.utils.tensorboard import write_scalars

from recsys import distribute
from recsys.data import accounting
from recsys import metrics
from recsys import model as model_lib
from recsys import run_dir as run_dir_lib
from recsys import train_step as train_step_lib
from tfbf16.study.precision import Precision

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


def run(bundle, data_config, model_config, train_config, *, precision, seed, model_dir,
        initial_weights=None, callbacks=(), verbose=1, distribution=None, overwrite=False):
    """Trains and evaluates one run; resumes from `model_dir` if possible.

    A shortcut for `Trainer(model_config, bundle.vocab_sizes, train_config,
    precision, distribution).run(bundle, data_config, ...)`; see
    `Trainer.run` for the arguments and the result.
    """
    distribution = distribution or distribute.make_distribution("default")
    rounding_seed = seed if needs_rounding_seed(Precision.parse(precision), distribution) else None
    return Trainer(model_config, bundle.vocab_sizes, train_config, precision,
                   distribution, rounding_seed).run(
        bundle, data_config, precision=precision, seed=seed, model_dir=model_dir,
        initial_weights=initial_weights, callbacks=callbacks, verbose=verbose,
        overwrite=overwrite)


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
        model_config: a `recsys.config.ModelConfig`.
        vocab_sizes: the 26 categorical id space sizes.
        train_config: a `recsys.config.TrainConfig`.
        precision: the first precision to run (a `Precision` or its name);
            the `Trainer` can then run every precision of the same
            `Precision.trainer_kind`: the same weights precision and update
            rounding, and "fp32" compute (the plain model), the emulated
            roundings (one wrapped model), or "native".
        distribution: a `recsys.distribute.Distribution` (None: the default
            strategy); the model, optimizer and steps are built in its
            scope, and `run` then needs a bundle made for it
            (`batches.make_bundle(data_config, distribution)`).
        rounding_seed: for stochastic BF16 weight updates under several
            replicas, the run seed the optimizer's rounding is seeded with
            (see `needs_rounding_seed`); None otherwise.

    Raises:
        ValueError: for settings the strategy does not support.

    Example:

    >>> emulated = Trainer(ModelConfig(), bundle.vocab_sizes, TrainConfig(), "rne")
    >>> rne = emulated.run(bundle, data_config, precision="rne", seed=0, model_dir="/tmp/r")
    >>> trunc = emulated.run(bundle, data_config, precision="trunc", seed=0,
    ...                      model_dir="/tmp/t")
    """

    def __init__(self, model_config, vocab_sizes, train_config, precision,
                 distribution=None, rounding_seed=None):
        precision = Precision.parse(precision)
        if distribution is None:
            distribution = distribute.make_distribution("default")
        _check_supported(precision, train_config, distribution)
        if rounding_seed is None and needs_rounding_seed(precision, distribution):
            raise ValueError(
                f"{precision.name} under {distribution.num_replicas} replicas needs a "
                "rounding_seed, so that every replica draws the same random bits.")
        self.rounding_seed = rounding_seed
        self.model_config = model_config
        self.train_config = train_config
        self.vocab_sizes = list(vocab_sizes)
        self.kind = precision.trainer_kind
        self.distribution = distribution
        with distribution.strategy.scope():
            self.fp32_model = model_lib.build_from_config(model_config, self.vocab_sizes)
            self.model = precision.apply(self.fp32_model)
            self.optimizer = precision.optimizer(
                tf.keras.optimizers.Adam(
                    learning_rate=train_step_lib.learning_rate_of(train_config)),
                seed=rounding_seed)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.train_step = train_step_lib.make_train_step(
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

    def initial_weights(self, seed):
        """The FP32 initial weights of `seed` (a model of this config, built anew)."""
        return model_lib.build_from_config(self.model_config, self.vocab_sizes,
                                           seed=seed).get_weights()

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

    def identity(self, bundle, data_config, precision, seed):
        """The run identity (`recsys.run_dir.run_identity`) of a run of this Trainer."""
        return run_dir_lib.run_identity(
            data_config, self.model_config, self.train_config, precision, seed,
            input_fingerprint=bundle.fingerprint(), distribution=self.distribution)

    def run(self, bundle, data_config, *, precision, seed, model_dir,
            initial_weights=None, callbacks=(), verbose=1, overwrite=False):
        """Trains and evaluates one run; resumes from `model_dir` if possible.

        Args:
            bundle: the `DataBundle` of `data_config` (its `train` must be
                the deterministic stream of the config's data seed).
            data_config: the `recsys.config.DataConfig` the bundle was made
                from (part of the run's identity).
            precision: a `Precision` or its name, of this Trainer's kind.
            seed: model initialization seed; also seeds TensorFlow, NumPy
                and Python (`tf.keras.utils.set_random_seed`).
            model_dir: directory for checkpoints, TensorBoard logs, results.
            initial_weights: the FP32 initial weights (`get_weights()` of a
                model of this config); None builds them from `seed`.
            callbacks: `tf.keras.callbacks.Callback`s; `on_train_batch_begin`/
                `on_train_batch_end(step, logs)` are called around every step
                with the 1-based global step (and `logs={"loss": <scalar
                tensor>}` at the end). An exception raised there stops the
                run; the latest checkpoint stays, so it can be resumed.
            verbose: 1 for a Keras progress bar, 0 for none.
            overwrite: delete what `model_dir` holds and train again if it
                holds a run of another identity (else refuse it).

        Returns:
            A dict with "precision" (the name), "seed", "steps", "final" (the
            `metrics.evaluate` result of the whole eval set: log loss, AUC,
            calibration, count, rows_sha256), "history" (the periodic
            evaluations: `{"step", "log_loss", "auc", "calibration", ...}`),
            "input" (the bundle's input report: rows read and malformed
            lines per split), "eval_rows_requested", "train_seconds" and
            "examples_per_second" (of the steps run by this call,
            evaluations and checkpoints included),
            "steady_examples_per_second" (steps after the first, without
            them) and "input_wait_fraction" (of that time, the part spent
            waiting for the input pipeline), "weights_sha256"
            (`run_dir.weights_fingerprint`), "initial_weights_sha256", and
            "resumed_from" (the step training started at). A finished run in
            `model_dir` of the same identity is loaded from its `result.json`
            instead of being trained again ("loaded" is then True).

        Raises:
            ValueError: on invalid settings.
            tfbf16.study.runs.RunMismatchError: if `model_dir` holds a run of
                another identity and `overwrite` is False.
        """
        precision = Precision.parse(precision)
        if self.rounding_seed is not None and seed != self.rounding_seed:
            raise ValueError(f"This Trainer's stochastic weight updates are seeded for seed "
                             f"{self.rounding_seed}, not {seed}; build another Trainer.")
        _check_bundle(bundle, self.distribution)
        directory = run_dir_lib.RunDirectory(
            model_dir, self.identity(bundle, data_config, precision, seed),
            overwrite=overwrite, writer=self.distribution.is_chief).open()
        done = directory.result()
        if done is not None and done["steps"] == self.train_config.train_steps:
            logging.info("%s seed %d: already complete in %s (same settings and "
                         "input).", precision.name, seed, model_dir)
            return dict(done, loaded=True)
        if initial_weights is None:
            initial_weights = self.initial_weights(seed)
        self.reset(initial_weights, precision)
        tf.keras.utils.set_random_seed(int(seed))
        return _Run(self, bundle, data_config, precision, seed, directory, callbacks,
                    verbose, _weights_sha256(initial_weights)).execute()


def _weights_sha256(values):
    digest = hashlib.sha256()
    for value in values:
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def needs_rounding_seed(precision, distribution):
    """Whether stochastic BF16 weight updates need an explicit seed here.

    With one replica they follow TensorFlow's global seed (set per run); every
    replica of a multi-replica strategy must draw the same bits, so there the
    seed is fixed when the optimizer is built: one `Trainer` per run seed.
    """
    return (precision.weights == "bf16" and precision.update_rounding == "stochastic"
            and distribution.num_replicas > 1)


def _check_supported(precision, train_config, distribution):
    """Raises ValueError for what a strategy cannot run, saying what to change."""
    if distribution.is_server_only:
        raise ValueError(f"This process is a {distribution.task_type} task of a "
                         "parameter-server cluster: it serves, it does not train.")
    multi = distribution.num_replicas > 1 or distribution.uses_coordinator
    if distribution.uses_coordinator and precision.weights == "bf16":
        raise ValueError(
            f"BF16 weights ({precision.name}) are not supported under the "
            f"{distribution.name} strategy (tfbf16.optimizers.BF16Weights runs under no "
            "strategy, mirrored and multi_worker); use --weights_precision=fp32 or another "
            "--strategy.")
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
    if distribution.uses_coordinator and not bundle.remote_readable:
        raise ValueError(
            "Parameter-server workers rebuild the input pipeline in their own processes, "
            "and raw Criteo text is read by Python code of this process: prepare "
            "TFRecords first (python -m recsys.prepare) and pass --data=tfrecord.")
    shards = bundle.shard.count if bundle.shard is not None else 1
    index = bundle.shard.index if bundle.shard is not None else 0
    wanted = (1, 0) if distribution.uses_coordinator else (
        distribution.num_input_pipelines, distribution.input_pipeline_index)
    if (shards, index) != wanted:
        raise ValueError(
            f"The data bundle is shard {index} of {shards}, but this process is "
            f"input pipeline {wanted[1]} of {wanted[0]} of the {distribution.name} "
            "strategy: make it with batches.make_bundle(data_config, distribution).")


_END = object()


class _Run:
    """One `Trainer.run` call: resume, train loop, bookkeeping, result."""

    def __init__(self, trainer, bundle, data_config, precision, seed, directory, callbacks,
                 verbose, initial_sha256):
        self.trainer, self.bundle, self.tc = trainer, bundle, trainer.train_config
        self.data_config = data_config
        self.precision, self.seed, self.directory = precision.name, seed, directory
        self.initial_sha256 = initial_sha256
        self.distribution = trainer.distribution
        self.is_chief = self.distribution.is_chief
        self.verbose = verbose if self.is_chief else 0
        callbacks = list(callbacks)
        self.monitor = trainer.monitor(directory.path)
        if self.monitor is not None:
            callbacks.append(self.monitor)
        self.callbacks = tf.keras.callbacks.CallbackList(callbacks, model=trainer.model)
        self.checkpoint = tf.train.Checkpoint(model=trainer.model,
                                              optimizer=trainer.optimizer,
                                              step=trainer.step)
        # Every worker saves (multi-worker saving is collective); only the
        # chief's copy, in `checkpoint_dir`, is kept and restored from.
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.distribution.write_dir(directory.checkpoint_dir),
            max_to_keep=2)
        self.history, self.monitor_records = [], []
        eval_at, self.eval_batches = self.tc.evaluation_steps()
        self.eval_at = set(eval_at)
        self.train_writer = self._writer("train")
        self.eval_writer = self._writer("eval")

    # -- resume --------------------------------------------------------------
    def _resume(self):
        """Restores the chief's latest checkpoint; returns the step to start at."""
        latest = tf.train.latest_checkpoint(self.directory.checkpoint_dir)
        if latest is not None:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        start = int(self.trainer.step.numpy())
        if start > self.tc.train_steps:
            raise ValueError(
                f"{self.directory.path} already holds a run of {start} steps, more "
                f"than --train_steps={self.tc.train_steps}; use another directory "
                "or --overwrite.")
        self.history = self.directory.history(start)
        # Measurements of steps before `start` (an earlier invocation's).
        self.monitor_records = self.directory.monitor_records(start)
        if latest is not None:
            logging.info("%s seed %d: resumed from %s at step %d", self.precision,
                         self.seed, latest, start)
        return start

    # -- bookkeeping: evaluations, logs, checkpoints -------------------------
    def _writer(self, name):
        if not self.tc.tensorboard or not self.is_chief:
            return None
        return tf.summary.create_file_writer(self.directory.file(name))

    def _evaluate(self, step, steps, prefix=""):
        result = metrics.evaluate(None, self.bundle.eval, steps=steps,
                                  logit_fn=self.trainer.logit_fn)
        if self.eval_writer is not None:
            write_scalars(self.eval_writer, step, {
                prefix + name: result[name] for name in ("log_loss", "auc", "calibration")})
        return result

    def _record_evaluation(self, step):
        self.history.append({"step": step, **self._evaluate(step, self.eval_batches)})

    def _log_training(self, step, losses):
        mean_loss = float(np.mean(losses))
        if self.train_writer is not None:
            write_scalars(self.train_writer, step, {"loss": mean_loss})
        return mean_loss

    def _save(self):
        self.manager.save(checkpoint_number=self.trainer.step)
        self.distribution.remove_write_dir(self.directory.checkpoint_dir)
        self.directory.write_json(run_dir_lib.HISTORY, self.history)
        if self.monitor is not None:
            self.directory.write_json(run_dir_lib.MONITOR,
                                      self.monitor_records + self.monitor.records)

    # -- the training loop ---------------------------------------------------
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
        # The stream is deterministic: skip the batches already trained on.
        # File sources are one epoch long: repeat them for more steps.
        batches = (self.bundle.train.repeat().skip(start)
                   .take(self.tc.train_steps - start))
        strategy = self.distribution.strategy
        if strategy.num_replicas_in_sync == 1:
            return batches
        # Each input pipeline's batch is split between its replicas.
        replicas_per_pipeline = (strategy.num_replicas_in_sync
                                 // self.distribution.num_input_pipelines)
        rows = self.bundle.train.element_spec[1].shape[0] // replicas_per_pipeline
        return strategy.distribute_datasets_from_function(
            lambda context: batches.rebatch(rows, drop_remainder=True))

    def _train_loop(self, start):
        """Runs steps `start + 1 ..`; returns (last step, seconds, steady timing)."""
        tc = self.tc
        progbar = (tf.keras.utils.Progbar(tc.train_steps, stateful_metrics=["loss"],
                                          unit_name="step") if self.verbose else None)
        if progbar is not None and start:
            progbar.update(start)
        items, run_step, loss_value, sync = self._training_steps(start)
        self.callbacks.on_train_begin()
        window, step = [], start
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
                mean_loss = self._log_training(step, [loss_value(v) for v in window])
                window = []
                if progbar is not None:
                    progbar.update(step, [("loss", mean_loss)])
            if step in self.eval_at:
                sync()
                self._record_evaluation(step)
            if step % tc.checkpoint_every == 0:
                sync()
                self._save()
        sync()
        return step, time.perf_counter() - began, (input_seconds, step_seconds)

    def _check_ran_to_the_end(self, step):
        if step == self.tc.train_steps:
            return
        raise ValueError(
            f"The training data ran out after {step} of {self.tc.train_steps} steps "
            f"(input: {self.bundle.describe_input()}).")

    # -- the result ------------------------------------------------------------
    def _result(self, start, step, seconds, timing):
        trainer = self.trainer
        final = self._evaluate(step, None, prefix="final_")
        requested = self.data_config.eval_rows
        if final["count"] != requested:
            logging.warning("%s seed %d: %d eval rows scored, %d requested (%s).",
                            self.precision, self.seed, final["count"], requested,
                            "fewer exist" if final["count"] < requested else "check the data")
        input_seconds, step_seconds = timing
        trained = step - start
        batch_size = self.bundle.global_batch_size
        # (Scheduled parameter-server steps return at once: no steady timing.)
        steady = input_seconds + step_seconds if trainer.coordinator is None else 0.0
        return {
            "precision": self.precision,
            "seed": int(self.seed),
            "steps": step,
            "final": final,
            "history": self.history,
            "input": self.bundle.input_report(),
            "eval_rows_requested": requested,
            "resumed_from": start,
            "train_seconds": seconds,
            "examples_per_second": trained * batch_size / seconds if trained else None,
            # Steps after the first, without evaluations and checkpoints:
            "steady_examples_per_second": ((trained - 1) * batch_size / steady
                                           if trained > 1 and steady else None),
            "input_wait_fraction": input_seconds / steady if steady else None,
            "initial_weights_sha256": self.initial_sha256,
            "weights_sha256": run_dir_lib.weights_fingerprint(trainer.fp32_model),
            "loaded": False,
        }

    def execute(self):
        start = self._resume()
        if 0 in self.eval_at and start == 0 and not self.history:
            self._record_evaluation(0)
        step, seconds, timing = self._train_loop(start)
        self._check_ran_to_the_end(step)
        self.callbacks.on_train_end()
        if step % self.tc.checkpoint_every or step == start:
            self._save()
        result = self._result(start, step, seconds, timing)
        logging.info("%s seed %d: final weights sha256 %s (%s)", self.precision,
                     self.seed, result["weights_sha256"], self.distribution.describe())
        logging.info("%s seed %d: input: %s", self.precision, self.seed,
                     accounting.describe_report(result["input"]))
        self.directory.write_json(run_dir_lib.RESULT, result)
        # No worker leaves (and maybe exits) while another is still working.
        self.distribution.barrier()
        final = result["final"]
        logging.info("%s seed %d: eval log loss %.6f, AUC %.5f, calibration "
                     "%.4f on %d rows after %d steps", self.precision, self.seed,
                     final["log_loss"], final["auc"], final["calibration"],
                     final["count"], step)
        return result
