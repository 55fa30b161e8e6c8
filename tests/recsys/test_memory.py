"""`recsys.memory`: the estimate counts the real model, and refuses what cannot fit."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from recsys import distribute
from recsys import memory
from recsys import config
from recsys import model as model_lib
from recsys.local_cluster import REPO

SAMPLE = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo_kaggle_sample.tsv")
VOCAB = [37 + 11 * i for i in range(26)]


@pytest.mark.parametrize("model_config", [
    config.ModelConfig(embedding_dim=4, num_cross_layers=2, deep_layers=(16, 8)),
    config.ModelConfig(embedding_dim=3, num_cross_layers=1, projection_dim=5,
                        deep_layers=(), structure="parallel"),
    config.ModelConfig(embedding_dim=2, num_cross_layers=0, deep_layers=(7,),
                        structure="parallel"),
])
def test_parameters_are_those_of_the_model(model_config):
    result = memory.estimate(model_config, VOCAB, "fp32")
    assert result.parameters == model_lib.build_from_config(model_config, VOCAB).count_params()
    assert result.embedding_parameters == sum(VOCAB) * model_config.embedding_dim
    assert result.largest_table == (25, VOCAB[25])
    assert result.weight_bytes == 4 * result.parameters
    assert result.state_bytes == 3 * result.weight_bytes  # Adam: 2 slots
    kahan = memory.estimate(model_config, VOCAB, "rne+bf16w_kahan")
    assert kahan.state_bytes == 4 * result.weight_bytes  # + compensation
    assert result.peak_bytes == result.state_bytes + int(
        memory.TRANSIENT_WEIGHT_COPIES * result.weight_bytes)


def test_state_per_process_under_strategies():
    model_config = config.ModelConfig(embedding_dim=4)
    alone = memory.estimate(model_config, VOCAB, "fp32")
    default = tf.distribute.get_strategy()
    ps = memory.estimate(model_config, VOCAB, "fp32", distribute.Distribution(
        "parameter_server", default, num_parameter_servers=4))
    assert ps.per_process_state_bytes == alone.state_bytes // 4
    assert "sharded over 4 parameter servers" in ps.describe()
    worker = memory.estimate(model_config, VOCAB, "fp32", distribute.Distribution(
        "multi_worker", default))
    assert worker.per_process_peak_bytes == alone.peak_bytes


def test_check_fits_names_the_flags_to_change():
    model_config = config.ModelConfig(embedding_dim=16)
    big = [10_000_000] * 26
    with pytest.raises(MemoryError) as raised:
        memory.check_fits(model_config, big, "fp32", available=24 << 30)
    message = str(raised.value)
    assert "will not fit in memory" in message and "24.00 GiB is available" in message
    for flag in ("--num_buckets", "--vocab_scale", "--embedding_dim",
                 "--strategy=parameter_server", "--nomemory_check"):
        assert flag in message
    assert memory.check_fits(model_config, VOCAB, "fp32", available=24 << 30).parameters


@pytest.mark.slow
def test_train_cli_stops_before_training_when_the_tables_are_too_big(tmp_path):
    # 26 tables of 100M hash buckets x 8 floats: ~83 GB of weights.
    model_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "recsys.train", f"--model_dir={model_dir}", "--data=criteo",
         f"--data_path={SAMPLE}", "--eval_rows=40", "--num_buckets=100000000"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "recsys.train: error: This run will not fit in memory" in done.stderr
    assert "Traceback" not in done.stderr
    assert "--num_buckets" in done.stderr
    assert not model_dir.exists()
