"""Command-line flags shared by `recsys.train` and `recsys.study`.

Both programs train the same model on the same data with the same schedule,
so the data, model and training flags (and their validators) are defined once
here and turned into configuration objects by `data_config`, `model_config`
and `train_config`. Each program adds its own flags (`--precision`/`--seed`/
`--model_dir` for train, `--precisions`/`--seeds`/`--output_dir` for study).

The defaults are those of `trainer.DataConfig`, `ModelConfig` and
`TrainConfig`: the study's default configuration (see `recsys.study`), a
small DCN-V2 on the synthetic Criteo-like stream, sized so that the default
study finishes within 10 minutes on 2 CPU cores.
"""

from absl import flags
from absl import logging

from recsys import distribute
from recsys import model as model_lib
from recsys import trainer

DATA_SOURCES = ("synthetic", "criteo", "tfrecord")

# The flag defaults are the config defaults: one source of truth.
_DATA = trainer.DataConfig()
_MODEL = trainer.ModelConfig()
_TRAIN = trainer.TrainConfig()


def _positive_int_list(values):
    try:
        return all(int(v) > 0 for v in values)
    except (TypeError, ValueError):
        return False


def define_data_flags(flag_values=flags.FLAGS):
    """Defines the input flags: source, path, sizes and batch size."""
    flags.DEFINE_enum("data", _DATA.source, DATA_SOURCES,
                      "Input source: the synthetic Criteo-like stream, raw "
                      "Criteo TSV files, or TFRecords from recsys.prepare.",
                      flag_values=flag_values)
    flags.DEFINE_string("data_path", None,
                        "File, directory or glob of the criteo/tfrecord "
                        "input (required unless --data=synthetic).",
                        flag_values=flag_values)
    flags.DEFINE_integer("data_seed", 0,
                         "Data seed: picks the synthetic stream (its ground "
                         "truth, train and eval rows); file sources ignore it.",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer("batch_size", _DATA.batch_size,
                         "Training (and eval) batch size.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("eval_rows", _DATA.eval_rows,
                         "Rows in the evaluation set.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("num_buckets", None,
                         "Hash buckets per categorical feature for criteo "
                         "input (default: the data layer's choice).",
                         lower_bound=2, flag_values=flag_values)
    flags.DEFINE_float("vocab_scale", _DATA.vocab_scale,
                       "Synthetic input: scales the cardinality of large "
                       "categorical features (1.0 ~ 416k ids in total).",
                       lower_bound=0.0, flag_values=flag_values)
    flags.register_validator(
        "vocab_scale", lambda v: v > 0, "--vocab_scale must be > 0.",
        flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["data", "data_path"],
        lambda f: f["data"] == "synthetic" or bool(f["data_path"]),
        "--data_path is required when --data is criteo or tfrecord.",
        flag_values=flag_values)


def define_model_flags(flag_values=flags.FLAGS):
    """Defines the DCN-V2 architecture flags."""
    flags.DEFINE_integer("embedding_dim", _MODEL.embedding_dim,
                         "Width of each categorical embedding.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("num_cross_layers", _MODEL.num_cross_layers,
                         "Number of cross layers.", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_integer("projection_dim", _MODEL.projection_dim,
                         "Rank of low-rank cross layers (W = U V^T); unset "
                         "for full-rank cross layers.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_list("deep_layers", [str(u) for u in _MODEL.deep_layers],
                      "Comma-separated widths of the deep tower's ReLU "
                      "layers (empty for none).", flag_values=flag_values)
    flags.DEFINE_enum("structure", _MODEL.structure, model_lib.STRUCTURES,
                      "Cross and deep towers stacked or side by side.",
                      flag_values=flag_values)
    flags.register_validator(
        "deep_layers", _positive_int_list,
        "--deep_layers must be a comma-separated list of positive integers, "
        "e.g. --deep_layers=256,128.", flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["num_cross_layers", "deep_layers"],
        lambda f: f["num_cross_layers"] > 0 or bool(f["deep_layers"]),
        "The model needs --num_cross_layers > 0 or a non-empty "
        "--deep_layers.", flag_values=flag_values)


def define_training_flags(flag_values=flags.FLAGS):
    """Defines the optimization, evaluation and checkpointing flags."""
    flags.DEFINE_integer("train_steps", _TRAIN.train_steps,
                         "Training steps (batches).", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_float("learning_rate", _TRAIN.learning_rate,
                       "Adam learning rate (the peak, with a schedule).",
                       flag_values=flag_values)
    flags.register_validator(
        "learning_rate", lambda v: v > 0, "--learning_rate must be > 0.",
        flag_values=flag_values)
    flags.DEFINE_enum("lr_schedule", _TRAIN.lr_schedule, trainer.LR_SCHEDULES,
                      "constant, or cosine decay of the learning rate to 0 "
                      "at --train_steps.", flag_values=flag_values)
    flags.DEFINE_integer("eval_every", _TRAIN.eval_every,
                         "Evaluate every this many steps for the learning "
                         "curve (0: only at the end).", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_integer("eval_steps", _TRAIN.eval_steps,
                         "Eval batches used by each periodic evaluation "
                         "(0: the whole eval set). The final evaluation "
                         "always uses the whole eval set.", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_integer("checkpoint_every", _TRAIN.checkpoint_every,
                         "Save a checkpoint every this many steps (and at "
                         "the end).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("log_every", _TRAIN.log_every,
                         "Update the progress bar and TensorBoard training "
                         "scalars every this many steps.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_bool("jit_compile", _TRAIN.jit_compile,
                      "Compile the train and eval steps with XLA (slower for "
                      "this model on CPU: measured 2x in FP32).",
                      flag_values=flag_values)
    flags.DEFINE_integer("monitor_every", _TRAIN.monitor_every,
                         "Every this many steps, measure each emulated "
                         "layer's BF16 rounding error, underflow and overflow "
                         "of weights, inputs and gradients "
                         "(tfbf16.callbacks.PrecisionMonitor; written to "
                         "precision_monitor.json and TensorBoard; 0: off).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_bool("memory_check", True,
                      "Before training, estimate the memory of the model and "
                      "optimizer state and stop if it cannot fit in this "
                      "machine's available memory.", flag_values=flag_values)
    flags.DEFINE_bool("tensorboard", _TRAIN.tensorboard,
                      "Write TensorBoard event files (training loss, eval "
                      "metrics, BF16 statistics) into each run directory.",
                      flag_values=flag_values)


def define_distribution_flags(flag_values=flags.FLAGS):
    """Defines --strategy and --tpu."""
    flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                      "tf.distribute strategy: default (one device), mirrored "
                      "(this machine's devices), multi_worker (the workers of "
                      "TF_CONFIG, synchronous), parameter_server (TF_CONFIG's "
                      "chief, workers and ps tasks; tables sharded over the ps), "
                      "tpu (with --tpu). See the README, 'Running on a cluster'.",
                      flag_values=flag_values)
    flags.DEFINE_integer("ps_min_shard_bytes", distribute.MIN_SHARD_BYTES,
                         "With --strategy=parameter_server: variables (embedding "
                         "tables) larger than this are split into shards of at "
                         "least this many bytes, at most one per ps task.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_string("tpu", None,
                        "With --strategy=tpu: the TPU's gRPC address, Cloud TPU "
                        "name, or 'local' on a TPU VM. Untested on real TPUs.",
                        flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["strategy", "tpu"],
        lambda f: (f["strategy"] == "tpu") == (f["tpu"] is not None),
        "--tpu goes with --strategy=tpu, and --strategy=tpu needs --tpu (use "
        "--tpu=local on a TPU VM).", flag_values=flag_values)


def define_common_flags(flag_values=flags.FLAGS):
    """Defines the data, model, training and distribution flags."""
    define_data_flags(flag_values)
    define_model_flags(flag_values)
    define_training_flags(flag_values)
    define_distribution_flags(flag_values)


def make_distribution(flag_values=flags.FLAGS):
    """The `distribute.Distribution` of the parsed --strategy and --tpu, logged.

    A "worker" or "ps" task of a parameter-server cluster does not train: it
    serves the chief here until the job ends (and exits if its server stops).
    """
    distribution = distribute.make_distribution(
        flag_values.strategy, tpu=flag_values.tpu,
        min_shard_bytes=flag_values.ps_min_shard_bytes)
    logging.info("Distribution: %s", distribution.describe())
    if distribution.is_server_only:
        logging.info("Serving the cluster until the job ends.")
        distribution.server.join()
        raise SystemExit(0)
    return distribution


def default_precision(flag_values=flags.FLAGS, name="precision"):
    """The compute precision flag's value; "native" on a TPU unless given."""
    if flag_values.strategy == "tpu" and not flag_values[name].present:
        return "native"
    return flag_values[name].value


def data_config(flag_values=flags.FLAGS):
    """The `trainer.DataConfig` of the parsed flags."""
    f = flag_values
    return trainer.DataConfig(
        source=f.data, data_path=f.data_path, batch_size=f.batch_size,
        eval_rows=f.eval_rows, num_buckets=f.num_buckets,
        vocab_scale=f.vocab_scale)


def model_config(flag_values=flags.FLAGS):
    """The `trainer.ModelConfig` of the parsed flags."""
    f = flag_values
    return trainer.ModelConfig(
        embedding_dim=f.embedding_dim, num_cross_layers=f.num_cross_layers,
        projection_dim=f.projection_dim,
        deep_layers=tuple(int(u) for u in f.deep_layers),
        structure=f.structure)


def train_config(flag_values=flags.FLAGS):
    """The `trainer.TrainConfig` of the parsed flags."""
    f = flag_values
    return trainer.TrainConfig(
        train_steps=f.train_steps, learning_rate=f.learning_rate,
        lr_schedule=f.lr_schedule,
        eval_every=f.eval_every, eval_steps=f.eval_steps or None,
        checkpoint_every=f.checkpoint_every, log_every=f.log_every,
        jit_compile=f.jit_compile, monitor_every=f.monitor_every,
        tensorboard=f.tensorboard)
