"""ASHA's rungs and decisions: where the rungs fall, the one-objective rule as it was, MO-ASHA on hand-built rungs,
and a resumed search's seeded rungs."""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.engine.scheduler import RungScheduler, epsilon_net_order, in_top_share, rung_epochs
from nas.settings import SearchSettings

CHECKS = settings(derandomize=True, max_examples=150, deadline=None, database=None)
# Few distinct values, so rungs meet ties; NaN as a score that was not measured.
SCORES = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, math.nan]), st.floats(0, 1))


class QuantileRule:
    """The one-objective rule as it was before MO-ASHA, copied: stop below the (1 - 1/rf) nanpercentile of the
    scores recorded at the rung before."""

    def __init__(self, max_epochs: int, grace_epochs: int, reduction_factor: int) -> None:
        self.reduction_factor = reduction_factor
        self.rungs = {epoch: {} for epoch in rung_epochs(max_epochs, grace_epochs, reduction_factor)}

    def decide(self, number: int, epoch: int, score: float) -> str:
        recorded = self.rungs.get(epoch)
        if recorded is None or number in recorded:
            return "CONTINUE"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rungs: the cutoff is NaN
            cutoff = (np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100)
                      if recorded else None)
        recorded[number] = score
        if cutoff is not None and score < cutoff:
            return "STOP"
        return "CONTINUE"


def test_rungs_end_at_the_full_length():
    assert rung_epochs(10, 1, 3) == [1, 3, 10]
    assert rung_epochs(10, 3, 3) == [3, 10]
    assert rung_epochs(16, 1, 2) == [1, 2, 4, 8, 16]
    assert rung_epochs(3, 1, 2) == [1, 2, 3]


def test_the_default_search_compares_at_2_and_10_epochs():
    # docs/search.md: one epoch does not rank the qkv space (the rung-correlation figures), two do.
    defaults = SearchSettings(name="defaults", budget=3_100_000)
    assert rung_epochs(defaults.epochs, defaults.grace_epochs, defaults.reduction_factor) == [2, 10]


@CHECKS
@given(data=st.data(), max_epochs=st.integers(1, 6), grace_epochs=st.integers(1, 2),
       reduction_factor=st.integers(2, 4))
def test_one_objective_decides_as_the_quantile_rule(data, max_epochs, grace_epochs, reduction_factor):
    """Trials' curves reported interleaved, a stopped trial reporting no more: every decision is the old rule's."""
    curves = data.draw(st.lists(st.lists(SCORES, min_size=1, max_size=max_epochs), min_size=1, max_size=12))
    reports = data.draw(st.permutations([number for number, curve in enumerate(curves) for _ in curve]))
    scheduler = RungScheduler(["val_acc"], max_epochs, grace_epochs, reduction_factor)
    old = QuantileRule(max_epochs, grace_epochs, reduction_factor)
    epochs_done = [0] * len(curves)
    stopped = set()
    for number in reports:
        if number in stopped:
            continue
        epochs_done[number] += 1
        score = curves[number][epochs_done[number] - 1]
        decision = scheduler.decide(number, epochs_done[number], [score])
        assert decision == old.decide(number, epochs_done[number], score)
        if decision == "STOP":
            stopped.add(number)
    assert scheduler.stopped == len(stopped)


@CHECKS
@given(data=st.data(), reduction_factor=st.integers(2, 4), rf_multiple=st.integers(0, 5),
       score=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1))
def test_the_rank_rule_on_one_objective_is_the_quantile_rule_where_the_quantile_is_a_recorded_score(
        data, reduction_factor, rf_multiple, score):
    """Of m recorded scores the (1 - 1/rf) quantile is the one at index (m - 1)(1 - 1/rf): whole when rf divides
    m - 1."""
    count = rf_multiple * reduction_factor + 1
    recorded = data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1), min_size=count,
                                  max_size=count))
    quantile = np.percentile(recorded, (1 - 1 / reduction_factor) * 100)
    assert in_top_share(np.array([-score]), -np.array(recorded)[:, None], reduction_factor) == (score >= quantile)


def test_between_recorded_scores_the_rank_rule_and_the_quantile_differ():
    """Why one objective keeps the quantile rule: a score between two recorded ones is judged by its value."""
    assert in_top_share(np.array([-0.25]), -np.array([[0.0], [1.0]]), 2)  # position 1 of 3: in the top half
    scheduler = RungScheduler(["val_acc"], 1, 1, 2)
    scheduler.seed([(0, [(0.0,)]), (1, [(1.0,)])])
    assert scheduler.decide(2, 1, (0.25,)) == "STOP"  # below the median, 0.5


def mo_rung(points: list[tuple[float, float]]) -> RungScheduler:
    """A val_acc/params scheduler, factor 2, whose one rung (epoch 1) holds `points` as trials 0, 1, ..."""
    scheduler = RungScheduler(["val_acc", "params"], 1, 1, 2)
    scheduler.seed((number, [point]) for number, point in enumerate(points))
    return scheduler


def test_a_trial_every_earlier_one_dominates_stops():
    scheduler = mo_rung([(0.8, 100), (0.7, 50), (0.9, 80)])
    assert scheduler.decide(9, 1, (0.6, 120)) == "STOP"
    assert scheduler.stopped == 1


