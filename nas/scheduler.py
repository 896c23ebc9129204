"""ASHA for the search (Li et al., MLSys 2020): rungs that end at the full length, seeded from the study on resume.

Ray's ASHAScheduler puts rungs at grace * rf^k below max_t (grace 3, factor 3, 10 epochs: 3 and 9), so
trials that pass the last rung are stopped or kept one epoch short of the end, and a resumed search starts
with empty rungs (Ray does not restore a scheduler; ray-project/ray#30838). Here the rungs fall at
max_t / rf^k, rounded, down to the grace period (10 epochs, factor 3, grace 1: 1, 3 and 10): the last rung
is the full length, where finishing is all that is left to decide, and each earlier one keeps a 1/rf share.
A resumed search replays the recorded curves of the run's trials into the rungs first, so it stops the
same trials as one that ran straight through.
"""
from __future__ import annotations

from collections.abc import Iterable

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


class RungScheduler(FIFOScheduler):
    """Asynchronous successive halving on one bracket, trials keyed by their Optuna trial number.

    At each rung a trial's score (`metric` at that epoch) is compared with the scores recorded there
    before it; below the (1 - 1/rf) quantile it stops. Each trial is recorded once per rung it reaches.
    """

    def __init__(self, metric: str, max_epochs: int, grace_epochs: int, reduction_factor: int) -> None:
        super().__init__()
        self._metric = metric
        self.reduction_factor = reduction_factor
        self.rungs: dict[int, dict[int, float]] = {epoch: {} for epoch in
                                                   rung_epochs(max_epochs, grace_epochs, reduction_factor)}
        self.stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def seed(self, curves: Iterable[tuple[int, list[float]]]) -> None:
        """Record earlier trials' per-epoch scores at every rung their curve reached, as if they ran here."""
        for number, curve in curves:
            for epoch, recorded in self.rungs.items():
                if epoch <= len(curve):
                    recorded[number] = curve[epoch - 1]

    def decide(self, number: int, epoch: int, score: float) -> str:
        """CONTINUE or STOP for trial `number` scoring `score` after `epoch` epochs."""
        recorded = self.rungs.get(epoch)
        if recorded is None or number in recorded:
            return TrialScheduler.CONTINUE
        cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100) if recorded else None
        recorded[number] = score
        if cutoff is not None and score < cutoff:
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result:
            return TrialScheduler.CONTINUE
        return self.decide(trial.config["trial_number"], int(result["training_iteration"]), float(result[self._metric]))

    def debug_string(self) -> str:
        return (f"rungs at epochs {list(self.rungs)} ({', '.join(f'{len(r)} recorded' for r in self.rungs.values())}), "
                f"{self.stopped} stopped")
