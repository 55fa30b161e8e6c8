"""`recsys.distribute`: strategy choice, TF_CONFIG checks, the trainer's limits."""

import dataclasses
import json

import pytest

from recsys import distribute
from recsys import trainer
from recsys.data import Shard


@pytest.fixture
def tf_config(monkeypatch):
    def set_config(value):
        monkeypatch.setenv("TF_CONFIG", value if isinstance(value, str) else json.dumps(value))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    return set_config


def test_default_and_mirrored(tf_config):
    default = distribute.make_distribution("default")
    assert default.is_chief and default.num_replicas == 1
    assert default.num_input_pipelines == 1 and default.write_dir("/x") == "/x"
    mirrored = distribute.make_distribution("mirrored")
    # conftest.py splits the CPU into two logical devices.
    assert mirrored.num_replicas == 2 and mirrored.num_input_pipelines == 1
    default.barrier()  # a no-op without workers


@pytest.mark.parametrize("name, config, message", [
    ("multi_worker", None, "needs TF_CONFIG"),
    ("multi_worker", {"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                      "task": {"type": "worker", "index": 0}}, "needs TF_CONFIG"),
    ("parameter_server", {"cluster": {"worker": ["a:1"]},
                          "task": {"type": "worker", "index": 0}}, "'chief', 'worker' and 'ps'"),
    ("multi_worker", "{not json", "not valid JSON"),
    ("multi_worker", {"cluster": {"worker": ["a:1"]}}, "needs a 'cluster' and a 'task'"),
    ("multi_worker", {"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}},
     "task type 'ps' is not in its cluster"),
    ("multi_worker", {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}},
     "index 3 is out of range"),
    ("tpu", None, "--tpu"),
    ("horovod", None, "Unknown strategy 'horovod'"),
])
def test_bad_set_ups_say_what_to_do(tf_config, name, config, message):
    if config is not None:
        tf_config(config)
    with pytest.raises(ValueError, match=message):
        distribute.make_distribution(name)


def test_tpu_flag_needs_tpu_strategy():
    with pytest.raises(ValueError, match="goes\\s+with --strategy=tpu"):
        distribute.make_distribution("default", tpu="local")


def _config():
    return (trainer.ModelConfig(embedding_dim=4, num_cross_layers=1, deep_layers=(8,)),
            [10] * 26)


@pytest.mark.parametrize("precision, train_config, message", [
    ("rne+bf16w_kahan", trainer.TrainConfig(), "BF16 weights .* not supported"),
    ("rne", trainer.TrainConfig(monitor_every=5), "--monitor_every"),
])
def test_trainer_refuses_what_multiple_replicas_cannot_do(precision, train_config, message):
    model_config, vocab_sizes = _config()
    with pytest.raises(ValueError, match=message):
        trainer.Trainer(model_config, vocab_sizes, train_config, precision,
                        distribute.make_distribution("mirrored"))


def test_mirrored_run_matches_default_run(tmp_path):
    # Two local replicas split each batch; the result is the default
    # strategy's up to FP32 reduction order.
    model_config, _ = _config()
    data = trainer.DataConfig(batch_size=64, eval_rows=256, vocab_scale=0.01)
    config = trainer.TrainConfig(train_steps=3, eval_every=0, checkpoint_every=3)
    results = {}
    for name in ("default", "mirrored"):
        distribution = distribute.make_distribution(name)
        bundle = data.make_bundle(seed=0, distribution=distribution)
        results[name] = trainer.run(bundle, model_config, config, precision="fp32", seed=0,
                                    model_dir=str(tmp_path / name), verbose=0,
                                    distribution=distribution)
    assert results["mirrored"]["final"]["log_loss"] == pytest.approx(
        results["default"]["final"]["log_loss"], abs=1e-5)
    # A bundle that is another worker's shard is refused.
    wrong = dataclasses.replace(data.make_bundle(seed=0), shard=Shard(2, 1, 32))
    with pytest.raises(ValueError, match="make it with DataConfig.make_bundle"):
        trainer.run(wrong, model_config, config, precision="fp32", seed=0,
                    model_dir=str(tmp_path / "bad"), verbose=0)