def test_a_cheap_less_accurate_trial_on_the_first_front_continues_where_one_objective_stops_it():
    earlier = [(0.8, 100), (0.9, 120), (0.85, 110)]
    assert mo_rung(earlier).decide(9, 1, (0.5, 10)) == "CONTINUE"
    single = RungScheduler(["val_acc"], 1, 1, 2)
    single.seed((number, [(acc,)]) for number, (acc, _) in enumerate(earlier))
    assert single.decide(9, 1, (0.5,)) == "STOP"


def test_within_the_first_front_the_epsilon_net_decides():
    """Four trials on one front, factor 2: the two kept are the most accurate and the one farthest from it (the
    cheap end); a newcomer in the middle of the front stops although nothing dominates it."""
    earlier = [(0.9, 100), (0.5, 10), (0.8, 60)]
    assert mo_rung(earlier).decide(9, 1, (0.7, 40)) == "STOP"
    assert mo_rung(earlier).decide(9, 1, (0.4, 5)) == "CONTINUE"
    assert mo_rung(earlier).decide(9, 1, (0.95, 200)) == "CONTINUE"


def test_the_epsilon_net_starts_at_the_best_score_then_goes_farthest_first():
    front = np.array([[-0.8, 60.0], [-0.5, 10.0], [-0.9, 100.0], [-0.7, 40.0]])  # -val_acc, params
    assert list(epsilon_net_order(front)) == [2, 1, 3, 0]


def test_a_newcomer_equal_to_an_earlier_trial_ranks_before_it():
    """Like a score equal to the quantile: three points, the top 1.5 kept; the copy of the cheap end is second."""
    assert mo_rung([(0.9, 100), (0.5, 10)]).decide(9, 1, (0.5, 10)) == "CONTINUE"
    assert mo_rung([(0.9, 100), (0.5, 10)]).decide(9, 1, (0.5, 11)) == "STOP"


def test_a_decision_does_not_depend_on_the_order_trials_were_recorded_in():
    """Trials 1 and 2 tie for the epsilon-net's third pick; the newcomer, near trial 2, is fourth (kept: 8 points,
    factor 2) when trial 1 is picked, fifth when trial 2 is. The lower trial number wins the tie, however the
    rung was filled (live trials in the order they ended, a resumed one in the study's order)."""
    rung = {1: (0.75, 50), 2: (0.5, 25), 3: (1.0, 100), 4: (0.0, 0), 5: (0.1, 90), 6: (0.2, 95), 7: (0.3, 99)}
    for order in ([1, 2, 3, 4, 5, 6, 7], [2, 1, 3, 4, 5, 6, 7]):
        scheduler = RungScheduler(["val_acc", "params"], 1, 1, 2)
        scheduler.seed((number, [rung[number]]) for number in order)
        assert scheduler.decide(9, 1, (0.4375, 18.75)) == "CONTINUE"


def test_trials_without_earlier_rivals_or_with_a_missing_value_continue():
    scheduler = RungScheduler(["val_acc", "params"], 1, 1, 2)
    assert scheduler.decide(0, 1, (0.1, 100)) == "CONTINUE"
    assert scheduler.decide(1, 1, (math.nan, 200)) == "CONTINUE"
    assert scheduler.decide(2, 1, (0.05, 200)) == "STOP"  # trial 1's NaN is left out: trial 0 dominates it
    assert scheduler.decide(3, 5, (0.0, 1)) == "CONTINUE"  # no rung at epoch 5


def test_results_are_read_from_the_result_then_the_config():
    scheduler = RungScheduler(["val_acc", "params", "flops"], 2, 1, 2)
    trial = SimpleNamespace(config={"trial_number": 4, "params": 1000, "flops": 5000, "val_acc": 0.1})
    assert scheduler.on_trial_result(None, trial, {"training_iteration": 1, "loss": 2.0}) == "CONTINUE"
    assert scheduler.rungs == {1: {}, 2: {}}
    scheduler.on_trial_result(None, trial, {"training_iteration": 1, "val_acc": 0.5, "flops": 4000})
    assert scheduler.rungs[1] == {4: (0.5, 1000.0, 4000.0)}


CURVES = {0: [0.5, 0.6, 0.7], 1: [0.2, 0.3, 0.4], 2: [0.8, 0.85, 0.9], 3: [0.3, 0.5, 0.6], 4: [0.6, 0.7, 0.8],
          5: [0.1, 0.2, 0.3]}
PARAMS = {0: 500, 1: 50, 2: 900, 3: 400, 4: 300, 5: 600}


@pytest.mark.parametrize("objectives", [["val_acc"], ["val_acc", "params"]])
def test_seeded_rungs_decide_as_an_uninterrupted_run(objectives):
    """Trials 0-5 report one curve each; a scheduler that saw 0-2 live and one seeded with their curves decide the
    same for 3-5."""
    curves = {number: [(score, PARAMS[number])[:len(objectives)] for score in curve]
              for number, curve in CURVES.items()}

    def run(scheduler, numbers):
        decisions = {}
        for number in numbers:
            for epoch, values in enumerate(curves[number], 1):
                if scheduler.decide(number, epoch, values) == "STOP":
                    decisions[number] = epoch
                    break
            decisions.setdefault(number, len(curves[number]))
        return decisions

    straight = run(RungScheduler(objectives, 3, 1, 2), range(6))
    first = run(RungScheduler(objectives, 3, 1, 2), range(3))
    resumed = RungScheduler(objectives, 3, 1, 2)
    resumed.seed([(number, curves[number][:epochs]) for number, epochs in first.items()])
    assert {**first, **run(resumed, range(3, 6))} == straight
    assert any(epochs < 3 for epochs in straight.values())
