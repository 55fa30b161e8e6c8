"""`tfbf16.compare`: the paired FP32-vs-BF16 study of any Keras model, in one call.

"Can my model train in BF16?" `compare(build_model, train, eval)` answers it
with statistics: for every seed, every precision starts from the same initial
weights, reads the same batches in the same order and is scored on the same
eval rows; the BF16 runs are `tfbf16.wrap(model, rounding)` of that model
(and, for names such as "rne+bf16w_kahan", weights stored in BF16 by
`tfbf16.optimizers.BF16Weights`). The result gives, per precision and
metric, the mean with its interval and the paired difference to FP32 with
its interval (`tfbf16.study.summary`), and a verdict against the thresholds
you give.

Pairing is verified, not assumed: every run records a fingerprint of the
initial weights and a checksum of the batches it trained on and was scored
on; runs of a seed that saw other batches (a `tf.data.Dataset` that
reshuffles without a seed, say) are refused, not paired.

With `output_dir`, each run is stored under `runs/<precision>_seed<seed>/`
with its identity (model and compile config, initial weights, input
fingerprints, fit arguments, precision, seed, software); an interrupted
comparison started again loads the finished runs of the same identity and
trains the rest. A directory holding runs of another identity is refused
unless `overwrite=True`.

Example:

>>> result = tfbf16.compare(build_model, (x_train, y_train), (x_test, y_test),
...                         seeds=5, fit_kwargs={"epochs": 3},
...                         thresholds={"accuracy": 0.01}, output_dir="compare_out")
>>> print(result.to_markdown())
"""

import dataclasses
import hashlib
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

import tfbf16
from tfbf16 import backends
from tfbf16.study import plots
from tfbf16.study import precision as precision_lib
from tfbf16.study import runs as runs_lib
from tfbf16.study import stats
from tfbf16.study import summary as summary_lib
from tfbf16.utils import files

RESULT = "result.json"
#: Bumped when the meaning of a stored run changes.
FORMAT = "tfbf16-compare-v1"
# Arguments of `fit` that `compare` sets itself.
_RESERVED_FIT_ARGUMENTS = ("x", "y", "batch_size", "validation_data", "shuffle",
                           "validation_split", "verbose")
# Metric name fragments whose larger values are better; others are losses/errors.
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "psnr", "ssim", "iou", "f1",
                     "top_k", "r2", "bleu")


def _backend(model):
    """The `tfbf16.backends` back end of a model `build_model` returned."""
    if not backends.is_keras_object(model) or not hasattr(model, "fit"):
        raise TypeError(f"build_model must return a Keras 3 or tf_keras model; got "
                        f"{type(model).__name__}.")
    return backends.backend_of(model)


def _sha256_of_arrays(arrays):
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class _Input:
    """A training or evaluation input: a `tf.data.Dataset` or `(x, y)` arrays."""

    def __init__(self, data, name, batch_size):
        self.name = name
        self.batch_size = batch_size
        if isinstance(data, tf.data.Dataset):
            self.dataset, self.arrays = data, None
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = (tf.nest.map_structure(np.asarray, part) for part in data)
            sizes = {len(a) for a in tf.nest.flatten((x, y))}
            if len(sizes) != 1 or 0 in sizes:
                raise ValueError(f"{name}: x and y must be non-empty and have the same "
                                 f"number of rows; got sizes {sorted(sizes)}.")
            self.dataset, self.arrays = None, (x, y)
        else:
            raise TypeError(f"{name} must be a tf.data.Dataset or an (x, y) tuple of arrays; "
                            f"got {type(data).__name__}.")

    @property
    def rows(self):
        return len(tf.nest.flatten(self.arrays)[0]) if self.arrays is not None else None

    def fingerprint(self):
        """A SHA-256 of the input's content (one pass over a dataset)."""
        if self.arrays is not None:
            return _sha256_of_arrays(tf.nest.flatten(self.arrays))
        digest = hashlib.sha256()
        for element in self.dataset:
            for value in tf.nest.flatten(element):
                digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
        return digest.hexdigest()

    def batches(self, *, shuffle_seed=None, epochs=1):
        """The batches a run reads: arrays are batched here (shuffled per epoch
        by `shuffle_seed`, the same order for every precision); a dataset is
        read as it is."""
        if self.arrays is None:
            return self.dataset
        n = self.rows
        if shuffle_seed is None:
            orders = [np.arange(n)] * epochs
        else:
            orders = [np.random.default_rng([shuffle_seed, epoch]).permutation(n)
                      for epoch in range(epochs)]
        index = None
        for order in orders:  # batches never span two epochs
            epoch = tf.data.Dataset.from_tensor_slices(order).batch(self.batch_size)
            index = epoch if index is None else index.concatenate(epoch)
        x, y = self.arrays
        tensors = tf.nest.map_structure(tf.constant, (x, y))
        return index.map(lambda i: tf.nest.map_structure(lambda t: tf.gather(t, i), tensors))


