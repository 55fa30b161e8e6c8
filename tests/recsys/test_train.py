"""Training runs: the train CLI, flag validation, checkpoints and resuming."""

import glob
import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

import tfbf16

from recsys import flags_lib
from recsys import trainer
from tests.bf16_bits import is_bf16

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_FLAGS = ["--batch_size=64", "--eval_rows=512", "--vocab_scale=0.01",
              "--embedding_dim=4", "--deep_layers=8", "--num_cross_layers=1"]
TINY_DATA = trainer.DataConfig(batch_size=64, eval_rows=512, vocab_scale=0.01)
TINY_MODEL = trainer.ModelConfig(embedding_dim=4, num_cross_layers=1,
                                 deep_layers=(8,))


@pytest.fixture(scope="module")
def bundle():
    return trainer.with_cached_eval(TINY_DATA.make_bundle(seed=0))


def _parse(args):
    values = flags.FlagValues()
    flags_lib.define_common_flags(values)
    values(["prog"] + args)
    return values


@pytest.mark.parametrize("args, message", [
    (["--batch_size=0"], "batch_size"),
    (["--deep_layers=128,x"], "comma-separated list of positive integers"),
    (["--deep_layers=128,0"], "comma-separated list of positive integers"),
    (["--data=criteo"], "--data_path is required"),
    (["--num_cross_layers=0", "--deep_layers="], "needs --num_cross_layers > 0"),
    (["--learning_rate=0"], "--learning_rate must be > 0"),
    (["--vocab_scale=0"], "--vocab_scale must be > 0"),
    (["--structure=diagonal"], "stacked|parallel"),
    (["--lr_schedule=linear"], "constant|cosine"),
    (["--projection_dim=0"], "projection_dim"),
])
def test_flag_validation(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        _parse(args)


def test_flags_make_configs():
    values = _parse(["--deep_layers=32,16", "--projection_dim=8",
                     "--structure=parallel", "--train_steps=7"])
    model = flags_lib.model_config(values)
    assert model.deep_layers == (32, 16) and model.projection_dim == 8
    assert model.structure == "parallel"
    assert flags_lib.train_config(values).train_steps == 7
    assert flags_lib.data_config(values).source == "synthetic"


def _events(directory):
    """{tag: [(step, value)]} of the scalar event files in `directory`."""
    found = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim:  # a histogram
                    continue
                found.setdefault(value.tag, []).append((event.step, float(array)))
    return found


def _run_cli(*args):
    command = [sys.executable, "-m", "recsys.train", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=180)


def test_train_cli_writes_checkpoints_events_and_result(tmp_path):
    model_dir = str(tmp_path / "run")
    done = _run_cli(f"--model_dir={model_dir}", "--train_steps=6", "--eval_every=3",
                    "--eval_steps=2", "--checkpoint_every=3", "--log_every=2",
                    "--weights_precision=bf16", "--update_rounding=kahan",
                    "--monitor_every=3", *TINY_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fp32+bf16w_kahan seed 0, 6 steps: eval log loss" in done.stdout
    # The plain FP32-compute model has no emulated layers to monitor (the
    # monitor of an emulated run is tested in-process below; tracing a
    # wrapped model in a new process would cost ~20 s more here).
    assert not os.path.exists(os.path.join(model_dir, "precision_monitor.json"))
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")
                                      ).endswith("ckpt-6")
    train_events = _events(os.path.join(model_dir, "train"))
    assert [s for s, _ in train_events["loss"]] == [2, 4, 6]
    eval_events = _events(os.path.join(model_dir, "eval"))
    assert [s for s, _ in eval_events["log_loss"]] == [0, 3, 6]
    assert [s for s, _ in eval_events["final_log_loss"]] == [6]
    with open(os.path.join(model_dir, "result.json")) as f:
        result = json.load(f)
    assert result["final"]["count"] == 512
    assert result["final"]["log_loss"] == pytest.approx(
        eval_events["final_log_loss"][0][1], rel=1e-6)


def test_train_cli_refuses_update_rounding_without_bf16_weights(tmp_path):
    done = _run_cli(f"--model_dir={tmp_path}", "--update_rounding=kahan")
    assert done.returncode == 1
    assert "--update_rounding applies to BF16 weights" in done.stderr


class _Interrupt(tf.keras.callbacks.Callback):
    """Raises after a given step, like a killed process."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at_step:
            raise KeyboardInterrupt(f"interrupted at step {batch}")


def _final_weights(model_dir, bundle, precision):
    return trainer.load_checkpointed_model(model_dir, TINY_MODEL, bundle.vocab_sizes,
                                           precision).get_weights()


@pytest.mark.parametrize("precision", ["fp32", "fp32+bf16w_kahan"])
def test_resumed_run_equals_uninterrupted_run(bundle, tmp_path, precision):
    # With BF16 weights and Kahan updates, the compensation buffers must be
    # checkpointed too, or the resumed run would differ.
    config = trainer.TrainConfig(train_steps=12, eval_every=4, eval_steps=2,
                                 checkpoint_every=4, log_every=4)
    kwargs = dict(precision=precision, seed=1, verbose=0)
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    straight = trainer.run(bundle, TINY_MODEL, config, model_dir=straight_dir,
                           **kwargs)

    with pytest.raises(KeyboardInterrupt):
        trainer.run(bundle, TINY_MODEL, config, model_dir=resumed_dir,
                    callbacks=[_Interrupt(at_step=7)], **kwargs)
    # The interrupted run got past step 7 but only step 4 was saved.
    assert tf.train.latest_checkpoint(
        os.path.join(resumed_dir, "checkpoints")).endswith("ckpt-4")
    resumed = trainer.run(bundle, TINY_MODEL, config, model_dir=resumed_dir,
                          **kwargs)

    assert resumed["resumed_from"] == 4 and straight["resumed_from"] == 0
    assert resumed["final"]["log_loss"] == straight["final"]["log_loss"]
    assert resumed["history"] == straight["history"]
    assert [h["step"] for h in resumed["history"]] == [0, 4, 8, 12]
    # Same final weights, bit for bit: batches 5..7 were trained on again
    # and batches 1..4 were skipped, not trained on twice.
    for x, y in zip(_final_weights(straight_dir, bundle, precision),
                    _final_weights(resumed_dir, bundle, precision)):
        np.testing.assert_array_equal(x, y)
        if precision != "fp32":
            assert is_bf16(x)
    # A finished run is loaded, not trained again.
    loaded = trainer.run(bundle, TINY_MODEL, config, model_dir=resumed_dir,
                         **kwargs)
    assert loaded["loaded"] and not resumed["loaded"]
    assert loaded["final"] == resumed["final"]


def test_run_dir_of_other_settings_is_refused(bundle, tmp_path):
    config = trainer.TrainConfig(train_steps=2, eval_every=0)
    model_dir = str(tmp_path / "run")
    trainer.run(bundle, TINY_MODEL, config, precision="fp32", seed=0,
                model_dir=model_dir, verbose=0)
    with pytest.raises(ValueError, match="other settings.*seed"):
        trainer.run(bundle, TINY_MODEL, config, precision="fp32", seed=1,
                    model_dir=model_dir, verbose=0)
    with pytest.raises(ValueError, match="Invalid precision 'fp16'"):
        trainer.run(bundle, TINY_MODEL, config, precision="fp16", seed=0,
                    model_dir=model_dir, verbose=0)


def test_bf16_weights_are_stored_in_bf16_and_monitored(bundle, tmp_path):
    config = trainer.TrainConfig(train_steps=6, eval_every=0, checkpoint_every=6,
                                 log_every=3, monitor_every=2)
    run_dir = str(tmp_path / "run")
    emulated = trainer.Trainer(TINY_MODEL, bundle.vocab_sizes, config, "trunc+bf16w_rne")
    assert isinstance(emulated.optimizer, tfbf16.optimizers.BF16Weights)
    result = emulated.run(bundle, precision="trunc+bf16w_rne", seed=0,
                          model_dir=run_dir, verbose=0)
    assert result["precision"] == "trunc+bf16w_rne"
    weights = emulated.fp32_model.trainable_weights
    assert all(is_bf16(w.numpy()) for w in weights)
    initial = TINY_MODEL.build(bundle.vocab_sizes, seed=0).get_weights()
    assert not all(is_bf16(w) for w in initial)  # the test means something

    # The monitor's records, in JSON and in TensorBoard.
    with open(os.path.join(run_dir, "precision_monitor.json")) as f:
        records = json.load(f)
    assert [r["step"] for r in records] == [0, 2, 4]
    monitor_events = _events(os.path.join(run_dir, "bf16"))
    assert [s for s, _ in monitor_events["bf16/cross_1/inputs_rel_error"]] == [0, 2, 4]
    # The weights are BF16 values, so rounding them changes nothing; the
    # activations entering the deep layer are not BF16 values.
    for record in records:
        assert record["bf16/deep_1/weights_rel_error"] == 0.0
        assert 0 < record["bf16/deep_1/inputs_rel_error"] < 2 ** -8

    # The same Trainer runs "rne+bf16w_rne" (same kind), not other kinds.
    with pytest.raises(ValueError, match="build another Trainer"):
        emulated.run(bundle, precision="rne+bf16w_kahan", seed=0,
                     model_dir=str(tmp_path / "other"), verbose=0)


def test_no_event_files_without_tensorboard(bundle, tmp_path):
    config = trainer.TrainConfig(train_steps=2, eval_every=1, eval_steps=1,
                                 checkpoint_every=2, tensorboard=False)
    trainer.run(bundle, TINY_MODEL, config, precision="fp32", seed=0,
                model_dir=str(tmp_path), verbose=0)
    assert not {"train", "eval", "bf16"} & set(os.listdir(tmp_path))
    assert {"result.json", "history.json", "checkpoints"} <= set(os.listdir(tmp_path))


def test_loading_a_directory_without_checkpoints_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        trainer.load_checkpointed_model(str(tmp_path), TINY_MODEL, [10] * 26, "rne")
