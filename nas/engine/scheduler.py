"""ASHA for the search (Li et al., MLSys 2020) on one or several objectives: rungs that end at the full length,
seeded from the study on resume.

Ray's ASHAScheduler puts rungs at grace * rf^k below max_t (grace 3, factor 3, 10 epochs: 3 and 9), so
trials that pass the last rung are stopped or kept one epoch short of the end, and a resumed search starts
with empty rungs (Ray does not restore a scheduler; ray-project/ray#30838). Here the rungs fall at
max_t / rf^k, rounded, down to the grace period (10 epochs, factor 3, grace 1: 1, 3 and 10): the last rung
is the full length, where finishing is all that is left to decide, and each earlier one keeps a 1/rf share.
A resumed search replays the recorded curves of the run's trials into the rungs first, so it stops the
same trials as one that ran straight through.

With several objectives (the score to maximise, then costs to minimise) a rung ranks its trials as MOASHA
does (Schmucker et al. 2021; Syne Tune's MOASHA): non-dominated sorting, then the epsilon-net within a front.
Epsilon-net over crowding distance: it orders every front strictly and puts its most accurate trial first,
where crowding gives both ends of a front (every trial of a front of two) the same infinite distance.
With one objective a rung keeps the quantile rule, which interpolates between recorded scores: the rank rule
decides the same only where the quantile falls on a recorded score (tests/test_nas/test_scheduler.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import moocore
import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def rung_epochs(max_epochs: int, grace_epochs: int, reduction_factor: int) -> list[int]:
    """Epochs at which trials are compared: max_epochs / rf^k, rounded, from the smallest >= grace up to max."""
    rungs = []
    for power in range(max_epochs):
        epoch = round(max_epochs / reduction_factor ** power)
        if epoch < grace_epochs or (rungs and epoch == rungs[-1]):
            break
        rungs.append(epoch)
    return sorted(rungs)


def epsilon_net_order(points: np.ndarray) -> np.ndarray:
    """Indices of one front's `points` (rows, every column minimised) best first: the lowest first column, then
    each time the point farthest from those chosen, in columns scaled to [0, 1]; ties go to the lower index."""
    span = np.ptp(points, axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    order = [int(np.argmin(points[:, 0]))]
    nearest = np.linalg.norm(scaled - scaled[order[0]], axis=1)
    for _ in range(len(points) - 1):
        nearest[order] = -1.0
        order.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[order[-1]], axis=1))
    return np.array(order)


def promotion_order(points: np.ndarray) -> np.ndarray:
    """Indices of `points` (rows, every column minimised) best first: by non-dominated front, then the
    epsilon-net within each front."""
    fronts = moocore.pareto_rank(points)
    return np.concatenate([members[epsilon_net_order(points[members])]
                           for members in (np.flatnonzero(fronts == front) for front in np.unique(fronts))])


def in_top_share(newcomer: np.ndarray, recorded: np.ndarray, reduction_factor: int) -> bool:
    """Whether `newcomer` (every column minimised) ranks among the best 1/rf of itself and the `recorded` rows;
    it comes first among points equal to it, as a score equal to the quantile continues."""
    points = np.vstack([newcomer, recorded])
    position = int(np.flatnonzero(promotion_order(points) == 0)[0])
    return position < len(points) / reduction_factor


class RungScheduler(FIFOScheduler):
    """Asynchronous successive halving on one bracket, trials keyed by their Optuna trial number.

    `objectives[0]` is the score to maximise (val_acc), the rest costs to minimise (params, flops). At each
    rung a trial is compared with the trials recorded there before it: with one objective it stops below the
    (1 - 1/rf) quantile of their scores; with several it stops unless `in_top_share` of them. A trial with a
    missing (NaN) value is recorded and continues, and is left out of later comparisons, as np.nanpercentile
    leaves it. Each trial is recorded once per rung it reaches.
    """

    def __init__(self, objectives: Sequence[str], max_epochs: int, grace_epochs: int, reduction_factor: int) -> None:
        super().__init__()
        self.objectives = list(objectives)
        self.reduction_factor = reduction_factor
        # Scores are maximised: negated, every column is minimised.
        self._signs = np.array([-1.0] + [1.0] * (len(self.objectives) - 1))
        self.rungs: dict[int, dict[int, tuple[float, ...]]] = {
            epoch: {} for epoch in rung_epochs(max_epochs, grace_epochs, reduction_factor)}
        self.stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def seed(self, points: Iterable[tuple[int, list[Sequence[float]]]]) -> None:
        """Record earlier trials' values after each epoch at every rung their curve reached, as if they ran here."""
        for number, curve in points:
            for epoch, recorded in self.rungs.items():
                if epoch <= len(curve):
                    recorded[number] = tuple(float(value) for value in curve[epoch - 1])

    def decide(self, number: int, epoch: int, values: Sequence[float]) -> str:
        """CONTINUE or STOP for trial `number` with `values` (in the order of the objectives) after `epoch` epochs."""
        recorded = self.rungs.get(epoch)
        if recorded is None or number in recorded:
            return TrialScheduler.CONTINUE
        earlier = np.array([recorded[other] for other in sorted(recorded)]).reshape(-1, len(self.objectives))
        values = tuple(float(value) for value in values)
        recorded[number] = values
        if self._keeps(np.array(values), earlier):
            return TrialScheduler.CONTINUE
        self.stopped += 1
        return TrialScheduler.STOP

    def _keeps(self, values: np.ndarray, earlier: np.ndarray) -> bool:
        earlier = earlier[~np.isnan(earlier).any(axis=1)]
        if np.isnan(values).any() or len(earlier) == 0:
            return True
        if len(self.objectives) == 1:
            return not values[0] < np.percentile(earlier[:, 0], (1 - 1 / self.reduction_factor) * 100)
        return in_top_share(values * self._signs, earlier * self._signs, self.reduction_factor)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.objectives[0] not in result:
            return TrialScheduler.CONTINUE
        values = [result[name] if name in result else trial.config[name] for name in self.objectives]
        return self.decide(trial.config["trial_number"], int(result["training_iteration"]), values)

    def debug_string(self) -> str:
        return (f"rungs at epochs {list(self.rungs)} ({', '.join(f'{len(r)} recorded' for r in self.rungs.values())}), "
                f"{self.stopped} stopped")
