"""Training runs: the train CLI, flag validation, checkpoints and resuming."""

import dataclasses
import json
import os
import re
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

import tfbf16

from tfbf16.study.runs import RunMismatchError
from tfbf16.utils import tensorboard

from recsys import batches
from recsys import config
from recsys import flags_lib
from recsys import model as model_lib
from recsys import run_dir
from recsys import trainer
from tests.bf16_bits import is_bf16

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_FLAGS = ["--batch_size=64", "--eval_rows=512", "--vocab_scale=0.01",
              "--embedding_dim=4", "--deep_layers=8", "--num_cross_layers=1"]
TINY_DATA = config.DataConfig(batch_size=64, eval_rows=512, vocab_scale=0.01)
TINY_MODEL = config.ModelConfig(embedding_dim=4, num_cross_layers=1, deep_layers=(8,))


@pytest.fixture(scope="session")  # built once per test worker
def bundle():
    return batches.with_cached_eval(batches.make_bundle(TINY_DATA))


def _parse(args):
    values = flags.FlagValues()
    flags_lib.define_common_flags(values)
    values(["prog"] + args)
    return values


@pytest.mark.parametrize("args, message", [
    (["--batch_size=0"], "batch_size"),
    (["--structure=diagonal"], "stacked|parallel"),
    (["--lr_schedule=linear"], "constant|cosine"),
    (["--projection_dim=0"], "projection_dim"),
    (["--max_malformed_fraction=-0.1"], "max_malformed_fraction"),
])
def test_single_flag_checks_run_when_flags_are_parsed(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        _parse(args)


@pytest.mark.parametrize("args, message", [
    (["--deep_layers=128,x"], "--deep_layers must be a comma-separated list of positive"),
    (["--deep_layers=128,0"], "--deep_layers must be a comma-separated list of positive"),
    (["--data=criteo"], "--data_path is required"),
    (["--data_path=train.txt"], "not used with --data=synthetic"),
    (["--num_cross_layers=0", "--deep_layers="], "needs --num_cross_layers > 0"),
    (["--learning_rate=0"], "--learning_rate must be > 0"),
    (["--vocab_scale=0"], "--vocab_scale must be > 0"),
    (["--max_malformed_fraction=1.5"], "at most 1"),
    (["--strategy=tpu"], "--strategy=tpu needs --tpu"),
])
def test_config_checks_name_the_flag(args, message):
    with pytest.raises(ValueError, match=message):
        flags_lib.configs_from_flags(_parse(args))


def test_flags_make_configs():
    values = _parse(["--deep_layers=32,16", "--projection_dim=8",
                     "--structure=parallel", "--train_steps=7", "--data_seed=3"])
    data, model, train, distribution = flags_lib.configs_from_flags(values)
    assert model.deep_layers == (32, 16) and model.projection_dim == 8
    assert model.structure == "parallel"
    assert train.train_steps == 7
    assert data.source == "synthetic" and data.data_seed == 3
    assert distribution.strategy == "default"
    # One flag per config field, with the field's default.
    for config_class in config.CONFIGS:
        for field in dataclasses.fields(config_class):
            default = values[config.flag_name(field)].default
            expected = field.default
            if isinstance(expected, tuple):
                expected = [str(v) for v in expected]
            assert default == expected, field.name


def test_flag_definitions_do_not_import_tensorflow():
    code = ("import sys; from absl import flags; from recsys import flags_lib; "
            "flags_lib.define_common_flags(); print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def _events(directory):
    """{tag: [(step, value)]} of the scalar event files in `directory`."""
    return {tag: [(step, float(value)) for step, _, value in events if value.ndim == 0]
            for tag, events in tensorboard.read_events(directory).items()}


def _run_cli(*args):
    command = [sys.executable, "-m", "recsys.train", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
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


@pytest.mark.slow
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
    return run_dir.load_checkpointed_model(model_dir, TINY_MODEL, bundle.vocab_sizes,
                                           precision).get_weights()


@pytest.mark.parametrize("precision", ["fp32", "fp32+bf16w_kahan"])
def test_resumed_run_equals_uninterrupted_run(bundle, tmp_path, precision):
    # With BF16 weights and Kahan updates, the compensation buffers must be
    # checkpointed too, or the resumed run would differ.
    train_config = config.TrainConfig(train_steps=12, eval_every=4, eval_steps=2,
                                      checkpoint_every=4, log_every=4)
    kwargs = dict(precision=precision, seed=1, verbose=0)
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    straight = trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config,
                           model_dir=straight_dir, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config, model_dir=resumed_dir,
                    callbacks=[_Interrupt(at_step=7)], **kwargs)
    # The interrupted run got past step 7 but only step 4 was saved.
    assert tf.train.latest_checkpoint(
        os.path.join(resumed_dir, "checkpoints")).endswith("ckpt-4")
    resumed = trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config,
                          model_dir=resumed_dir, **kwargs)

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
    loaded = trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config,
                         model_dir=resumed_dir, **kwargs)
    assert loaded["loaded"] and not resumed["loaded"]
    assert loaded["final"] == resumed["final"]


def test_result_reports_the_input_and_scores_every_eval_row(tmp_path):
    data = dataclasses.replace(TINY_DATA, eval_rows=500)  # not a multiple of 64
    bundle = batches.make_bundle(data)
    result = trainer.run(bundle, data, TINY_MODEL, config.TrainConfig(train_steps=2, eval_every=0),
                         precision="fp32", seed=0, model_dir=str(tmp_path), verbose=0)
    assert result["final"]["count"] == 500 == result["eval_rows_requested"]
    assert set(result["input"]) == {"train", "eval"}
    assert result["input"]["eval"]["malformed"] == 0
    with open(tmp_path / "result.json") as f:
        assert json.load(f)["input"] == json.loads(json.dumps(result["input"]))


