"""The budget-constrained searcher: a Ray Tune `Searcher` that owns an Optuna study and drives it by ask/tell.

What users of NAS tools ask for, and what Ray's own OptunaSearch does not do:
- every draw is counted on the meta device first; one over the budget is told to Optuna as infeasible
  (a complete trial whose constraint value is positive, so constrained TPE learns the boundary), is
  written to the results as `infeasible`, and never becomes a Ray trial;
- a trial ASHA stopped is told to Optuna as PRUNED (its epochs reported as intermediate values), not as
  complete with a partial score; a failed trial is told as FAIL;
- an architecture already trained is skipped when drawn again, and once TPE only repeats itself the
  draws turn random.
The study lives in the run's study.db; `nas search --resume` reopens it from there.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from qkvnas_core.errors import UsageError
from nas.budget import Budget, over_budget_reason
from nas.results import INTERRUPTED, TrialTable
from search_spaces.arch import ArchConfig
from search_spaces.spaces import Space, draw

METRIC = "val_acc"
# Draws in a row without a new feasible architecture after which the searcher draws at random instead of TPE.
RANDOM_AFTER_STREAK = 20


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded, multivariate TPE grouping conditional parameters; it reads the trials' constraint values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)


def open_study(storage_url: str, study_name: str, seed: int) -> optuna.Study:
    """The run's study (created on first use): maximise val_acc, no Optuna pruner (ASHA decides)."""
    return optuna.create_study(storage=optuna.storages.RDBStorage(storage_url), sampler=make_sampler(seed),
                               pruner=optuna.pruners.NopPruner(), study_name=study_name, direction="maximize",
                               load_if_exists=True)


