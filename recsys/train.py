r"""Trains and evaluates the DCN-V2 click model at one precision.

FP32 trains the plain model; `rne`, `trunc`, `stochastic` and `native` train
the same model (same initial weights for the same `--seed`) wrapped by
`tfbf16.wrap(model, rounding=precision)`. `--weights_precision=bf16` stores
the weights in BF16 after every update, rounded with `--update_rounding`.

Writes checkpoints, TensorBoard event files, the learning curve and the
result (eval log loss over every eval row, AUC, calibration, and the input
report: rows read and malformed lines per split) to `--model_dir`. A killed
run started again with the same flags resumes from its last checkpoint and
ends with the same result as an uninterrupted run; a finished run with the
same settings and input is reported, not trained again. A `--model_dir`
holding a run of other settings or other input data is refused, naming what
differs (`--overwrite` deletes it and trains again).

Usage:

    python -m recsys.train --model_dir=/tmp/dcn_rne --precision=rne
    python -m recsys.train --model_dir=/tmp/dcn_criteo --data=criteo \
        --data_path=train.txt --embedding_dim=39 --deep_layers=562,562 \
        --projection_dim=128 --train_steps=100000
    python -m recsys.train --model_dir=/tmp/dcn_bf16w --precision=rne \
        --weights_precision=bf16 --update_rounding=kahan --monitor_every=50
    tensorboard --logdir=/tmp/dcn_rne

Malformed input lines are skipped and reported; `--strict` stops at the
first one, and more than `--max_malformed_fraction` of a split stops the run.
Run `python -m recsys.train --helpfull` for every flag.
"""

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

from absl import app
from absl import flags
from absl import logging

from tfbf16.utils import cli

from recsys import batches
from recsys import distribute
from recsys import flags_lib
from recsys import memory
from tfbf16.study import precision as precision_lib
from recsys import trainer
from recsys.data import accounting

FLAGS = flags.FLAGS

flags_lib.define_common_flags()
flags.adopt_module_key_flags(flags_lib)  # --help lists them too
flags.DEFINE_enum("precision", "fp32", precision_lib.COMPUTE_PRECISIONS,
                  "Compute precision: fp32, or the tfbf16 rounding of the BF16 "
                  "emulation (native: real bfloat16 kernels; the default with "
                  "--strategy=tpu).")
flags.DEFINE_enum("weights_precision", "fp32", precision_lib.WEIGHTS_PRECISIONS,
                  "fp32: FP32 master weights (the paper's setup); bf16: every "
                  "weight is stored as a BF16 value after each update "
                  "(tfbf16.optimizers.BF16Weights).")
flags.DEFINE_enum("update_rounding", None, precision_lib.UPDATE_ROUNDINGS,
                  "With --weights_precision=bf16: how updated weights are "
                  "rounded to BF16 (default rne; kahan adds a BF16 "
                  "compensation buffer per weight).")
flags.register_multi_flags_validator(
    ["weights_precision", "update_rounding"],
    lambda f: f["update_rounding"] is None or f["weights_precision"] == "bf16",
    "--update_rounding applies to BF16 weights: add --weights_precision=bf16.")
flags.DEFINE_integer("seed", 0, "Model initialization seed.", lower_bound=0)
flags.DEFINE_string("model_dir", None,
                    "Directory for checkpoints, TensorBoard logs and "
                    "results; an existing run there is resumed.")
flags.mark_flag_as_required("model_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    data_config, model_config, train_config, distribution_config = (
        flags_lib.configs_from_flags())
    precision = precision_lib.Precision(flags_lib.default_precision(),
                                        FLAGS.weights_precision, FLAGS.update_rounding)
    distribution = distribute.start(distribution_config)
    bundle = batches.make_bundle(data_config, distribution)
    logging.info("Data: %s", bundle.description)
    logging.info("Precision %s: %s", precision.name, precision.describe())
    if FLAGS.memory_check:
        memory.check_fits(model_config, bundle.vocab_sizes, precision, distribution)
    result = trainer.run(
        bundle, data_config, model_config, train_config, precision=precision,
        seed=FLAGS.seed, model_dir=FLAGS.model_dir, distribution=distribution,
        verbose=int(distribution.is_chief), overwrite=FLAGS.overwrite)
    if not distribution.is_chief:
        return
    final = result["final"]
    print(f"{precision.name} seed {FLAGS.seed}, {result['steps']} steps: "
          f"eval log loss {final['log_loss']:.6f}, AUC {final['auc']:.5f}, "
          f"calibration {final['calibration']:.4f} ({final['count']} eval rows)")
    print(f"Input: {accounting.describe_report(result['input'])}")


if __name__ == "__main__":
    cli.run(main, resumable=True)
