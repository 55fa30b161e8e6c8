"""`tfbf16.compare`: paired FP32-vs-BF16 studies of any Keras model."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from scipy import stats as scipy_stats

import tfbf16
from tfbf16.study.runs import RunMismatchError

compare = tfbf16.compare


def _data(rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


TRAIN, EVAL = _data(256, 1), _data(96, 2)


def keras3_model():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)], name="keras3_mlp")
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def tf_keras_model():
    inputs = tf_keras.Input((12,))
    hidden = tf_keras.layers.Dense(16, activation="relu")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(hidden), name="tf_keras_mlp")
    model.compile(tf_keras.optimizers.SGD(0.05),
                  tf_keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf_keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    return model


@pytest.fixture(scope="session")  # built once per test worker
def keras3_result(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("compare"))
    result = compare(keras3_model, TRAIN, EVAL, precisions=["fp32", "rne", "trunc"], seeds=3,
                     fit_kwargs={"epochs": 2}, thresholds={"accuracy": 0.02},
                     output_dir=output_dir)
    return output_dir, result


@pytest.mark.xdist_group("compare_keras3")  # shares a session fixture: one worker builds it
def test_keras3_comparison_is_paired_and_reported(keras3_result):
    output_dir, result = keras3_result
    runs = {(r["precision"], r["seed"]): r for r in result.runs}
    assert len(runs) == 9
    for seed in range(3):
        pairing = [runs[(p, seed)]["pairing"] for p in ("fp32", "rne", "trunc")]
        # The same initial weights and the same batches (8 per epoch, 2 epochs).
        assert len({p["initial_weights"] for p in pairing}) == 1
        assert len({p["train_batches"] for p in pairing}) == 1
        assert pairing[0]["train_batches"].startswith("16 batches")
        assert runs[("rne", seed)]["loss"] != runs[("fp32", seed)]["loss"]  # BF16 acted
    assert len({runs[("fp32", s)]["pairing"]["initial_weights"] for s in range(3)}) == 3
    assert len({r["pairing"]["eval_rows"] for r in result.runs}) == 1
    # Intervals equal SciPy's on the same numbers.
    cell = result.summary["precisions"]["trunc"]["loss"]["difference"]
    differences = [runs[("trunc", s)]["loss"] - runs[("fp32", s)]["loss"] for s in range(3)]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(differences),
                                       scale=scipy_stats.sem(differences))
    assert cell["mean"] == pytest.approx(np.mean(differences), abs=1e-15)
    assert (cell["low"], cell["high"]) == pytest.approx((low, high), abs=1e-12)
    assert set(result.verdicts()["rne"]) == {"accuracy"}
    assert [p["step"] for p in result.history["loss"]["rne"]] == [1, 2]
    markdown = result.to_markdown()
    assert "| fp32 | " in markdown and "| trunc | " in markdown and "(baseline)" in markdown
    for name in ("results.json", "results.md", "compare.png"):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0
    with open(os.path.join(output_dir, "results.md")) as f:
        assert f.read() == markdown


@pytest.mark.xdist_group("compare_keras3")  # shares a session fixture: one worker builds it
def test_the_same_call_again_is_bit_identical_and_loads_finished_runs(keras3_result):
    output_dir, first = keras3_result
    again = compare(keras3_model, TRAIN, EVAL, precisions=["fp32", "rne"], seeds=[1],
                    fit_kwargs={"epochs": 2})
    fresh = {(r["precision"], r["seed"]): r for r in again.runs}
    stored = {(r["precision"], r["seed"]): r for r in first.runs}
    for key in fresh:  # trained again, without output_dir: the identical numbers
        assert fresh[key]["loss"] == stored[key]["loss"]
        assert fresh[key]["pairing"] == stored[key]["pairing"]
    loaded = compare(keras3_model, TRAIN, EVAL, precisions=["fp32", "rne", "trunc"], seeds=3,
                     fit_kwargs={"epochs": 2}, thresholds={"accuracy": 0.02},
                     output_dir=output_dir)
    assert all(r["loaded"] for r in loaded.runs)
    assert loaded.summary == first.summary
    with pytest.raises(RunMismatchError, match="fit_kwargs.epochs: 2 -> 1"):
        compare(keras3_model, TRAIN, EVAL, precisions=["fp32", "rne"], seeds=3,
                fit_kwargs={"epochs": 1}, output_dir=output_dir)


class _InterruptOnce(keras.callbacks.Callback):
    """Raises KeyboardInterrupt in the `at`-th run it sees, once."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen, self.done = at, 0, False

    def on_train_begin(self, logs=None):
        self.seen += 1
        if self.seen == self.at and not self.done:
            self.done = True
            raise KeyboardInterrupt("interrupted")