class BudgetedSearcher(Searcher):
    """Asks `study` for points of a define-by-run `space`, rejects over-budget ones, tells Optuna how trials end."""

    def __init__(
            self,
            space: Space,
            patch_size: int,
            budget: Budget,
            table: TrialTable,
            study: optuna.Study,
            seed: int,
            epochs: int,
            max_infeasible_streak: int = 300,
            initial_points: list[dict[str, Any]] | None = None,
            on_draw: Callable[[], None] | None = None,
            sampler: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    ) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.space = space
        self.patch_size = patch_size
        self.budget = budget
        self.table = table
        self.study = study
        self.seed = seed
        self.epochs = epochs
        self.max_infeasible_streak = max_infeasible_streak
        self.on_draw = on_draw
        self.make_sampler = sampler or make_sampler
        self.infeasible_streak = 0
        self.exhausted = False
        self.running: dict[str, optuna.Trial] = {}
        self.last_results: dict[str, dict[str, Any]] = {}
        # Architectures already trained (or training): drawn again, they are skipped, not retrained.
        self.trained_ids = {row["arch_id"] for row in table.rows.values()
                            if row["state"] != "infeasible" and row.get("arch_id") and row.get("reason") != INTERRUPTED}
        for point in initial_points or []:
            study.enqueue_trial(point)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        # The streak counts draws in a row that gave nothing new to train: infeasible, invalid or repeated.
        while self.infeasible_streak < self.max_infeasible_streak:
            with self._sampler_for_draw():
                ot_trial = self.study.ask()
                try:
                    arch = draw(self.space, ot_trial, self.patch_size)
                    params, flops = self.budget.measure(arch)
                except UsageError as error:
                    arch, invalid = None, f"invalid architecture: {error}"
                except Exception as error:  # a user's space is user code: a draw that raises is a bad draw
                    arch, invalid = None, f"the space raised {type(error).__name__}: {first_line(error)}"
            row_id = TrialTable.trial_id(ot_trial.number)
            if arch is None:
                self._reject(ot_trial, row_id, None, None, None, invalid)
                continue
            if arch.arch_id in self.trained_ids:
                self._skip_duplicate(ot_trial, arch)
                continue
            violation = self.budget.violation(params, flops)
            for key, value in violation.items():
                ot_trial.set_constraint(key, value)
            # optuna-dashboard reads only the pre-5.0 list in system attr "constraints" (Optuna has no public setter).
            ot_trial.storage.set_trial_system_attr(ot_trial._trial_id, "constraints", list(violation.values()))
            ot_trial.set_user_attr("params", params)
            ot_trial.set_user_attr("arch", arch.to_json())
            if max(violation.values()) > 0:
                self._reject(ot_trial, row_id, arch, params, flops, over_budget_reason(self.budget, params, flops))
                continue
            self.infeasible_streak = 0
            self.trained_ids.add(arch.arch_id)
            self.running[trial_id] = ot_trial
            seed = self.seed + ot_trial.number
            ot_trial.set_user_attr("seed", seed)
            self.table.start(row_id, arch, params, flops, seed)
            self.table.write()
            return {"arch": arch.to_dict(), "trial_number": ot_trial.number, "seed": seed, "params": params,
                    "flops": flops}
        self.exhausted = True
        return Searcher.FINISHED

    @contextmanager
    def _sampler_for_draw(self) -> Iterator[None]:
        """TPE, or after a run of draws that gave nothing new a random sampler (TPE keeps to its favourites),
        seeded by the run's seed and the number of trials so far: a draw depends only on the study's history,
        so a resumed search draws what an uninterrupted one would have."""
        seed = self.seed + len(self.study.get_trials(deepcopy=False))
        sampler = (self.make_sampler(seed) if self.infeasible_streak < RANDOM_AFTER_STREAK
                   else optuna.samplers.RandomSampler(seed=seed))
        kept, self.study.sampler = self.study.sampler, sampler
        try:
            yield
        finally:
            self.study.sampler = kept

    def _skip_duplicate(self, ot_trial: optuna.Trial, arch: ArchConfig) -> None:
        """A repeat of a trained architecture: failed in Optuna (TPE ignores it), no row, no training."""
        self.infeasible_streak += 1
        ot_trial.set_user_attr("duplicate_of", arch.arch_id)
        self.study.tell(ot_trial, state=TrialState.FAIL)

    def _reject(self, ot_trial: optuna.Trial, row_id: str, arch: ArchConfig | None, params: int | None,
                flops: int | None, reason: str) -> None:
        self.infeasible_streak += 1
        ot_trial.set_user_attr("state", "infeasible" if arch is not None else "failed")
        ot_trial.set_user_attr("reason", reason)
        if arch is None:
            self.study.tell(ot_trial, state=TrialState.FAIL)
            self.table.rows[row_id] = {"trial_id": row_id, "state": "failed", "reason": reason}
        else:
            # Complete with the worst score and a positive constraint: constrained TPE ranks it below all feasible.
            self.study.tell(ot_trial, 0.0)
            self.table.start(row_id, arch, params, flops, None, state="infeasible", reason=reason)
        self.table.write()
        if self.on_draw is not None:
            self.on_draw()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        ot_trial = self.running.get(trial_id)
        if ot_trial is not None:
            ot_trial.report(float(result[METRIC]), int(result["training_iteration"]))
            self.last_results[trial_id] = result

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended and record it (state, reason, time, FLOPs) in the study, the record
        of truth, and in the table. A trial that raised waits for `record_failure`, which knows why."""
        if error:
            return
        self._end(trial_id, trial_state(result, error, self.epochs), result, "")

    def record_failure(self, trial_id: str, reason: str) -> None:
        """The end of a trial that raised, with its reason (Ray's callbacks read it from the trial's error files)."""
        self._end(trial_id, "failed", None, reason)

    def _end(self, trial_id: str, state: str, result: dict[str, Any] | None, reason: str) -> None:
        ot_trial = self.running.pop(trial_id, None)
        if ot_trial is None:
            return
        reported = self.last_results.pop(trial_id, {})
        last = result or reported
        if result and METRIC in result and result.get("training_iteration") != reported.get("training_iteration"):
            # Ray does not pass the result that made ASHA stop a trial to on_trial_result: its epoch counts too.
            ot_trial.report(float(result[METRIC]), int(result["training_iteration"]))
        if state == "stopped":
            reason = f"stopped by ASHA after {last.get('training_iteration')} epochs"
        for key, value in (("state", state), ("reason", reason), ("seconds", last.get("trial_seconds")),
                           ("flops", last.get("flops"))):
            if value is not None:
                ot_trial.set_user_attr(key, value)
        if state == "complete":
            self.study.tell(ot_trial, float(result["best_val_acc"]))
        elif state == "stopped":
            self.study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self.study.tell(ot_trial, state=TrialState.FAIL)
        self.table.update(TrialTable.trial_id(ot_trial.number), state=state, reason=reason)
        self.table.write()

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to write: the searcher's state is the study in study.db, which every ask and tell updates."""


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def failure_reason(pickled: str | None, text: str | None) -> str:
    """One line for why a Ray trial failed, from the error files Ray wrote (its Trial's pickled_error_file and
    error_file): the original exception's type and first line."""
    import cloudpickle

    if not pickled or not Path(pickled).is_file():
        lines = Path(text).read_text().strip().splitlines() if text and Path(text).is_file() else []
        return lines[-1] if lines else "unknown error"
    with open(pickled, "rb") as stream:
        error = cloudpickle.load(stream)
    cause = getattr(error, "cause", None) or error
    first = first_line(cause)
    if "out of memory" in first.lower():
        return f"out of memory: {first}"
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def trial_curves(study: optuna.Study) -> list[tuple[int, list[float]]]:
    """(trial number, val_acc per epoch) of every trained trial, for ASHA's rungs after a resume."""
    return [(trial.number, [trial.intermediate_values[epoch] for epoch in sorted(trial.intermediate_values)])
            for trial in study.get_trials(deepcopy=False) if trial.intermediate_values]


def table_from_study(study: optuna.Study, path: Path) -> TrialTable:
    """trials.csv rebuilt from the study alone (the table a damaged trials.csv should have been)."""
    table = TrialTable(path, read=False)
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        # Skipped repeats have no row; waiting trials are enqueued points not drawn yet.
        if "duplicate_of" in attrs or trial.state == TrialState.WAITING:
            continue
        row_id = TrialTable.trial_id(trial.number)
        if "arch" not in attrs:
            # An invalid draw says why; a trial with nothing recorded was cut off as it was drawn.
            table.rows[row_id] = {"trial_id": row_id, "state": "failed", "reason": attrs.get("reason", INTERRUPTED)}
            continue
        told = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "stopped"}.get(trial.state, "failed")
        state = attrs.get("state", told)
        table.start(row_id, ArchConfig.from_json(attrs["arch"]), attrs["params"], attrs.get("flops"),
                    attrs.get("seed"), state=state, reason=attrs.get("reason", INTERRUPTED if state == "failed" else ""))
        curve = [trial.intermediate_values[epoch] for epoch in sorted(trial.intermediate_values)]
        for epoch, val_acc in enumerate(curve, 1):
            table.record_epoch(row_id, epoch, val_acc, float(attrs.get("seconds") or 0.0))
    return table


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
