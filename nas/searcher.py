"""The budget-constrained Optuna searcher: over-budget draws are rejected before Ray ever sees them.

Built on Ray Tune's `OptunaSearch` with two changes users of NAS tools ask for:
- every draw is counted on the meta device first; one over the budget is told to Optuna as infeasible
  (a complete trial whose constraint value is positive, so constrained TPE learns the boundary), is
  written to the results as `infeasible`, and never becomes a Ray trial;
- a trial ASHA stopped is told to Optuna as PRUNED (its last epoch's score as intermediate value), not as
  complete with a partial score; a failed trial is told as FAIL.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nas.results import INTERRUPTED, TrialTable
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from core.errors import UsageError
from search_spaces.spaces import Space, draw

METRIC = "val_acc"
# Draws in a row without a new feasible architecture after which the searcher draws at random instead of TPE.
RANDOM_AFTER_STREAK = 20


@dataclass(frozen=True)
class Budget:
    """The hard limits a trained model must meet, and the data shape its cost is measured at."""

    params: int
    max_flops: int | None
    num_classes: int
    img_size: int
    in_chans: int

    def measure(self, arch: ArchConfig) -> tuple[int, int | None]:
        """Params always; FLOPs only when they are limited (the trial measures them otherwise)."""
        params = count_params(arch, self.num_classes, self.img_size, self.in_chans)
        flops = None
        if self.max_flops is not None and params <= self.params:
            flops = count_flops(arch, self.num_classes, self.img_size, self.in_chans)
        return params, flops

    def violation(self, params: int, flops: int | None) -> dict[str, float]:
        """Optuna's constraint values by name: each <= 0 when met."""
        values = {"params": float(params - self.params)}
        if self.max_flops is not None:
            values["flops"] = float((flops if flops is not None else self.max_flops + 1) - self.max_flops)
        return values


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded, multivariate TPE grouping conditional parameters; it reads the trials' constraint values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch on a define-by-run space returning ArchConfig, with budget rejection and honest states."""

    def __init__(
            self,
            space: Space,
            patch_size: int,
            budget: Budget,
            table: TrialTable,
            storage_url: str,
            study_name: str,
            seed: int,
            epochs: int,
            max_infeasible_streak: int = 300,
            initial_points: list[dict[str, Any]] | None = None,
            trial_constants: dict[str, Any] | None = None,
            on_draw: Callable[[], None] | None = None,
    ) -> None:
        self._arch_space = space
        self._patch_size = patch_size
        self._budget = budget
        self._table = table
        self._base_seed = seed
        self._epochs = epochs
        self._max_infeasible_streak = max_infeasible_streak
        self._on_draw = on_draw
        self._trial_constants = dict(trial_constants or {})
        self._random_sampler = optuna.samplers.RandomSampler(seed=seed)
        self.infeasible_streak = 0
        self.exhausted = False
        # Architectures already trained (or training): drawn again, they are skipped, not retrained.
        self._trained_ids = {row["arch_id"] for row in table.rows.values()
                             if row["state"] != "infeasible" and row.get("arch_id") and row.get("reason") != INTERRUPTED}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Ray's OptunaSearch warns on every re-told trial; our states are told once, on purpose.
        logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
        super().__init__(
            space=self._ray_space, metric=METRIC, mode="max", sampler=make_sampler(seed), study_name=study_name,
            storage=optuna.storages.RDBStorage(storage_url), points_to_evaluate=initial_points or None)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _ray_space(self, trial: optuna.Trial) -> dict[str, Any]:
        return {"arch": draw(self._arch_space, trial, self._patch_size).to_dict()}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        # The streak counts draws in a row that gave nothing new to train: infeasible, invalid or repeated.
        while self.infeasible_streak < self._max_infeasible_streak:
            with self._sampler_for_draw():
                ot_trial = self._ot_study.ask()
                try:
                    arch = draw(self._arch_space, ot_trial, self._patch_size)
                    params, flops = self._budget.measure(arch)
                except UsageError as error:
                    arch, invalid = None, f"invalid architecture: {error}"
            number = ot_trial.number
            row_id = TrialTable.trial_id(number)
            if arch is None:
                self._reject(ot_trial, row_id, None, None, None, invalid)
                continue
            if arch.arch_id in self._trained_ids:
                self._skip_duplicate(ot_trial, arch)
                continue
            violation = self._budget.violation(params, flops)
            for key, value in violation.items():
                ot_trial.set_constraint(key, value)
            ot_trial.set_user_attr("params", params)
            ot_trial.set_user_attr("arch", arch.to_json())
            if max(violation.values()) > 0:
                self._reject(ot_trial, row_id, arch, params, flops, self._over_budget_reason(params, flops))
                continue
            self.infeasible_streak = 0
            self._trained_ids.add(arch.arch_id)
            self._ot_trials[trial_id] = ot_trial
            seed = self._base_seed + number
            self._table.start(row_id, arch, params, flops, seed)
            self._table.write()
            return {**self._trial_constants, "arch": arch.to_dict(), "trial_number": number, "seed": seed,
                    "params": params, "flops": flops}
        self.exhausted = True
        return Searcher.FINISHED

    @contextmanager
    def _sampler_for_draw(self) -> Iterator[None]:
        """TPE, or after a run of draws that gave nothing new a random sampler (TPE keeps to its favourites)."""
        if self.infeasible_streak < RANDOM_AFTER_STREAK:
            yield
            return
        tpe, self._ot_study.sampler = self._ot_study.sampler, self._random_sampler
        try:
            yield
        finally:
            self._ot_study.sampler = tpe

    def _skip_duplicate(self, ot_trial: optuna.Trial, arch: ArchConfig) -> None:
        """A repeat of a trained architecture: failed in Optuna (TPE ignores it), no row, no training."""
        self.infeasible_streak += 1
        ot_trial.set_user_attr("duplicate_of", arch.arch_id)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)

    def _over_budget_reason(self, params: int, flops: int | None) -> str:
        if params > self._budget.params:
            return f"{params:,} params > budget {self._budget.params:,}"
        return f"{flops:,} FLOPs > max {self._budget.max_flops:,}"

    def _reject(self, ot_trial: optuna.Trial, row_id: str, arch: ArchConfig | None, params: int | None,
                flops: int | None, reason: str) -> None:
        self.infeasible_streak += 1
        ot_trial.set_user_attr("state", "infeasible" if arch is not None else "failed")
        ot_trial.set_user_attr("reason", reason)
        if arch is None:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._table.rows[row_id] = {"trial_id": row_id, "state": "failed", "reason": reason}
        else:
            # Complete with the worst score and a positive constraint: constrained TPE ranks it below all feasible.
            self._ot_study.tell(ot_trial, 0.0)
            self._table.start(row_id, arch, params, flops, None, state="infeasible", reason=reason)
        self._table.write()
        if self._on_draw is not None:
            self._on_draw()

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        state = trial_state(result, error, self._epochs)
        if state == "complete":
            self._ot_study.tell(ot_trial, float(result["best_val_acc"]))
        elif state == "stopped":
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        # The searcher's state is the Optuna study in study.db; `nas search --resume` reopens it from there.
        with open(checkpoint_path, "w") as stream:
            json.dump({"study_name": self._study_name, "storage": self._storage.url}, stream)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume a search with `nas search --resume results/<run>`")


def trial_state(result: dict[str, Any] | None, error: bool, epochs: int) -> str:
    """complete (every epoch ran), stopped (ASHA ended it early) or failed."""
    if error or not result or result.get("best_val_acc") is None or result.get("failed"):
        return "failed"
    return "complete" if result.get("training_iteration", 0) >= epochs else "stopped"


def close_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a crash or kill -9 are told FAIL, so the resumed study's history is clean."""
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        numbers.append(trial.number)
    return numbers