@pytest.mark.parametrize("change, differs", [
    (dict(seed=1), "seed: 0 -> 1"),
    (dict(data=dataclasses.replace(TINY_DATA, eval_rows=256)), "data.eval_rows: 512 -> 256"),
    (dict(data=dataclasses.replace(TINY_DATA, data_seed=2)), "data.data_seed: 0 -> 2"),
    (dict(train=config.TrainConfig(train_steps=2, eval_every=0, learning_rate=0.01)),
     "train.learning_rate: 0.004 -> 0.01"),
    (dict(train=config.TrainConfig(train_steps=2, eval_every=1)), "train.eval_every: 0 -> 1"),
    (dict(precision="rne"), "precision: fp32 -> rne"),
])
def test_run_dir_of_other_settings_is_refused_and_overwrite_retrains(
        bundle, tmp_path, change, differs):
    train_config = config.TrainConfig(train_steps=2, eval_every=0)
    model_dir = str(tmp_path / "run")
    first = trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config, precision="fp32",
                        seed=0, model_dir=model_dir, verbose=0)
    data = change.get("data", TINY_DATA)
    other_bundle = bundle if data is TINY_DATA else batches.make_bundle(data)
    kwargs = dict(precision=change.get("precision", "fp32"), seed=change.get("seed", 0),
                  model_dir=model_dir, verbose=0)
    with pytest.raises(RunMismatchError, match=re.escape(differs)) as refused:
        trainer.run(other_bundle, data, TINY_MODEL, change.get("train", train_config),
                    **kwargs)
    assert "--overwrite" in str(refused.value)
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["final"]["log_loss"] == first["final"]["log_loss"]  # untouched
    again = trainer.run(other_bundle, data, TINY_MODEL, change.get("train", train_config),
                        overwrite=True, **kwargs)
    assert not again["loaded"] and again["resumed_from"] == 0


def test_invalid_precision_is_refused(bundle, tmp_path):
    with pytest.raises(ValueError, match="Invalid precision 'fp16'"):
        trainer.run(bundle, TINY_DATA, TINY_MODEL, config.TrainConfig(train_steps=2),
                    precision="fp16", seed=0, model_dir=str(tmp_path), verbose=0)


def test_corrupt_result_of_a_finished_run_names_the_file(bundle, tmp_path):
    train_config = config.TrainConfig(train_steps=2, eval_every=0)
    trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config, precision="fp32", seed=0,
                model_dir=str(tmp_path), verbose=0)
    (tmp_path / "result.json").write_text("")
    with pytest.raises(ValueError, match=r"result.json is empty.*Delete it"):
        trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config, precision="fp32", seed=0,
                    model_dir=str(tmp_path), verbose=0)


def test_bf16_weights_are_stored_in_bf16_and_monitored(bundle, tmp_path):
    train_config = config.TrainConfig(train_steps=6, eval_every=0, checkpoint_every=6,
                                      log_every=3, monitor_every=2)
    run_dir_path = str(tmp_path / "run")
    emulated = trainer.Trainer(TINY_MODEL, bundle.vocab_sizes, train_config,
                               "trunc+bf16w_rne")
    assert isinstance(emulated.optimizer, tfbf16.optimizers.BF16Weights)
    result = emulated.run(bundle, TINY_DATA, precision="trunc+bf16w_rne", seed=0,
                          model_dir=run_dir_path, verbose=0)
    assert result["precision"] == "trunc+bf16w_rne"
    weights = emulated.fp32_model.trainable_weights
    assert all(is_bf16(w.numpy()) for w in weights)
    initial = model_lib.build_from_config(TINY_MODEL, bundle.vocab_sizes, seed=0).get_weights()
    assert not all(is_bf16(w) for w in initial)  # the test means something

    # The monitor's records, in JSON and in TensorBoard.
    with open(os.path.join(run_dir_path, "precision_monitor.json")) as f:
        records = json.load(f)
    assert [r["step"] for r in records] == [0, 2, 4]
    monitor_events = _events(os.path.join(run_dir_path, "bf16"))
    assert [s for s, _ in monitor_events["bf16/cross_1/inputs_rel_error"]] == [0, 2, 4]
    # The weights are BF16 values, so rounding them changes nothing; the
    # activations entering the deep layer are not BF16 values.
    for record in records:
        assert record["bf16/deep_1/weights_rel_error"] == 0.0
        assert 0 < record["bf16/deep_1/inputs_rel_error"] < 2 ** -8

    # The same Trainer runs "rne+bf16w_rne" (same kind), not other kinds.
    with pytest.raises(ValueError, match="build another Trainer"):
        emulated.run(bundle, TINY_DATA, precision="rne+bf16w_kahan", seed=0,
                     model_dir=str(tmp_path / "other"), verbose=0)


def test_no_event_files_without_tensorboard(bundle, tmp_path):
    train_config = config.TrainConfig(train_steps=2, eval_every=1, eval_steps=1,
                                      checkpoint_every=2, tensorboard=False)
    trainer.run(bundle, TINY_DATA, TINY_MODEL, train_config, precision="fp32", seed=0,
                model_dir=str(tmp_path), verbose=0)
    assert not {"train", "eval", "bf16"} & set(os.listdir(tmp_path))
    assert {"result.json", "history.json", "checkpoints", "identity.json"} <= set(
        os.listdir(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left


def test_loading_a_directory_without_checkpoints_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        run_dir.load_checkpointed_model(str(tmp_path), TINY_MODEL, [10] * 26, "rne")
