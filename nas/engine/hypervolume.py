"""The hypervolume of a search's front, and how it grew as the search spent epochs.

The reference point is accuracy 0 and each cost's limit (params: the budget; flops: --max-flops), and each
cost axis is cost / limit: a front's hypervolume is the share of the unit box [0, 1] x [0, 1]^costs it
dominates, so it lies in [0, 1] and compares across budgets. A trial at a cost limit or at accuracy 0 adds
nothing. With accuracy alone it is the best accuracy. Computed exactly by moocore (O(n log n) in 2-D and 3-D).
"""
from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import pandas as pd


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `points` (rows, every objective minimised) and bounded by `reference`; points not
    better than the reference in every objective add nothing, and no points give 0."""
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(np.asarray(points, dtype=float), ref=np.asarray(reference, dtype=float)))


def _normalised(frame: pd.DataFrame, objectives: Sequence[str], limits: dict[str, float]) -> np.ndarray:
    """Rows as points to minimise: -accuracy, then each cost / its limit; rows missing a value are left out."""
    costs = list(objectives[1:])
    values = frame[list(objectives)].astype(float).dropna()
    return np.column_stack([-values[objectives[0]].to_numpy()] +
                           [values[name].to_numpy() / limits[name] for name in costs])


def front_hypervolume(frame: pd.DataFrame, objectives: Sequence[str], limits: dict[str, float]) -> float:
    """Hypervolume of the rows' `objectives` (objectives[0] the accuracy, maximised from 0; the rest costs,
    minimised from `limits[name]`), each cost divided by its limit: in [0, 1]."""
    reference = np.array([0.0] + [1.0] * (len(objectives) - 1))
    return hypervolume(_normalised(frame, objectives, limits), reference)


def hypervolume_history(frame: pd.DataFrame, objectives: Sequence[str], limits: dict[str, float],
                        order_column: str = "epochs_spent") -> pd.DataFrame:
    """After each row in order of `order_column`, the `front_hypervolume` of the rows so far: columns
    `order_column` and hypervolume, one row per row of `frame`."""
    ordered = frame.sort_values(order_column, kind="stable")
    return pd.DataFrame({order_column: ordered[order_column].to_numpy(),
                         "hypervolume": [front_hypervolume(ordered.iloc[:count], objectives, limits)
                                         for count in range(1, len(ordered) + 1)]})
