"""A DCN run's directory: its identity, result files and checkpoints.

A run directory holds

- `identity.json`: what determines the run's numbers (see `run_identity`):
  a restart with other settings or other input data is refused, naming
  what differs (`--overwrite` retrains instead);
- `checkpoints/`: `tf.train.CheckpointManager` over model, optimizer and
  step;
- `history.json`: the learning curve so far; `result.json`: the final
  result; `precision_monitor.json`: BF16 statistics (with monitoring);
- `train/`, `eval/`, `bf16/`: TensorBoard event files.

Every JSON file is written atomically (`tfbf16.utils.files`).
"""

import hashlib
import os

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

import tensorflow as tf

import tfbf16
from tfbf16.study import runs
from tfbf16.study.precision import Precision

from recsys import config as config_lib
from recsys import model as model_lib

HISTORY = "history.json"
RESULT = "result.json"
MONITOR = "precision_monitor.json"
#: Bumped when the meaning of a run directory's files changes.
FORMAT = "recsys-run-v2"
_PACKAGES = ("tensorflow", "keras", "tf-keras", "tensorflow-recommenders")


def software():
    """The versions and code that compute a run (part of its identity)."""
    return {"packages": runs.package_versions(*_PACKAGES),
            "sources_sha256": runs.source_fingerprint(tfbf16, recsys)}


def run_identity(data_config, model_config, train_config, precision, seed, *,
                 input_fingerprint, distribution):
    """The settings and inputs that determine a run's numbers (JSON-ready).

    Everything that changes the trained weights or the reported metrics is
    in it: the data settings and a fingerprint of the input (see
    `recsys.data`), the model, the training and evaluation schedule, the
    precision, the seed, the strategy and its replicas, and the software.
    Left out: settings that change neither (checkpoint and log intervals,
    monitoring, TensorBoard, malformed-line limits), and the number of steps
    under a constant learning rate, so that such a run can be extended.
    """
    train = config_lib.identity_fields(train_config)
    if train_config.lr_schedule == "constant":
        train.pop("train_steps")
    return {
        "format": FORMAT,
        "data": {**config_lib.identity_fields(data_config), "input": input_fingerprint},
        "model": config_lib.identity_fields(model_config),
        "train": train,
        "precision": Precision.parse(precision).name,
        "seed": int(seed),
        "strategy": {"name": distribution.name, "replicas": distribution.num_replicas},
        "software": software(),
    }


class RunDirectory(runs.RunDirectory):
    """A DCN run's directory (see the module docstring).

    Args:
        path: the directory.
        identity: `run_identity(...)`.
        overwrite: delete what the directory holds and start over.
        writer: False on the non-chief workers of a multi-worker run.
    """

    def __init__(self, path, identity, *, overwrite=False, writer=True):
        super().__init__(path, identity, overwrite=overwrite, writer=writer,
                         what_to_do="Use another --model_dir/--output_dir, or pass "
                         "--overwrite to delete it and train again.")

    @property
    def checkpoint_dir(self):
        return self.file("checkpoints")

    def result(self):
        """The finished run's result, or None."""
        return self.read_json(RESULT)

    def history(self, up_to_step):
        """The periodic evaluations recorded up to `up_to_step`."""
        return [h for h in (self.read_json(HISTORY) or []) if h["step"] <= up_to_step]

    def monitor_records(self, before_step):
        """The PrecisionMonitor records of steps before `before_step`."""
        return [r for r in (self.read_json(MONITOR) or []) if r["step"] < before_step]


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
    model = model_lib.build_from_config(model_config, vocab_sizes)
    checkpoint = tf.train.Checkpoint(model=Precision.parse(precision).apply(model))
    checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    return model
