"""benchmarks.timing: what is timed, and what is refused."""

import time

import pytest

from benchmarks import timing


def test_a_returned_number_is_not_taken_for_the_candidates_own_time():
    def sleeps_and_returns_a_loss():
        time.sleep(0.02)
        return 1000.0  # a loss, not seconds

    results = timing.interleave({"c": sleeps_and_returns_a_loss}, rounds=2, warmup=0)
    assert all(0.015 < s < 1.0 for s in results["c"].seconds), results["c"].seconds


def test_a_self_timed_candidate_reports_its_own_seconds():
    results = timing.interleave({"c": lambda: timing.SelfTimed(0.5)}, rounds=2, warmup=0,
                                calls=2)
    assert results["c"].seconds == [0.5, 0.5]


def test_ratio_is_the_median_of_same_round_ratios():
    results = timing.interleave({"a": lambda: timing.SelfTimed(2.0),
                                 "b": lambda: timing.SelfTimed(1.0)}, rounds=3, warmup=0)
    assert results["a"].ratio_to(results["b"]) == 2.0


@pytest.mark.parametrize("candidates, rounds", [({}, 3), ({"c": lambda: None}, 0)])
def test_nothing_to_time_is_refused(candidates, rounds):
    with pytest.raises(ValueError, match="candidates and rounds"):
        timing.interleave(candidates, rounds=rounds)
