"""A short study on real Criteo rows: the first 10,000 lines of the Kaggle
train.txt (`../shared/data/criteo_kaggle_head10k.tsv`, CC BY-NC-SA 4.0, not in
the repository: the test skips when it is absent)."""

import math
import os

import pytest

from recsys import config
from recsys import study

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAD10K = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo_kaggle_head10k.tsv")


@pytest.mark.skipif(not os.path.exists(HEAD10K),
                    reason=f"{HEAD10K} is absent: it holds the first 10,000 lines of the "
                    "Criteo Kaggle train.txt (`head -n 10000 train.txt`), which the "
                    "repository does not ship")
def test_short_study_on_the_first_10000_lines(tmp_path):
    data = config.DataConfig(source="criteo", data_path=HEAD10K, batch_size=128,
                             eval_rows=2000, num_buckets=1000)
    train = config.TrainConfig(train_steps=8, eval_every=0, eval_points=3, learning_rate=0.002)
    results = study.run_study(data, config.ModelConfig(), train, precisions=["fp32", "rne"],
                              seeds=[0, 1], output_dir=str(tmp_path), verbose=0)
    report = results["input"]
    assert report["train"]["malformed"] == 0 and report["eval"]["malformed"] == 0
    assert report["train"]["header_lines"] == 0
    assert report["eval"]["read"] == 2000 and report["eval"]["complete"]
    for run in results["runs"]:
        assert run["count"] == 2000  # every eval row scored
        assert math.isfinite(run["log_loss"]) and 0.3 < run["log_loss"] < 1.0
        assert [h["step"] for h in run["history"]] == [0, 1, 3, 6, 8]
    assert math.isfinite(results["summary"]["precisions"]["rne"]["log_loss"]["difference"]["mean"])
    assert "malformed" not in results["data"]
