"""Non-dominated sets of a run's trials: which trials have a score, and which of them no other dominates.

Domination rule: trial a dominates b when a's val_acc is at least b's and every cost of a is at most
b's, and a is strictly better in at least one of them. Equal points dominate neither; they are one
point, represented by the first of them in trial_id (string) order. moocore decides it (`non_dominated`).
Only trials scored at full fidelity (complete: every epoch ran) take part, unless stopped trials are asked
for too (`include_stopped`: ASHA scored them after fewer epochs, so they are not comparable); and only
those with a value for every cost.
"""
from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import pandas as pd

from qkvnas_core.errors import UsageError
from nas.settings.objectives import SCORE
from nas.runs.results import SCORED_STATES, TrialState


def scored_trials(table: pd.DataFrame, include_stopped: bool = True) -> pd.DataFrame:
    """The trials that have a score: complete (scored at full fidelity), and stopped ones unless
    `include_stopped` is False; each with a val_acc."""
    states = SCORED_STATES if include_stopped else (TrialState.COMPLETE,)
    return table[table["state"].isin(states) & table[SCORE].notna()]


def non_dominated(rows: pd.DataFrame, maximised: str, minimised: Sequence[str]) -> np.ndarray:
    """Which `rows` no other row dominates (the module's rule: `maximised` at least, each of `minimised` at most,
    one strictly better), by moocore; of equal rows only the first is non-dominated."""
    points = rows[[maximised, *minimised]].to_numpy(dtype=float)
    return moocore.is_nondominated(points, maximise=[True] + [False] * len(minimised), keep_weakly=False)


def pareto_front(table: pd.DataFrame, costs: Sequence[str], include_stopped: bool = False) -> pd.DataFrame:
    """The non-dominated trials scored at full fidelity (and stopped ones when `include_stopped`) over max val_acc
    and min `costs` (one front over all), sorted by costs[0]."""
    costs = list(costs)
    if not costs:
        raise ValueError("pareto front without a cost: expected at least one cost column, e.g. params")
    missing = [name for name in [SCORE, "state", "trial_id", *costs] if name not in table.columns]
    if missing:
        raise UsageError(f"trials table lacks column(s) {', '.join(missing)}: expected them to draw a Pareto front")
    # In trial_id order, so the first of equal trials is the one kept.
    candidates = scored_trials(table, include_stopped).dropna(subset=costs).sort_values("trial_id", kind="stable")
    front = candidates[non_dominated(candidates, SCORE, costs)]
    return front.sort_values([costs[0], SCORE, "trial_id"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)
