"""The front's hypervolume against hand computations and a brute-force count of grid cells; its history."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.engine.hypervolume import front_hypervolume, hypervolume, hypervolume_history

CHECKS = settings(derandomize=True, max_examples=60, deadline=None, database=None)
LIMITS = {"params": 1000.0, "flops": 5000.0}


COLUMNS = ["val_acc", "params", "flops", "epochs_spent"]


def frame(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS[:len(rows[0])] if rows else COLUMNS)


def test_two_objectives_are_the_area_of_the_staircase():
    # Minimised, reference (4, 4): columns x in [1, 2], [2, 3], [3, 4] reach down to y = 3, 2, 1.
    assert hypervolume(np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]), np.array([4.0, 4.0])) == 1 * 1 + 1 * 2 + 1 * 3
    # val_acc up from 0, params / 1000 from 1: params 0.2-0.5 at accuracy 0.5, 0.5-0.9 at 0.8, 0.9-1 at 0.9.
    rows = frame((0.5, 200), (0.8, 500), (0.9, 900))
    assert front_hypervolume(rows, ["val_acc", "params"], LIMITS) == pytest.approx(0.3 * 0.5 + 0.4 * 0.8 + 0.1 * 0.9)


def test_accuracy_alone_is_the_best_accuracy():
    assert front_hypervolume(frame((0.5, 200), (0.8, 500)), ["val_acc"], LIMITS) == pytest.approx(0.8)


def grid_volume(cells: list[tuple[int, int, int]], size: int) -> float:
    """Brute force: the share of the size^3 unit cells of [0, size]^3 some point of `cells` (accuracy up from 0,
    costs down from size) dominates, cell by cell."""
    dominated = sum(any(corner[0] < acc and corner[1] >= params and corner[2] >= flops for acc, params, flops in cells)
                    for corner in itertools.product(range(size), repeat=3))
    return dominated / size ** 3


@CHECKS
@given(cells=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=8))
def test_three_objectives_match_a_count_of_grid_cells(cells):
    """Points on a grid of sixths (costs past their limit, 7/6, included): moocore against counting cells."""
    rows = frame(*[(acc / 6, params / 6 * LIMITS["params"], flops / 6 * LIMITS["flops"])
                   for acc, params, flops in cells])
    assert front_hypervolume(rows, ["val_acc", "params", "flops"], LIMITS) == pytest.approx(grid_volume(cells, 6))


def test_dominated_and_out_of_bounds_trials_add_nothing():
    objectives = ["val_acc", "params", "flops"]
    front = frame((0.5, 200, 1000), (0.8, 500, 4000), (0.7, 600, 500))
    value = front_hypervolume(front, objectives, LIMITS)
    assert 0 < value < 1
    extra = [(0.45, 300, 1200),  # dominated by the first row
             (0.99, 1000, 100), (0.99, 100, 6000),  # at or over a limit
             (0.0, 1, 1), (float("nan"), 1, 1)]  # no accuracy
    for row in extra:
        assert front_hypervolume(pd.concat([front, frame(row)]), objectives, LIMITS) == pytest.approx(value)
    assert front_hypervolume(frame(*extra[1:]), objectives, LIMITS) == 0.0
    assert front_hypervolume(frame(), ["val_acc", "params"], LIMITS) == 0.0


@CHECKS
@given(rows=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1200), st.floats(0, 6000), st.integers(1, 100)),
                     min_size=1, max_size=12))
def test_the_history_grows_in_order_of_epochs_spent_to_the_whole_fronts(rows):
    objectives = ["val_acc", "params", "flops"]
    trials = frame(*rows)
    history = hypervolume_history(trials, objectives, LIMITS)
    assert list(history.columns) == ["epochs_spent", "hypervolume"]
    assert history["epochs_spent"].tolist() == sorted(row[3] for row in rows)
    assert history["hypervolume"].is_monotonic_increasing
    first = trials.sort_values("epochs_spent", kind="stable").iloc[:1]
    assert history["hypervolume"].iloc[0] == front_hypervolume(first, objectives, LIMITS)
    assert history["hypervolume"].iloc[-1] == pytest.approx(front_hypervolume(trials, objectives, LIMITS))
