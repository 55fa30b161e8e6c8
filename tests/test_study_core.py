"""The paired-seed study core: intervals, summaries, pairing checks, run
directories and plots (tfbf16.study)."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tfbf16.study import plots
from tfbf16.study import runs as runs_lib
from tfbf16.study import stats
from tfbf16.study import summary as summary_lib

# Values of the hand-written incomplete-beta t quantile this package used
# before it used SciPy (recsys/stats.py, removed), on the same arguments.
OLD_T_QUANTILES = {
    (0.975, 1): 12.70620473617464, (0.975, 2): 4.302652729749411,
    (0.975, 7): 2.3646242515927725, (0.975, 30): 2.042272456301191,
    (0.995, 1): 63.656741162869366, (0.995, 2): 9.92484320091853,
    (0.995, 7): 3.4994832973505936, (0.995, 30): 2.7499956535672254,
}


@pytest.mark.parametrize("p, df", sorted(OLD_T_QUANTILES))
def test_t_quantile_is_scipys_and_equals_the_old_values(p, df):
    assert stats.t_quantile(p, df) == scipy_stats.t.ppf(p, df)
    assert stats.t_quantile(p, df) == pytest.approx(OLD_T_QUANTILES[(p, df)], rel=1e-12)


def test_intervals_equal_scipys_on_the_same_numbers():
    values = [0.4401, 0.4405, 0.4398, 0.4412, 0.4407]
    interval = stats.mean_interval(values, 0.9)
    low, high = scipy_stats.t.interval(0.9, len(values) - 1, loc=np.mean(values),
                                       scale=scipy_stats.sem(values))
    assert interval.low == pytest.approx(low, abs=1e-15)
    assert interval.high == pytest.approx(high, abs=1e-15)
    assert interval.n == 5 and interval.confidence == 0.9
    paired = stats.paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 1.5])
    assert paired.mean == pytest.approx(np.mean([0.5, 1.0, 2.5]))
    assert math.isnan(stats.mean_interval([1.0]).half_width)


@pytest.mark.parametrize("call, message", [
    (lambda: stats.mean_interval([]), "empty sample"),
    (lambda: stats.mean_interval([1.0, float("nan")]), "non-finite"),
    (lambda: stats.mean_interval([1.0, 2.0], confidence=1.0), "strictly between 0 and 1"),
    (lambda: stats.mean_interval([1.0, 2.0], confidence=0), "strictly between 0 and 1"),
    (lambda: stats.paired_difference([1.0, 2.0], [1.0]), "same length"),
    (lambda: stats.verdict(stats.mean_interval([1.0, 2.0]), -0.001), "threshold must be > 0"),
    (lambda: summary_lib.Metric("log_loss", False, threshold=-0.001), "must be a number > 0"),
    (lambda: summary_lib.Metric("log_loss", False, threshold=float("inf")), "must be a number > 0"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _runs(table):
    return [{"precision": p, "seed": s, "log_loss": v[0], "auc": v[1], "calibration": v[2]}
            for (p, s), v in table.items()]


TABLE = {
    ("fp32", 0): (0.4400, 0.80, 1.0), ("fp32", 1): (0.4410, 0.81, 1.0),
    ("fp32", 2): (0.4420, 0.79, 1.0),
    ("trunc", 0): (0.4415, 0.79, 1.1), ("trunc", 1): (0.4423, 0.80, 1.1),
    ("trunc", 2): (0.4437, 0.78, 1.1),
    ("rne", 0): (0.4401, 0.80, 1.0), ("rne", 1): (0.4409, 0.81, 1.0),
    ("rne", 2): (0.4421, 0.79, 1.0),
}
METRICS = [summary_lib.Metric("log_loss", False, threshold=0.001),
           summary_lib.Metric("auc", True),
           summary_lib.Metric("calibration", False, paired=False)]


def test_summary_on_known_numbers():
    summary = summary_lib.summarize(_runs(TABLE), precisions=["fp32", "trunc", "rne"],
                                    seeds=[0, 1, 2], metrics=METRICS)
    # trunc - fp32 = 0.0015, 0.0013, 0.0017: mean 0.0015, sd 0.0002,
    # half-width t(0.975, 2) * 0.0002 / sqrt(3) = 4.302653 * 0.000115470.
    trunc = summary["precisions"]["trunc"]
    assert trunc["log_loss"]["difference"]["mean"] == pytest.approx(0.0015)
    assert trunc["log_loss"]["difference"]["half_width"] == pytest.approx(
        4.302653 * 0.0002 / 3**0.5, rel=1e-6)
    assert trunc["log_loss"]["significant"] is True
    assert trunc["log_loss"]["resolved"] is True
    assert trunc["log_loss"]["verdict"] == "worse than FP32 by >= 0.001"
    assert trunc["calibration"]["mean"]["mean"] == pytest.approx(1.1)
    assert trunc["auc"]["difference"]["mean"] == pytest.approx(-0.01)
    assert "verdict" not in trunc["auc"]  # no threshold: report only
    rne = summary["precisions"]["rne"]["log_loss"]
    assert rne["difference"]["mean"] == pytest.approx(0.0001 / 3)
    assert rne["significant"] is False
    assert rne["verdict"].startswith("within 0.001 of FP32")
    assert summary["precisions"]["fp32"]["log_loss"]["mean"] == stats.mean_interval(
        [0.4400, 0.4410, 0.4420]).as_dict()
    assert "difference" not in summary["precisions"]["fp32"]["log_loss"]
    json.dumps(summary)  # JSON-ready

    table = summary_lib.format_table(summary, extra_columns={"speed": {"fp32": "1"}})
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| fp32 | 0.4410 ± ") and "(baseline)" in lines[2]
    assert "| trunc | " in lines[3] and "+0.0015 [+0.0010, +0.0020] | yes | worse" in lines[3]
    assert lines[0].endswith("| speed |") and lines[2].endswith("| 1 |")

    missing = dict(TABLE)
    del missing[("rne", 2)]
    with pytest.raises(ValueError, match=r"Missing runs.*'rne', 2"):
        summary_lib.summarize(_runs(missing), precisions=["fp32", "trunc", "rne"],
                              seeds=[0, 1, 2], metrics=METRICS)
    broken = _runs(TABLE)
    broken[4]["log_loss"] = float("nan")
    with pytest.raises(ValueError, match="no finite 'log_loss'"):
        summary_lib.summarize(broken, precisions=["fp32", "trunc", "rne"],
                              seeds=[0, 1, 2], metrics=METRICS)


def test_higher_is_better_verdicts():
    def interval(low, high):
        return stats.Interval((low + high) / 2, low, high, (high - low) / 2, 0.0, 5, 0.95)

    assert stats.verdict(interval(-0.0012, -0.0011), 0.001).startswith("better")
    assert stats.verdict(interval(0.0002, 0.0006), 0.001) == (
        "within 0.001 of FP32 (but worse than FP32)")
    assert stats.verdict(interval(-0.0003, 0.0004), 0.001) == "within 0.001 of FP32"
    assert stats.verdict(interval(0.0005, 0.0016), 0.001) == "inconclusive at 0.001"
    # Accuracy: a positive difference is better.
    assert stats.verdict(interval(0.011, 0.02), 0.01, higher_is_better=True) == (
        "better than FP32 by >= 0.01")
    assert stats.verdict(interval(-0.004, -0.001), 0.01, higher_is_better=True) == (
        "within 0.01 of FP32 (but worse than FP32)")


def test_runs_evaluated_on_other_rows_are_never_paired():
    runs = _runs(TABLE)
    for run in runs:
        run["pairing"] = {"eval_rows": "512 rows, sha256 aa", "initial_weights": f"w{run['seed']}"}
    summary_lib.summarize(runs, precisions=["fp32", "trunc", "rne"], seeds=[0, 1, 2],
                          metrics=METRICS, pairing_everywhere=("eval_rows",),
                          pairing_within_seed=("initial_weights",))
    runs[5]["pairing"]["eval_rows"] = "500 rows, sha256 bb"
    with pytest.raises(ValueError, match="Refusing to pair runs that differ in eval_rows"):
        summary_lib.summarize(runs, precisions=["fp32", "trunc", "rne"], seeds=[0, 1, 2],
                              metrics=METRICS, pairing_everywhere=("eval_rows",))
    runs[5]["pairing"]["eval_rows"] = "512 rows, sha256 aa"
    runs[4]["pairing"]["initial_weights"] = "other"
    with pytest.raises(ValueError, match="seed 1 that differ in initial_weights"):
        summary_lib.summarize(runs, precisions=["fp32", "trunc", "rne"], seeds=[0, 1, 2],
                              metrics=METRICS, pairing_within_seed=("initial_weights",))


def test_history_summary_and_plot(tmp_path):
    runs = _runs(TABLE)
    for run in runs:
        offset = {"fp32": 0.0, "rne": 1e-4, "trunc": 3e-4}[run["precision"]]
        run["history"] = [{"step": step, "log_loss": 0.6 - 0.01 * k + offset + 1e-5 * run["seed"]}
                          for k, step in enumerate((0, 1, 10, 100))]
    runs[0]["history"].append({"step": 1000, "log_loss": 0.1})  # not common: dropped
    history = summary_lib.summarize_history(runs, precisions=["fp32", "rne", "trunc"],
                                            seeds=[0, 1, 2], metric=METRICS[0])
    assert [p["step"] for p in history["trunc"]] == [0, 1, 10, 100]
    assert history["trunc"][2]["difference"]["mean"] == pytest.approx(3e-4)
    assert "difference" not in history["fp32"][0]
    summary = summary_lib.summarize(runs, precisions=["fp32", "rne", "trunc"],
                                    seeds=[0, 1, 2], metrics=METRICS)
    path = tmp_path / "study.png"
    plots.save_study_plot(str(path), summary, runs, METRICS[0], history=history,
                          log_steps=True, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(tmp_path) if n != "study.png"]  # no temporary left


def test_run_directory_is_reused_only_for_the_same_identity(tmp_path):
    identity = {"data": {"eval_rows": 262144, "input": {"sha256": "aa"}}, "seed": 0}
    path = tmp_path / "run"
    directory = runs_lib.RunDirectory(path, identity).open()
    directory.write_json("result.json", {"log_loss": 0.44})
    again = runs_lib.RunDirectory(path, json.loads(json.dumps(identity))).open()
    assert again.read_json("result.json") == {"log_loss": 0.44}

    changed = {"data": {"eval_rows": 500, "input": {"sha256": "bb"}}, "seed": 0}
    with pytest.raises(runs_lib.RunMismatchError,
                       match=r"data.eval_rows: 262144 -> 500; data.input.sha256: aa -> bb"):
        runs_lib.RunDirectory(path, changed).open()
    assert runs_lib.RunDirectory(path, identity).open().read_json("result.json")  # kept

    runs_lib.RunDirectory(path, changed, overwrite=True).open()
    assert sorted(os.listdir(path)) == ["identity.json"]

    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "result.json").write_text("{}")
    with pytest.raises(runs_lib.RunMismatchError, match="no identity.json"):
        runs_lib.RunDirectory(tmp_path / "stray", identity).open()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        runs_lib.RunDirectory(tmp_path / "a_file", identity).open()


def test_corrupt_result_file_names_the_file(tmp_path):
    directory = runs_lib.RunDirectory(tmp_path / "run", {"seed": 0}).open()
    (tmp_path / "run" / "result.json").write_text("")
    with pytest.raises(ValueError, match=r"run/result.json is empty"):
        directory.read_json("result.json")
    (tmp_path / "run" / "result.json").write_text("{\"log_loss\": ")
    with pytest.raises(ValueError, match=r"run/result.json is not valid JSON"):
        directory.read_json("result.json")


def test_change_over_the_end_of_training():
    runs = []
    for precision, offset in (("fp32", 0.0), ("rne", 0.001)):
        for seed, drift in enumerate((0.002, 0.004, 0.003)):
            runs.append({"precision": precision, "seed": seed, "history": [
                {"step": 80, "log_loss": 0.5 + offset}, {"step": 100, "log_loss": 0.5 + offset - drift}]})
    change = summary_lib.summarize_change(runs, precisions=["fp32", "rne"], seeds=[0, 1, 2],
                                          metric=METRICS[0], from_step=80, to_step=100)
    assert change["rne"]["from_step"] == 80 and change["rne"]["to_step"] == 100
    assert change["fp32"]["change"]["mean"] == pytest.approx(-0.003)
    assert change["fp32"]["change"] == stats.mean_interval(
        [(0.5 - d) - 0.5 for d in (0.002, 0.004, 0.003)]).as_dict()
    with pytest.raises(ValueError, match="not evaluated at steps 50 and 100"):
        summary_lib.summarize_change(runs, precisions=["fp32"], seeds=[0], metric=METRICS[0],
                                     from_step=50, to_step=100)
