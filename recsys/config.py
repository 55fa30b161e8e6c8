"""What a DCN run is made of: data, model, training and distribution settings.

Four frozen dataclasses, free of TensorFlow so that defining command-line
flags costs nothing: `DataConfig`, `ModelConfig`, `TrainConfig` and
`DistributionConfig`. Every field carries its help text and its bounds in
`dataclasses.field(metadata=...)`; `recsys.flags_lib` turns the fields into
absl flags (one flag per field, same name unless `flag=` says otherwise) and
parsed flags back into configs, so a setting is declared exactly once. Each
config checks itself on construction (`ValueError` naming the flag), so the
Python API and the flags refuse the same mistakes.

Which fields change a run's numbers is declared too (`identity=False` for
those that do not, such as checkpoint intervals): `recsys.run_dir` builds a
run's identity from the others.

Example:

>>> DataConfig(batch_size=512).eval_rows
262144
>>> ModelConfig(deep_layers=(64, 0))
Traceback (most recent call last):
ValueError: --deep_layers must be positive layer widths; got (64, 0).
"""

import dataclasses
import math
from typing import Optional, Tuple

DATA_SOURCES = ("synthetic", "criteo", "tfrecord")
STRUCTURES = ("stacked", "parallel")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server", "tpu")
#: Default largest fraction of malformed lines of a split (more stops the run).
MAX_MALFORMED_FRACTION = 0.01
#: Parameter-server sharding: tables above this size are split into shards of
#: at least this many bytes, at most one per parameter server.
MIN_SHARD_BYTES = 8 << 20


def setting(default, help, *, flag=None, choices=None, lower_bound=None,
            identity=True):
    """A config field with what its flag needs.

    Args:
        default: the default value.
        help: the flag's help text.
        flag: the flag's name, if not the field's.
        choices: the allowed values of a str field (an enum flag).
        lower_bound: the smallest value of a numeric field.
        identity: whether the setting changes a run's numbers (see
            `recsys.run_dir`).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "lower_bound": lower_bound,
        "identity": identity})


def flag_name(field):
    """The command-line flag of a config field."""
    return field.metadata.get("flag") or field.name


def identity_fields(config):
    """{field name: value} of the fields of `config` that change a run's numbers."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata.get("identity", True)}