class _BatchChecksum:
    """An order-sensitive checksum of every batch a dataset yields (in-graph)."""

    def __init__(self):
        with tf.init_scope():
            self.value = tf.Variable(tf.constant(0, tf.int64), trainable=False)
            self.batches = tf.Variable(tf.constant(0, tf.int64), trainable=False)

    def reset(self):
        self.value.assign(0)
        self.batches.assign(0)

    def watch(self, dataset):
        def add(*element):
            parts = [tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(t), 2**62)
                     for t in tf.nest.flatten(element)]
            mixed = tf.add_n(parts) if len(parts) > 1 else parts[0]
            # state * odd constant + batch hash (int64 arithmetic wraps).
            self.value.assign(self.value * 1_000_003 + mixed)
            self.batches.assign_add(1)
            return element if len(element) > 1 else element[0]

        return dataset.map(add)  # sequential: the checksum is in order

    def read(self):
        return f"{int(self.batches.numpy())} batches, checksum {int(self.value.numpy()):x}"


def _check_seeds(seeds):
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of ints; got {seeds!r}.")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1; got {seeds}.")
        return list(range(seeds))
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a positive count or a list of ints >= 0; got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}.")
    return seeds


def _check_fit_kwargs(fit_kwargs):
    fit_kwargs = dict(fit_kwargs or {})
    reserved = sorted(set(fit_kwargs) & set(_RESERVED_FIT_ARGUMENTS))
    if reserved:
        raise ValueError(
            f"fit_kwargs must not set {', '.join(reserved)}: compare passes the data "
            "(train/eval, batch_size) and the verbosity itself.")
    epochs = fit_kwargs.setdefault("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit_kwargs['epochs'] must be an int >= 1; got {epochs!r}.")
    return fit_kwargs


def _jsonable(value):
    """A JSON-ready description of a fit argument (callables by name)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _without_names(config):
    """A model or compile config without object names (Keras numbers them per
    process: `dense_2` in one call is `dense_32` in the next, the same layer)."""
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_without_names(v) for v in config]
    return config


def _default_direction(name):
    lowered = name.lower()
    return any(fragment in lowered for fragment in _HIGHER_IS_BETTER) and "loss" not in lowered


def _metric_specs(names, metrics, thresholds):
    """The `Metric`s to report from evaluate's metric names."""
    thresholds = dict(thresholds or {})
    if metrics is None:
        wanted = {name: None for name in names}
    elif isinstance(metrics, dict):
        wanted = dict(metrics)
    else:
        wanted = {name: None for name in metrics}
    unknown = sorted((set(wanted) | set(thresholds)) - set(names))
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}: the model's evaluate() reports "
                         f"{sorted(names)}.")
    specs = []
    for name, spec in wanted.items():
        if isinstance(spec, summary_lib.Metric):
            specs.append(dataclasses.replace(spec, threshold=thresholds.get(name, spec.threshold)))
            continue
        if spec not in (None, "max", "min"):
            raise ValueError(f"metrics[{name!r}] must be 'max' (higher is better), 'min', a "
                             f"tfbf16.study.summary.Metric or None; got {spec!r}.")
        higher = _default_direction(name) if spec is None else spec == "max"
        specs.append(summary_lib.Metric(name, higher_is_better=higher, digits=5,
                                        threshold=thresholds.get(name)))
    return specs


