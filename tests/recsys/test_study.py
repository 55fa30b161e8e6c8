"""The paired FP32-vs-BF16 study: outputs, pairing and summary statistics."""

import json
import os

from absl import flags
import numpy as np
import pytest

import tfbf16

from recsys import stats
from recsys import study
from recsys import trainer

TINY_DATA = trainer.DataConfig(batch_size=64, eval_rows=512, vocab_scale=0.01)
TINY_MODEL = trainer.ModelConfig(embedding_dim=4, num_cross_layers=1,
                                 deep_layers=(8,))
TINY_TRAIN = trainer.TrainConfig(train_steps=6, eval_every=3, eval_steps=2,
                                 checkpoint_every=6, log_every=3,
                                 jit_compile=False)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("study"))
    results = study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN,
                              precisions=["fp32", "rne", "trunc"], seeds=[0, 1],
                              output_dir=output_dir, verbose=0)
    return output_dir, results


def test_study_writes_json_markdown_and_png(tiny_study):
    output_dir, results = tiny_study
    with open(os.path.join(output_dir, "results.json")) as f:
        written = json.load(f)
    assert written["summary"] == json.loads(json.dumps(results["summary"]))
    runs = {(r["precision"], r["seed"]) for r in written["runs"]}
    assert runs == {(p, s) for p in ("fp32", "rne", "trunc") for s in (0, 1)}
    for record in written["runs"]:
        assert record["count"] == 512 and record["steps"] == 6
        assert 0 < record["log_loss"] < 2 and 0 <= record["auc"] <= 1
        assert [h["step"] for h in record["history"]] == [0, 3, 6]
    summary = written["summary"]
    assert set(summary) == {"fp32", "rne", "trunc"}
    assert summary["fp32"]["log_loss"]["n"] == 2
    assert "log_loss_difference" not in summary["fp32"]
    for precision in ("rne", "trunc"):
        diff = summary[precision]["log_loss_difference"]
        assert diff["low"] <= diff["mean"] <= diff["high"]
        assert isinstance(summary[precision]["practically_significant"], bool)

    with open(os.path.join(output_dir, "results.md")) as f:
        markdown = f.read()
    assert markdown == study.format_markdown(results)
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3  # header, rule, one row per precision
    assert table[2].startswith("| fp32 | ") and "(baseline)" in table[2]
    assert table[3].startswith("| rne | ")
    with open(os.path.join(output_dir, "study.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_runs_are_paired_and_reproducible(tiny_study, tmp_path):
    _, results = tiny_study
    loss = {(r["precision"], r["seed"]): r["log_loss"] for r in results["runs"]}
    # BF16 rounding changes the result; seeds give different models.
    assert loss[("rne", 0)] != loss[("fp32", 0)]
    assert loss[("trunc", 0)] != loss[("rne", 0)]
    assert loss[("fp32", 0)] != loss[("fp32", 1)]
    # Each run again, alone, on a new Trainer: the identical result. (The
    # study reused one Trainer per kind across seeds, and switched the
    # emulated one from rne to trunc with tfbf16.set_rounding.)
    bundle = trainer.with_cached_eval(TINY_DATA.make_bundle(seed=0))
    for precision in ("fp32", "trunc"):
        fresh = trainer.Trainer(TINY_MODEL, bundle.vocab_sizes, TINY_TRAIN,
                                precision)
        again = fresh.run(bundle, precision=precision, seed=1, verbose=0,
                          model_dir=str(tmp_path / precision))
        assert again["final"]["log_loss"] == loss[(precision, 1)]
    # Every precision starts from the FP32 model's initial weights: the
    # wrapped model reads the FP32 variables that `reset` sets.
    initial = TINY_MODEL.build(bundle.vocab_sizes, seed=1).get_weights()
    fresh.reset(initial, "rne")
    for x, y in zip(initial, tfbf16.unwrap(fresh.model).get_weights()):
        np.testing.assert_array_equal(x, y)


def test_study_resumes_finished_runs(tiny_study):
    output_dir, results = tiny_study
    again = study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN,
                            precisions=["fp32", "rne", "trunc"], seeds=[0, 1],
                            output_dir=output_dir, verbose=0)
    assert again["summary"] == results["summary"]
    with pytest.raises(ValueError, match="other settings"):
        study.run_study(TINY_DATA, TINY_MODEL,
                        trainer.TrainConfig(train_steps=6, learning_rate=0.01,
                                            jit_compile=False),
                        precisions=["fp32"], seeds=[0], output_dir=output_dir,
                        verbose=0)


def _records(table):
    return [{"precision": p, "seed": s, "log_loss": v[0], "auc": v[1],
             "calibration": v[2]} for (p, s), v in table.items()]


def test_summary_on_known_numbers():
    table = {
        ("fp32", 0): (0.4400, 0.80, 1.0), ("fp32", 1): (0.4410, 0.81, 1.0),
        ("fp32", 2): (0.4420, 0.79, 1.0),
        ("trunc", 0): (0.4415, 0.79, 1.1), ("trunc", 1): (0.4423, 0.80, 1.1),
        ("trunc", 2): (0.4437, 0.78, 1.1),
        ("rne", 0): (0.4401, 0.80, 1.0), ("rne", 1): (0.4409, 0.81, 1.0),
        ("rne", 2): (0.4421, 0.79, 1.0),
    }
    summary = study.summarize(_records(table), ["fp32", "trunc", "rne"],
                              [0, 1, 2])
    # trunc - fp32 = 0.0015, 0.0013, 0.0017: mean 0.0015, sd 0.0002,
    # half-width t(0.975, 2) * 0.0002 / sqrt(3) = 4.302653 * 0.000115470.
    trunc = summary["trunc"]["log_loss_difference"]
    assert trunc["mean"] == pytest.approx(0.0015)
    assert trunc["half_width"] == pytest.approx(4.302653 * 0.0002 / 3**0.5,
                                                rel=1e-6)
    assert summary["trunc"]["practically_significant"] is True
    assert summary["trunc"]["resolved"] is True
    assert summary["trunc"]["verdict"] == "worse than FP32 by >= 0.001"
    assert summary["trunc"]["calibration"]["mean"] == pytest.approx(1.1)
    assert summary["trunc"]["auc_difference"]["mean"] == pytest.approx(-0.01)
    rne = summary["rne"]
    assert rne["log_loss_difference"]["mean"] == pytest.approx(0.0001 / 3)
    assert rne["practically_significant"] is False
    assert rne["verdict"].startswith("within 0.001 of FP32")
    assert summary["fp32"]["log_loss"] == stats.mean_interval(
        [0.4400, 0.4410, 0.4420]).as_dict()

    del table[("rne", 2)]
    with pytest.raises(ValueError, match=r"Missing runs.*'rne', 2"):
        study.summarize(_records(table), ["fp32", "trunc", "rne"], [0, 1, 2])


def test_verdicts():
    def interval(low, high):
        return stats.Interval((low + high) / 2, low, high, (high - low) / 2,
                              0.0, 5, 0.95)

    assert study.verdict(interval(-0.0012, -0.0011)).startswith("better")
    assert study.verdict(interval(0.0002, 0.0006)) == (
        "within 0.001 of FP32 (but worse than FP32)")
    assert study.verdict(interval(-0.0003, 0.0004)) == "within 0.001 of FP32"
    assert study.verdict(interval(0.0005, 0.0016)) == "inconclusive at 0.001"


@pytest.mark.parametrize("precisions, message", [
    (["rne", "trunc"], "must include 'fp32'"),
    (["fp32", "bf16"], "Unknown compute precision 'bf16'"),
    (["fp32", "rne", "rne"], "repeat"),
])
def test_precision_list_validation(precisions, message):
    with pytest.raises(ValueError, match=message):
        study.check_precisions(precisions)


def test_seed_list_validation():
    assert study.check_seeds(["3", "1"]) == [3, 1]
    for seeds, message in [(["1", "x"], "integers"), ([], "at least one"),
                           (["1", "1"], "repeat")]:
        with pytest.raises(ValueError, match=message):
            study.check_seeds(seeds)


def test_precision_flags_are_validated_together():
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="add bf16"):
            study.FLAGS(["study", "--update_rounding=kahan"])
        study.FLAGS.unparse_flags()
        study.FLAGS(["study", "--weights_precision=bf16", "--update_rounding=rne,kahan"])
        assert study.check_precisions(study.FLAGS.precisions, study.FLAGS.weights_precision,
                                      study.FLAGS.update_rounding) == [
            "fp32", "fp32+bf16w_rne", "fp32+bf16w_kahan", "rne+bf16w_rne",
            "rne+bf16w_kahan", "trunc+bf16w_rne", "trunc+bf16w_kahan"]
    finally:
        study.FLAGS.unparse_flags()


def test_study_compares_bf16_weight_update_roundings(tmp_path):
    results = study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN, precisions=["fp32"],
                              weights_precisions=["bf16"], update_roundings=["rne", "kahan"],
                              seeds=[0, 1], output_dir=str(tmp_path), verbose=0)
    names = ["fp32", "fp32+bf16w_rne", "fp32+bf16w_kahan"]
    assert results["config"]["precisions"] == names
    loss = {(r["precision"], r["seed"]): r["log_loss"] for r in results["runs"]}
    assert len({loss[(name, 0)] for name in names}) == 3
    markdown = study.format_markdown(results)
    assert "fp32+bf16w_kahan: FP32 compute, BF16 weights (kahan updates)" in markdown
    assert [line.split(" | ")[0] for line in markdown.splitlines()
            if line.startswith("| fp32")] == ["| " + n for n in names]
