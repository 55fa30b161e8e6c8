"""The paired FP32-vs-BF16 study: outputs, pairing and summary statistics."""

import dataclasses
import json
import os

import numpy as np
import pytest

import tfbf16

from tfbf16.study.runs import RunMismatchError

from recsys import batches
from recsys import config
from recsys import model as model_lib
from recsys import study
from recsys import trainer

TINY_DATA = config.DataConfig(batch_size=64, eval_rows=512, vocab_scale=0.01)
TINY_MODEL = config.ModelConfig(embedding_dim=4, num_cross_layers=1, deep_layers=(8,))
TINY_TRAIN = config.TrainConfig(train_steps=6, eval_every=3, eval_steps=2,
                                checkpoint_every=6, log_every=3, jit_compile=False)


@pytest.fixture(scope="session")  # built once per test worker
def tiny_study(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("study"))
    results = study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN,
                              precisions=["fp32", "rne", "trunc"], seeds=[0, 1],
                              output_dir=output_dir, verbose=0, pairs=["trunc:rne"])
    return output_dir, results


@pytest.mark.xdist_group("study_tiny")  # shares a session fixture: one worker builds it
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
    summary = written["summary"]["precisions"]
    assert set(summary) == {"fp32", "rne", "trunc"}
    assert summary["fp32"]["log_loss"]["mean"]["n"] == 2
    assert "difference" not in summary["fp32"]["log_loss"]
    for precision in ("rne", "trunc"):
        cell = summary[precision]["log_loss"]
        diff = cell["difference"]
        assert diff["low"] <= diff["mean"] <= diff["high"]
        assert isinstance(cell["significant"], bool)
        assert [p["step"] for p in written["history"][precision]] == [0, 3, 6]
    # The input report, per data split, in results.json and results.md.
    assert set(written["input"]) == {"train", "eval"}
    assert written["input"]["eval"]["malformed"] == 0

    with open(os.path.join(output_dir, "results.md")) as f:
        markdown = f.read()
    assert markdown == study.format_markdown(results)
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3  # header, rule, one row per precision
    assert table[2].startswith("| fp32 | ") and "(baseline)" in table[2]
    assert table[3].startswith("| rne | ")
    assert "Input: train: " in markdown and "eval on 512 rows (requested 512)" in markdown
    # The extra pair trunc − rne: paired by seed like the differences to FP32.
    loss = {(r["precision"], r["seed"]): r["log_loss"] for r in results["runs"]}
    pair = written["pairs"]["trunc − rne"]["log_loss"]["difference"]
    assert pair["mean"] == pytest.approx(
        np.mean([loss[("trunc", s)] - loss[("rne", s)] for s in (0, 1)]), abs=1e-15)
    assert "Paired trunc − rne: Δ eval log loss" in markdown
    with open(os.path.join(output_dir, "study.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.xdist_group("study_tiny")  # shares a session fixture: one worker builds it
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
    bundle = batches.with_cached_eval(batches.make_bundle(TINY_DATA))
    for precision in ("fp32", "trunc"):
        fresh = trainer.Trainer(TINY_MODEL, bundle.vocab_sizes, TINY_TRAIN,
                                precision)
        again = fresh.run(bundle, TINY_DATA, precision=precision, seed=1, verbose=0,
                          model_dir=str(tmp_path / precision))
        assert again["final"]["log_loss"] == loss[(precision, 1)]
    # Every precision starts from the FP32 model's initial weights: the
    # wrapped model reads the FP32 variables that `reset` sets.
    initial = model_lib.build_from_config(TINY_MODEL, bundle.vocab_sizes,
                                          seed=1).get_weights()
    fresh.reset(initial, "rne")
    for x, y in zip(initial, tfbf16.unwrap(fresh.model).get_weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.xdist_group("study_tiny")  # shares a session fixture: one worker builds it
def test_study_resumes_finished_runs(tiny_study):
    output_dir, results = tiny_study
    again = study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN,
                            precisions=["fp32", "rne", "trunc"], seeds=[0, 1],
                            output_dir=output_dir, verbose=0)
    assert again["summary"] == results["summary"]
    assert all(r["loaded"] for r in again["runs"])
    with pytest.raises(RunMismatchError, match="train.learning_rate: 0.004 -> 0.01"):
        study.run_study(TINY_DATA, TINY_MODEL,
                        config.TrainConfig(train_steps=6, eval_every=3, eval_steps=2,
                                           learning_rate=0.01),
                        precisions=["fp32"], seeds=[0], output_dir=output_dir, verbose=0)


@pytest.mark.xdist_group("study_tiny")  # shares a session fixture: one worker builds it
def test_rerun_with_other_eval_rows_is_refused_not_reused(tiny_study):
    output_dir, _ = tiny_study
    other = dataclasses.replace(TINY_DATA, eval_rows=256)
    with pytest.raises(RunMismatchError, match="data.eval_rows: 512 -> 256") as refused:
        study.run_study(other, TINY_MODEL, TINY_TRAIN, precisions=["fp32", "rne"],
                        seeds=[0, 1], output_dir=output_dir, verbose=0)
    assert "--overwrite" in str(refused.value)


def test_adding_seeds_with_changed_eval_rows_never_pairs_them(tmp_path):
    output_dir = str(tmp_path)
    study.run_study(TINY_DATA, TINY_MODEL, TINY_TRAIN, precisions=["fp32", "rne"],
                    seeds=[0], output_dir=output_dir, verbose=0)
    other = dataclasses.replace(TINY_DATA, eval_rows=256)
    # Seed 0 of the old eval set is refused; with --overwrite it is retrained,
    # so every run of the new study is scored on the same 256 rows.
    with pytest.raises(RunMismatchError):
        study.run_study(other, TINY_MODEL, TINY_TRAIN, precisions=["fp32", "rne"],
                        seeds=[0, 1], output_dir=output_dir, verbose=0)
    results = study.run_study(other, TINY_MODEL, TINY_TRAIN, precisions=["fp32", "rne"],
                              seeds=[0, 1], output_dir=output_dir, verbose=0,
                              overwrite=True)
    assert {r["count"] for r in results["runs"]} == {256}
    assert len({r["pairing"]["eval_rows"] for r in results["runs"]}) == 1


@pytest.mark.parametrize("precisions, message", [
    (["rne", "trunc"], "must include 'fp32'"),
    (["fp32", "bf16"], "Unknown compute precision 'bf16'"),
    (["fp32", "rne", "rne"], "repeat"),
])
def test_precision_list_validation(precisions, message):
    with pytest.raises(ValueError, match=message):
        study.check_precisions(precisions)


def test_pair_validation():
    assert study.check_pairs(["native:rne"], ["fp32", "rne", "native"]) == [("native", "rne")]
    for pair in ("native", "native:trunc", "rne:rne"):
        with pytest.raises(ValueError, match="must name two different precisions"):
            study.check_pairs([pair], ["fp32", "rne", "native"])


def test_seed_list_validation():
    assert study.check_seeds(["3", "1"]) == [3, 1]
    for seeds, message in [(["1", "x"], "integers"), ([], "at least one"),
                           (["1", "1"], "repeat")]:
        with pytest.raises(ValueError, match=message):
            study.check_seeds(seeds)


def test_precision_flags_are_validated_together():
    try:
        study.FLAGS(["study", "--update_rounding=kahan"])
        with pytest.raises(ValueError, match="add bf16"):
            study.check_precisions(study.FLAGS.precisions, study.FLAGS.weights_precision,
                                   study.FLAGS.update_rounding)
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


def test_full_evaluations_at_log_spaced_steps_and_convergence(tmp_path):
    train = dataclasses.replace(TINY_TRAIN, train_steps=10, eval_every=0, eval_points=4)
    results = study.run_study(TINY_DATA, TINY_MODEL, train, precisions=["fp32", "trunc"],
                              seeds=[0, 1], output_dir=str(tmp_path), verbose=0)
    steps = [0, 1, 2, 5, 8, 10]
    for run in results["runs"]:
        assert [h["step"] for h in run["history"]] == steps
        # Full evaluations: the final point is the final evaluation.
        assert run["history"][-1]["log_loss"] == run["log_loss"]
    assert [p["step"] for p in results["history"]["trunc"]] == steps
    change = results["convergence"]["fp32"]
    assert (change["from_step"], change["to_step"]) == (8, 10)
    assert "Change of eval log loss from step 8 to 10" in study.format_markdown(results)


def test_eval_points_and_eval_every_exclude_each_other():
    with pytest.raises(ValueError, match="--eval_points .* and --eval_every .* exclude"):
        config.TrainConfig(eval_every=60, eval_points=10)