@dataclasses.dataclass
class Comparison:
    """The result of `tfbf16.compare`.

    Attributes:
        runs: one record per (precision, seed): the eval metrics, the
            per-epoch history, the pairing fingerprints, the seconds taken
            and whether it was loaded from `output_dir`.
        summary: the `tfbf16.study.summary.summarize` dict: per precision and
            metric, the mean with its interval, the paired difference to FP32
            with its interval, and a verdict where a threshold was given.
        history: {metric: `summarize_history` dict} of the per-epoch eval
            metrics (when `eval_every_epoch`).
        config: what was compared (precisions, seeds, fit arguments,...).
    """

    runs: list
    summary: dict
    history: dict
    config: dict

    def verdicts(self):
        """{precision: {metric: verdict}} for the metrics with a threshold."""
        return {p: {m: cell["verdict"] for m, cell in cells.items() if "verdict" in cell}
                for p, cells in self.summary["precisions"].items()}

    def to_json(self):
        """The whole result as a JSON string."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    def to_markdown(self):
        """A Markdown report: what was compared, the table, the reading."""
        cfg = self.config
        level = f"{self.summary['confidence']:.0%}"
        loaded = sum(bool(r.get("loaded")) for r in self.runs)
        lines = [
            f"# BF16 comparison: {cfg['model']}",
            "",
            f"Precisions: {', '.join(cfg['precisions'])}; seeds "
            f"{', '.join(map(str, cfg['seeds']))} (paired: same initial weights, batches "
            f"and eval rows for every precision of a seed); fit: "
            f"{json.dumps(cfg['fit_kwargs'])}, batch size {cfg['batch_size']}.",
            "",
            summary_lib.format_table(self.summary),
            "",
            f"Δ = mean over seeds of (precision − FP32) for the same seed; intervals are "
            f"two-sided {level} Student t intervals over {len(cfg['seeds'])} seeds.",
        ]
        unresolved = summary_lib.unresolved(self.summary)
        if unresolved:
            lines += ["", "Not resolved (interval wider than ± threshold / 2; add seeds): "
                      + ", ".join(f"{p} {m}" for p, m in unresolved) + "."]
        runtime = f"Runtime: {cfg['runtime_seconds']:.0f} s"
        if loaded:
            runtime += f" ({loaded} of {len(self.runs)} runs loaded from an earlier call)"
        return "\n".join(lines + ["", runtime + "."]) + "\n"

    def plot(self, path, metric=None):
        """Saves learning curves and paired differences of `metric` as a PNG.

        Args:
            path: the PNG file.
            metric: the metric's name (default: the first with a threshold,
                else the first).
        """
        specs = [summary_lib.Metric.from_config(m) for m in self.summary["metrics"]]
        if metric is None:
            chosen = next((m for m in specs if m.threshold is not None), specs[0])
        else:
            matching = [m for m in specs if m.name == metric]
            if not matching:
                raise ValueError(f"Unknown metric {metric!r}; the comparison reports "
                                 f"{[m.name for m in specs]}.")
            chosen = matching[0]
        plots.save_study_plot(path, self.summary, self.runs, chosen,
                              history=self.history.get(chosen.name),
                              title=f"{self.config['model']}: BF16 comparison")

    def save(self, output_dir):
        """Writes results.json, results.md and compare.png to `output_dir`."""
        os.makedirs(output_dir, exist_ok=True)
        with files.atomic_write(os.path.join(output_dir, "results.json")) as f:
            f.write(self.to_json())
        with files.atomic_write(os.path.join(output_dir, "results.md")) as f:
            f.write(self.to_markdown())
        self.plot(os.path.join(output_dir, "compare.png"))


class _Runner:
    """The runs of one `compare` call."""

    def __init__(self, build_model, train, eval_, *, precisions, seeds, fit_kwargs,
                 compile_kwargs, batch_size, eval_every_epoch, output_dir, overwrite,
                 verbose):
        self.build_model = build_model
        self.train, self.eval = train, eval_
        self.precisions, self.seeds = precisions, seeds
        self.fit_kwargs, self.compile_kwargs = fit_kwargs, compile_kwargs
        self.batch_size = batch_size
        self.eval_every_epoch = eval_every_epoch
        self.output_dir, self.overwrite, self.verbose = output_dir, overwrite, verbose
        self.train_checksum, self.eval_checksum = _BatchChecksum(), _BatchChecksum()
        self.fingerprints = None

    def _build(self, seed):
        """A freshly built FP32 model of `seed`, and its Keras module."""
        for backend in backends.registered_backends():
            backend.keras.utils.set_random_seed(seed)
        model = self.build_model()
        return model, _backend(model).keras

    def _compile_arguments(self, model):
        """Fresh `compile` arguments for one run (a new optimizer object)."""
        if self.compile_kwargs is not None:
            arguments = dict(self.compile_kwargs)
            optimizer = arguments.get("optimizer")
            if optimizer is not None and not isinstance(optimizer, str):
                arguments["optimizer"] = optimizer.__class__.from_config(optimizer.get_config())
            return arguments
        arguments = _backend(model).compile_arguments(model)
        if arguments is None:
            raise ValueError(
                "build_model returned an uncompiled model and no compile_kwargs were given: "
                "compile the model in build_model (its loss, optimizer and metrics are kept) "
                "or pass compile_kwargs=dict(optimizer=..., loss=..., metrics=...).")
        return arguments

    def identity(self, seed, precision, model, initial):
        return {
            "format": FORMAT,
            "model": _without_names(json.loads(model.to_json())),
            "compile": _without_names(_jsonable(model.get_compile_config())),
            "initial_weights_sha256": _sha256_of_arrays(initial),
            "train_sha256": self.fingerprints["train"],
            "eval_sha256": self.fingerprints["eval"],
            "fit_kwargs": _jsonable(self.fit_kwargs),
            "batch_size": self.batch_size,
            "eval_every_epoch": self.eval_every_epoch,
            "precision": precision.name,
            "seed": int(seed),
            "software": {
                "packages": runs_lib.package_versions("tensorflow", "keras", "tf-keras"),
                "sources_sha256": runs_lib.source_fingerprint(tfbf16),
            },
        }

    def run_all(self, check_metric_names):
        """Every run; `check_metric_names(names)` is called after the first one,
        when evaluate's metric names are known (so that a typo fails fast)."""
        self.fingerprints = {"train": self.train.fingerprint(),
                             "eval": self.eval.fingerprint()}
        records, model_name = [], None
        for seed in self.seeds:
            fp32, _ = self._build(seed)
            model_name = model_name or fp32.name
            initial = fp32.get_weights()
            for precision in self.precisions:
                records.append(self._one(seed, precision, initial))
                if len(records) == 1:
                    check_metric_names(records[0]["metric_names"])
        return records, model_name

    def _one(self, seed, precision, initial):
        precision = precision_lib.Precision.parse(precision)
        model, K = self._build(seed)
        model.set_weights(initial)
        arguments = self._compile_arguments(model)
        if self.compile_kwargs is not None:
            model.compile(**arguments)
        directory = None
        if self.output_dir is not None:
            directory = runs_lib.RunDirectory(
                os.path.join(self.output_dir, "runs", f"{precision.name}_seed{seed}"),
                self.identity(seed, precision, model, initial),
                overwrite=self.overwrite,
                what_to_do="Use another output_dir, or pass overwrite=True to train again.",
            ).open()
            done = directory.read_json(RESULT)
            if done is not None:
                self._log(done, loaded=True)
                return dict(done, loaded=True)
        optimizer = arguments["optimizer"]
        if isinstance(optimizer, str):
            optimizer = K.optimizers.get(optimizer)
        trained = precision.apply(model)
        trained.compile(**dict(arguments, optimizer=precision.optimizer(optimizer)))
        record = self._train(trained, K, precision, seed, initial)
        if directory is not None:
            directory.write_json(RESULT, record)
        self._log(record, loaded=False)
        return record

    def _train(self, model, K, precision, seed, initial):
        began = time.perf_counter()
        epochs = self.fit_kwargs["epochs"]
        self.train_checksum.reset()
        self.eval_checksum.reset()
        train = self.train_checksum.watch(self.train.batches(shuffle_seed=seed, epochs=epochs))
        fit_kwargs = dict(self.fit_kwargs)
        if self.train.arrays is not None:
            steps = math.ceil(self.train.rows / self.batch_size)
            fit_kwargs.setdefault("steps_per_epoch", steps)
        validation = self.eval.batches() if self.eval_every_epoch else None
        K.utils.set_random_seed(seed)  # dropout and stochastic rounding, as for every precision
        history = model.fit(train, validation_data=validation, shuffle=False,
                            verbose=self.verbose, **fit_kwargs).history
        train_batches = self.train_checksum.read()
        evaluated = model.evaluate(self.eval_checksum.watch(self.eval.batches()),
                                   return_dict=True, verbose=0)
        evaluated = {name: float(value) for name, value in evaluated.items()}
        per_epoch = []
        for epoch in range(len(next(iter(history.values()), []))):
            point = {"step": epoch + 1}
            for name in evaluated:
                series = history.get(f"val_{name}")
                if series is not None:
                    point[name] = float(series[epoch])
            per_epoch.append(point)
        return {
            "precision": precision.name,
            "seed": int(seed),
            **evaluated,
            "metric_names": sorted(evaluated),
            "history": per_epoch if self.eval_every_epoch else [],
            "train_history": {k: [float(v) for v in vs] for k, vs in history.items()
                              if not k.startswith("val_")},
            "pairing": {
                "initial_weights": _sha256_of_arrays(initial),
                "train_batches": train_batches,
                "eval_rows": self.eval_checksum.read(),
            },
            "seconds": time.perf_counter() - began,
            "loaded": False,
        }

    def _log(self, record, loaded):
        values = ", ".join(f"{k}={record[k]:.5g}" for k in record["metric_names"])
        how = "loaded" if loaded else f"{record['seconds']:.1f} s"
        print(f"[tfbf16.compare] {record['precision']} seed {record['seed']}: {values} ({how})",
              flush=True)


