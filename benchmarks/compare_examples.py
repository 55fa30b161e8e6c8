r"""`tfbf16.compare` on two small real data sets, as the README shows it.

- A Keras 3 CNN on scikit-learn's 8x8 digits (1,437 training images, the
  last 360 held out): sparse categorical cross-entropy and accuracy.
- A tf_keras MLP on scikit-learn's breast-cancer data (455 training rows,
  114 held out, standardized by the training rows): binary cross-entropy and
  accuracy.

Each compares FP32, BF16-RNE and BF16-TRUNC over `--seeds` paired seeds, with
a verdict at a 0.01 accuracy threshold, and writes results.json, results.md
and compare.png under `--output_dir/<name>/` (resumable).

Usage:

    python -m benchmarks.compare_examples [--seeds=5] [--epochs=10]
        [--output_dir=benchmarks_output/compare]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import datasets  # noqa: E402
import tf_keras  # noqa: E402

import tfbf16  # noqa: E402
from tfbf16.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 5, "Paired seeds per comparison.", lower_bound=2)
flags.DEFINE_integer("epochs", 10, "Training epochs of every run.", lower_bound=1)
flags.DEFINE_string("output_dir", "benchmarks_output/compare",
                    "Where each comparison writes its results (and resumes).")


def digits():
    """(train, eval) `(x, y)` of scikit-learn's 8x8 digits, the last 360 held out."""
    data = datasets.load_digits()
    x = (data.images[..., None] / 16.0).astype(np.float32)
    return (x[:-360], data.target[:-360]), (x[-360:], data.target[-360:])


def digits_cnn():
    """A small Keras 3 CNN for the digits, compiled."""
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ], name="digits_cnn")
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def breast_cancer():
    """(train, eval) `(x, y)` of scikit-learn's breast-cancer data, the last 114
    rows held out, standardized with the training rows' statistics."""
    x, y = datasets.load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    mean, std = x[:-114].mean(0), x[:-114].std(0)
    x = (x - mean) / std
    y = y.astype(np.float32)[:, None]
    return (x[:-114], y[:-114]), (x[-114:], y[-114:])


def cancer_mlp():
    """A tf_keras MLP for the breast-cancer data, compiled."""
    inputs = tf_keras.Input((30,))
    hidden = tf_keras.layers.Dense(32, activation="relu")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(hidden), name="cancer_mlp")
    model.compile(tf_keras.optimizers.SGD(0.05),
                  tf_keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf_keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    return model


EXAMPLES = {"digits_cnn": (digits_cnn, digits), "cancer_mlp": (cancer_mlp, breast_cancer)}


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])}")
    for name, (build_model, load) in EXAMPLES.items():
        train, eval_ = load()
        result = tfbf16.compare(build_model, train, eval_, seeds=FLAGS.seeds,
                                fit_kwargs={"epochs": FLAGS.epochs},
                                thresholds={"accuracy": 0.01},
                                output_dir=os.path.join(FLAGS.output_dir, name))
        print(result.to_markdown())


if __name__ == "__main__":
    cli.run(main, resumable=True)
