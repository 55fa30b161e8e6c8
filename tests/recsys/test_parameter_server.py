"""Parameter-server training: a chief, a worker and two ps tasks on 127.0.0.1.

The same `recsys.train --strategy=parameter_server` command runs on every
task: the worker and ps tasks serve, the chief (the coordinator) trains.
Embedding tables above `--ps_min_shard_bytes` are split over the two
parameter servers. The test ends every process it starts.
"""

import json
import re

import pytest

from recsys import batches
from recsys import config
from recsys import metrics
from recsys import run_dir
from recsys.local_cluster import LocalCluster

MODEL = config.ModelConfig(embedding_dim=4, num_cross_layers=1, deep_layers=(8,))
DATA = config.DataConfig(batch_size=64, eval_rows=512, vocab_scale=0.01)
CHIEF = ("chief", 0)


@pytest.mark.slow
def test_chief_trains_with_tables_sharded_over_two_parameter_servers(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--strategy=parameter_server", "--ps_min_shard_bytes=4096",
            f"--model_dir={model_dir}", "--train_steps=30", "--checkpoint_every=15",
            "--eval_every=15", "--eval_steps=0", "--log_every=5", "--batch_size=64",
            "--eval_rows=512", "--vocab_scale=0.01", "--embedding_dim=4",
            "--deep_layers=8", "--num_cross_layers=1"]
    with LocalCluster(tmp_path, {"chief": 1, "worker": 1, "ps": 2},
                         "recsys.train", args) as job:
        assert job.wait([CHIEF]) == [0], job.tail()
    log = job.output(CHIEF)
    assert "parameter_server strategy" in log and "1 workers, 2 parameter servers" in log
    # The largest table (C3, 1,009 rows x 4 floats = 16 KiB) is split in two.
    shards = re.search(r"embedding_c3/embeddings: 1009 rows in 2 shards \[(\d+), (\d+)\] "
                       r"on (\S+), (\S+)", log)
    assert shards, log[-3000:]
    assert {shards.group(3), shards.group(4)} == {
        "/job:ps/replica:0/task:0/device:CPU:0", "/job:ps/replica:0/task:1/device:CPU:0"}
    with open(model_dir / "result.json") as f:
        result = json.load(f)
    assert result["steps"] == 30
    history = [h["log_loss"] for h in result["history"]]
    assert [h["step"] for h in result["history"]] == [0, 15, 30]
    assert result["final"]["log_loss"] < history[0]  # it trained

    # The chief's checkpoint of the sharded tables restores into a plain,
    # unsharded model, which then scores the eval set exactly as the chief did.
    bundle = batches.make_bundle(DATA)
    model = run_dir.load_checkpointed_model(str(model_dir), MODEL, bundle.vocab_sizes, "fp32")
    assert run_dir.weights_fingerprint(model) == result["weights_sha256"]
    again = metrics.evaluate(model, bundle.eval)
    assert again["count"] == result["final"]["count"]
    assert again["log_loss"] == pytest.approx(result["final"]["log_loss"], abs=1e-6)