def compare(build_model, train, eval, *, precisions=("fp32", "rne", "trunc"), seeds=5,
            fit_kwargs=None, metrics=None, thresholds=None, output_dir=None,
            compile_kwargs=None, batch_size=32, eval_every_epoch=True,
            confidence=stats.CONFIDENCE, overwrite=False, verbose=0):
    """Trains `build_model()` in FP32 and in BF16, paired by seed, and compares.

    Args:
        build_model: a function returning a fresh Keras 3 or tf_keras model,
            compiled (its loss, optimizer and metrics are used) or not (then
            pass `compile_kwargs`). It is called once per run, after
            `set_random_seed(seed)`; the runs of a seed all start from the
            weights of its first call.
        train: the training data: a `tf.data.Dataset` of batches (read as it
            is, every epoch; it must give the same batches for every run of
            a seed: shuffle with a seed, or not at all) or an `(x, y)` tuple
            of arrays (batched here, shuffled per epoch by the seed, the same
            order for every precision).
        eval: the evaluation data, a dataset or `(x, y)` arrays (never
            shuffled); every row is scored by `model.evaluate`.
        precisions: names such as "fp32", "rne", "trunc", "stochastic",
            "native", or "rne+bf16w_kahan" for BF16 weights (see
            `tfbf16.study.precision`); "fp32", the baseline, is required.
        seeds: the number of seeds (0, 1, ...) or a list of seeds.
        fit_kwargs: arguments of `model.fit` (e.g. `{"epochs": 5,
            "callbacks": [...]}`); the data, batch size and verbosity are
            set by `compare`.
        metrics: which of `evaluate`'s metrics to report: None for all; a
            list of names; or a dict from name to "max" / "min" (the better
            direction; guessed from the name otherwise: accuracy, AUC, ...
            are higher-is-better, losses and errors lower).
        thresholds: {metric name: the smallest difference that matters}; a
            metric with a threshold gets a verdict ("within 0.01 of FP32",
            "worse than FP32 by >= 0.01", ...). Default: report only.
        output_dir: where runs are stored (resumable) and results.json,
            results.md and compare.png are written; None keeps everything in
            memory.
        compile_kwargs: `model.compile` arguments for an uncompiled model.
        batch_size: the batch size for array inputs.
        eval_every_epoch: evaluate on `eval` after every epoch too, for the
            learning curves and the paired difference over training.
        confidence: the level of every interval.
        overwrite: retrain runs whose stored identity differs (else refuse).
        verbose: Keras' `fit` verbosity (0 silent, 1 progress bar); one line
            per run is printed either way.

    Returns:
        A `Comparison` (`.summary`, `.to_markdown()`, `.to_json()`,
        `.plot(path)`, `.save(dir)`, `.verdicts()`).

    Raises:
        ValueError: on invalid arguments, unknown metrics, runs that cannot
            be paired, or an `output_dir` holding runs of another identity.
        TypeError: for inputs or models of the wrong kind.

    Example:

    >>> def build_model():
    ...     model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    ...     model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...         from_logits=True), metrics=["accuracy"])
    ...     return model
    >>> result = tfbf16.compare(build_model, (x, y), (x_test, y_test), seeds=3,
    ...                         fit_kwargs={"epochs": 2}, thresholds={"accuracy": 0.01})
    >>> result.verdicts()["rne"]["accuracy"]
    """
    if not callable(build_model):
        raise TypeError(f"build_model must be a function returning a Keras model; got "
                        f"{type(build_model).__name__}.")
    precisions = [p.name for p in precision_lib.expand(list(precisions))]
    seeds = _check_seeds(seeds)
    fit_kwargs = _check_fit_kwargs(fit_kwargs)
    stats.check_confidence(confidence)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    if compile_kwargs is not None and not isinstance(compile_kwargs, dict):
        raise TypeError(f"compile_kwargs must be a dict of model.compile arguments; got "
                        f"{type(compile_kwargs).__name__}.")
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir={output_dir} is a file; give a directory.")
    began = time.perf_counter()
    runner = _Runner(build_model, _Input(train, "train", batch_size),
                     _Input(eval, "eval", batch_size), precisions=precisions, seeds=seeds,
                     fit_kwargs=fit_kwargs, compile_kwargs=compile_kwargs,
                     batch_size=batch_size, eval_every_epoch=bool(eval_every_epoch),
                     output_dir=output_dir, overwrite=overwrite, verbose=verbose)
    for name, threshold in dict(thresholds or {}).items():
        summary_lib.Metric(name, higher_is_better=False, threshold=threshold)  # checks it
    records, model_name = runner.run_all(
        lambda names: _metric_specs(names, metrics, thresholds))
    specs = _metric_specs(records[0]["metric_names"], metrics, thresholds)
    summary = summary_lib.summarize(
        records, precisions=precisions, seeds=seeds, metrics=specs, confidence=confidence,
        pairing_within_seed=("initial_weights", "train_batches"),
        pairing_everywhere=("eval_rows",))
    history = {}
    if eval_every_epoch:
        for spec in specs:
            history[spec.name] = summary_lib.summarize_history(
                records, precisions=precisions, seeds=seeds, metric=spec,
                confidence=confidence)
    result = Comparison(runs=records, summary=summary, history=history, config={
        "model": model_name, "precisions": precisions, "seeds": seeds,
        "fit_kwargs": _jsonable(fit_kwargs), "batch_size": batch_size,
        "train_rows": runner.train.rows, "eval_rows": runner.eval.rows,
        "runtime_seconds": time.perf_counter() - began,
    })
    if output_dir is not None:
        result.save(output_dir)
    return result