def _check_bounds(config):
    """Checks every field's choices and lower bound (messages name the flag)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = flag_name(field)
        choices, bound = field.metadata.get("choices"), field.metadata.get("lower_bound")
        if choices is not None and value not in choices:
            raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}.")
        if bound is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"--{name} must be a number; got {value!r}.")
            if not value >= bound or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"--{name} must be >= {bound}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run trains and evaluates on (see `recsys.data`)."""

    source: str = setting(
        "synthetic", "Input source: the synthetic Criteo-like stream, raw Criteo TSV "
        "files, or TFRecords from recsys.prepare.", flag="data", choices=DATA_SOURCES)
    data_path: Optional[str] = setting(
        None, "For --data=criteo: a TSV file (plain or gzip), a directory of them, a glob "
        "or a comma-separated list; for --data=tfrecord: the directory recsys.prepare "
        "wrote.", identity=False)
    data_seed: int = setting(
        0, "Data seed: picks the synthetic stream (its ground truth, train and eval "
        "rows); file sources ignore it.", lower_bound=0)
    batch_size: int = setting(2048, "Training batch size (global, over all replicas); "
                              "also the eval batch size.", lower_bound=1)
    eval_rows: int = setting(
        1 << 18, "Rows of the evaluation set, all of them scored (for criteo: lines, "
        "malformed ones included).", lower_bound=1)
    num_buckets: Optional[int] = setting(
        None, "Hash buckets per categorical feature for criteo input (default: the "
        "data layer's choice).", lower_bound=2)
    vocab_scale: float = setting(
        0.1, "Synthetic input: scales the cardinality of large categorical features "
        "(1.0 ~ 416k ids in total).", lower_bound=0.0)
    strict: bool = setting(
        False, "Stop at the first malformed input line, naming its file, line and "
        "what is wrong with it.", identity=False)
    max_malformed_fraction: float = setting(
        MAX_MALFORMED_FRACTION, "Stop when more than this fraction of the lines read from a split is "
        "malformed (they are skipped, counted and reported below it).",
        lower_bound=0.0, identity=False)

    def __post_init__(self):
        _check_bounds(self)
        if not self.vocab_scale > 0:
            raise ValueError(f"--vocab_scale must be > 0; got {self.vocab_scale!r}.")
        if not self.max_malformed_fraction <= 1:
            raise ValueError("--max_malformed_fraction is a fraction of the lines "
                             f"read, at most 1; got {self.max_malformed_fraction!r}.")
        if self.source != "criteo" and (
                self.strict or self.max_malformed_fraction != MAX_MALFORMED_FRACTION):
            checked = (" (prepared TFRecords were checked when recsys.prepare wrote them)"
                       if self.source == "tfrecord" else "")
            raise ValueError("--strict and --max_malformed_fraction apply to the lines of "
                             f"--data=criteo, not --data={self.source}{checked}.")
        if self.source != "criteo" and self.num_buckets is not None:
            raise ValueError(f"--num_buckets applies to --data=criteo, not --data={self.source}.")
        if (self.source == "synthetic") == bool(self.data_path):
            raise ValueError(
                "--data_path is required when --data is criteo or tfrecord, and not "
                f"used with --data=synthetic (got --data={self.source}, "
                f"--data_path={self.data_path!r}).")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """DCN-V2 architecture; see `recsys.model.build_dcn` for the meaning."""

    embedding_dim: int = setting(8, "Width of each categorical embedding.", lower_bound=1)
    num_cross_layers: int = setting(2, "Number of cross layers.", lower_bound=0)
    projection_dim: Optional[int] = setting(
        None, "Rank of low-rank cross layers (W = U V^T); unset for full-rank cross "
        "layers.", lower_bound=1)
    deep_layers: Tuple[int, ...] = setting(
        (128, 64), "Comma-separated widths of the deep tower's ReLU layers (empty for "
        "none).")
    structure: str = setting("stacked", "Cross and deep towers stacked or side by side.",
                             choices=STRUCTURES)

    def describe(self):
        """One line: "DCN-V2 stacked, 2 cross layers (full rank), deep 128,64, embedding 8"."""
        rank = "full rank" if self.projection_dim is None else f"rank {self.projection_dim}"
        deep = ",".join(str(u) for u in self.deep_layers) or "none"
        return (f"DCN-V2 {self.structure}, {self.num_cross_layers} cross layers ({rank}), "
                f"deep {deep}, embedding {self.embedding_dim}")

    def __post_init__(self):
        _check_bounds(self)
        layers = tuple(self.deep_layers)
        if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in layers):
            raise ValueError("--deep_layers must be positive layer widths, e.g. "
                             f"--deep_layers=256,128; got {layers}.")
        object.__setattr__(self, "deep_layers", layers)
        if self.num_cross_layers == 0 and not layers:
            raise ValueError("The model needs --num_cross_layers > 0 or a non-empty "
                             "--deep_layers.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization, evaluation and checkpointing schedule of a run."""

    train_steps: int = setting(300, "Training steps (batches).", lower_bound=1)
    learning_rate: float = setting(4e-3, "Adam learning rate (the peak, with a schedule).",
                                   lower_bound=0.0)
    lr_schedule: str = setting("cosine", "constant, or cosine decay of the learning rate "
                               "to 0 at --train_steps.", choices=LR_SCHEDULES)
    eval_every: int = setting(
        60, "Evaluate every this many steps for the learning curve, and at step 0 "
        "(0: only at the end).", lower_bound=0)
    eval_steps: int = setting(
        8, "Eval batches used by each periodic evaluation (0: the whole eval set). "
        "The final evaluation always uses the whole eval set.", lower_bound=0)
    eval_points: int = setting(
        0, "Evaluate on the whole eval set at step 0, at this many log-spaced steps up "
        "to --train_steps and at 80% of them, for the paired difference over training and "
        "the flatness of its end (instead of --eval_every's subset evaluations; 0: off).",
        lower_bound=0)
    checkpoint_every: int = setting(
        100, "Save a checkpoint every this many steps (and at the end).",
        lower_bound=1, identity=False)
    log_every: int = setting(
        20, "Update the progress bar and TensorBoard training scalars every this many "
        "steps.", lower_bound=1, identity=False)
    jit_compile: bool = setting(
        False, "Compile the train and eval steps with XLA (slower for this model on "
        "CPU: measured 2x in FP32).")
    monitor_every: int = setting(
        0, "Every this many steps, measure each emulated layer's BF16 rounding error, "
        "underflow and overflow of weights, inputs and gradients "
        "(tfbf16.callbacks.PrecisionMonitor; written to precision_monitor.json and "
        "TensorBoard; 0: off).", lower_bound=0, identity=False)
    tensorboard: bool = setting(
        True, "Write TensorBoard event files (training loss, eval metrics, BF16 "
        "statistics) into each run directory.", identity=False)

    def __post_init__(self):
        _check_bounds(self)
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0; got {self.learning_rate!r}.")
        if self.eval_points and self.eval_every:
            raise ValueError("--eval_points (full evaluations at log-spaced steps) and "
                             "--eval_every (subset evaluations every N steps) exclude each "
                             "other; set --eval_every=0.")

    def evaluation_steps(self):
        """The steps after which the learning curve is evaluated, and on how many
        eval batches (None: all).

        Returns:
            `(steps, batches)`: a sorted tuple of steps (step 0, before
            training, included), and the eval batches of each evaluation.
        """
        if self.eval_points:
            # Log-spaced from 1 to train_steps, and the step at 80% of training
            # (from which the end of the learning curve is judged flat or not).
            points = {0, self.train_steps, round(0.8 * self.train_steps)}
            for k in range(self.eval_points):
                points.add(round(self.train_steps ** (k / max(self.eval_points - 1, 1))))
            return tuple(sorted(points)), None
        if self.eval_every:
            return (tuple(range(0, self.train_steps + 1, self.eval_every)),
                    self.eval_steps or None)
        return (), None


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    """Where a run trains: a `tf.distribute` strategy (see `recsys.distribute`)."""

    strategy: str = setting(
        "default", "tf.distribute strategy: default (one device), mirrored (this "
        "machine's devices), multi_worker (the workers of TF_CONFIG, synchronous), "
        "parameter_server (TF_CONFIG's chief, workers and ps tasks; tables sharded over "
        "the ps), tpu (with --tpu). See the README, 'Running on a cluster'.",
        choices=STRATEGIES)
    ps_min_shard_bytes: int = setting(
        MIN_SHARD_BYTES, "With --strategy=parameter_server: variables (embedding "
        "tables) larger than this are split into shards of at least this many bytes, "
        "at most one per ps task.", lower_bound=1, identity=False)
    tpu: Optional[str] = setting(
        None, "With --strategy=tpu: the TPU's gRPC address, Cloud TPU name, or 'local' "
        "on a TPU VM. Untested on real TPUs.", identity=False)

    def __post_init__(self):
        _check_bounds(self)
        if (self.strategy == "tpu") != (self.tpu is not None):
            raise ValueError("--tpu goes with --strategy=tpu, and --strategy=tpu needs "
                             "--tpu (use --tpu=local on a TPU VM).")


CONFIGS = (DataConfig, ModelConfig, TrainConfig, DistributionConfig)