def test_an_interrupted_comparison_resumes_to_the_uninterrupted_result(tmp_path):
    kwargs = dict(precisions=["fp32", "rne"], seeds=2)
    straight = compare(keras3_model, TRAIN, EVAL,
                       fit_kwargs={"epochs": 1, "callbacks": [_InterruptOnce(at=99)]}, **kwargs)
    interrupter = _InterruptOnce(at=3)
    with pytest.raises(KeyboardInterrupt):
        compare(keras3_model, TRAIN, EVAL, output_dir=str(tmp_path),
                fit_kwargs={"epochs": 1, "callbacks": [interrupter]}, **kwargs)
    resumed = compare(keras3_model, TRAIN, EVAL, output_dir=str(tmp_path),
                      fit_kwargs={"epochs": 1, "callbacks": [interrupter]}, **kwargs)
    assert [r["loaded"] for r in resumed.runs] == [True, True, False, False]
    assert [r["loss"] for r in resumed.runs] == [r["loss"] for r in straight.runs]
    assert resumed.summary == straight.summary


def test_tf_keras_model_on_datasets_with_bf16_weights():
    train = tf.data.Dataset.from_tensor_slices(
        (TRAIN[0], TRAIN[1].astype(np.float32)[:, None])).batch(64)
    eval_ = tf.data.Dataset.from_tensor_slices(
        (EVAL[0], EVAL[1].astype(np.float32)[:, None])).batch(64)
    result = compare(tf_keras_model, train, eval_,
                     precisions=["fp32", "rne", "fp32+bf16w_kahan"], seeds=2,
                     fit_kwargs={"epochs": 2}, metrics={"loss": "min", "accuracy": "max"})
    runs = {(r["precision"], r["seed"]): r for r in result.runs}
    assert runs[("fp32+bf16w_kahan", 0)]["loss"] != runs[("fp32", 0)]["loss"]
    assert runs[("fp32", 0)]["pairing"]["train_batches"].startswith("8 batches")
    assert [m["name"] for m in result.summary["metrics"]] == ["loss", "accuracy"]
    assert result.summary["metrics"][1]["higher_is_better"] is True


def test_a_dataset_that_reshuffles_without_a_seed_is_not_paired():
    train = tf.data.Dataset.from_tensor_slices(
        (TRAIN[0], TRAIN[1].astype(np.float32)[:, None])).shuffle(256).batch(64)
    eval_ = tf.data.Dataset.from_tensor_slices(
        (EVAL[0], EVAL[1].astype(np.float32)[:, None])).batch(64)
    with pytest.raises(ValueError, match="differ in train_batches"):
        compare(tf_keras_model, train, eval_, precisions=["fp32", "rne"], seeds=1,
                fit_kwargs={"epochs": 1})


def _uncompiled():
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(2)])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(build_model=keras3_model, precisions=["rne"]), ValueError, "must include 'fp32'"),
    (dict(build_model=keras3_model, seeds=0), ValueError, "seeds must be at least 1"),
    (dict(build_model=keras3_model, seeds=[1, 1]), ValueError, "seeds repeat"),
    (dict(build_model=keras3_model, fit_kwargs={"x": TRAIN[0]}), ValueError,
     "fit_kwargs must not set x"),
    (dict(build_model=keras3_model, fit_kwargs={"epochs": 0}), ValueError, "epochs"),
    (dict(build_model=keras3_model, train=[1, 2, 3]), TypeError, "train must be a"),
    (dict(build_model=keras3_model, metrics=["accuracy", "auc"]), ValueError,
     r"Unknown metric\(s\) \['auc'\]"),
    (dict(build_model=keras3_model, thresholds={"accuracy": -0.01}), ValueError,
     "threshold of metric 'accuracy' must be a number > 0"),
    (dict(build_model=_uncompiled), ValueError, "uncompiled model and no compile_kwargs"),
    (dict(build_model="not a function"), TypeError, "build_model must be a function"),
    (dict(build_model=keras3_model, confidence=1.5), ValueError, "strictly between 0 and 1"),
])
def test_bad_arguments_are_refused_clearly(kwargs, error, message):
    arguments = dict(train=TRAIN, eval=EVAL, precisions=["fp32", "rne"], seeds=1,
                     fit_kwargs={"epochs": 1})
    arguments.update(kwargs)
    build_model = arguments.pop("build_model")
    train, eval_ = arguments.pop("train"), arguments.pop("eval")
    with pytest.raises(error, match=message):
        compare(build_model, train, eval_, **arguments)
