"""The budget-constrained searcher: a Ray Tune `Searcher` that owns an Optuna study and drives it by ask/tell.

What users of NAS tools ask for, and what Ray's own OptunaSearch does not do:
- every draw is built and counted on the meta device first; one over the budget, or one that cannot be built
  for the data (an invalid architecture, or a user's space that raised), is told to Optuna as infeasible
  (a complete trial whose constraint value is positive, so constrained TPE learns the boundary), is
  recorded as `infeasible` with its reason, never becomes a Ray trial and costs no trial of `--trials`;
- a trial ASHA stopped is told to Optuna as PRUNED (its epochs reported as intermediate values), not as
  complete with a partial score; a failed trial is told as FAIL;
- an architecture already trained is skipped when drawn again, and once TPE only repeats itself the
  draws turn random.
The study is the record of truth: everything about a trial (state from queued to its end, reason, seed,
params, FLOPs, seconds, architecture, val_acc per epoch) is recorded there, and trials.csv is rendered from
it by `render_trials`. The study lives in the run's study.db; `nas search RUN --resume` reopens it from there.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd
from optuna.trial import TrialState as OptunaState
from ray.tune import Callback
from ray.tune.search import Searcher

from qkvnas_core.errors import UsageError
from nas.engine.budget import Budget, over_budget_reason
from nas.settings.objectives import SCORE, directions
from nas.runtime.optuna_compat import running_trial, set_system_attr
from nas.runs.results import INTERRUPTED, TrialState, has_row, trial_row, trials_frame
from search_spaces.arch import ArchConfig
from search_spaces.spaces import Space, draw

# Draws in a row without a new feasible architecture after which the searcher draws at random instead of TPE.
RANDOM_AFTER_STREAK = 20
NSGA2_POPULATION = 8
# Per-epoch val_acc of a trial (a multi-objective study cannot hold intermediate values).
CURVE_ATTR = "val_acc_curve"
# The constraint value of a draw that cannot be built: above any model's excess params or FLOPs, so TPE ranks
# it below every over-budget draw.
UNBUILDABLE = 1e18
# The proxy score a screened draw got (--screen), and the mark of one screened out (never trained, no row).
SCREEN_ATTR = "screen_score"
POOL_ATTR = "screen_pool"  # the number of the first trial of its pool
# The state Optuna holds for a trial that recorded none of its own (a study from an older version).
TOLD_STATES = {OptunaState.COMPLETE: TrialState.COMPLETE, OptunaState.PRUNED: TrialState.STOPPED,
               OptunaState.FAIL: TrialState.FAILED, OptunaState.RUNNING: TrialState.RUNNING}


def make_sampler(seed: int, kind: str = "tpe") -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded; each reads the trials' constraint values (Optuna 5's set_constraint).

    tpe: multivariate TPE grouping conditional parameters (its multi-objective mode when there are costs);
    nsga2: NSGA-II with a population of 8, so a search of tens of trials runs several generations;
    random: the baseline of benchmarks/search_quality.py."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8)


def open_study(storage_url: str, study_name: str, seed: int, objectives: Sequence[str] = (SCORE,),
               sampler: str = "tpe") -> optuna.Study:
    """The run's study (created on first use): maximise val_acc, minimise each cost objective; no Optuna pruner
    (ASHA decides)."""
    return optuna.create_study(storage=optuna.storages.RDBStorage(storage_url), sampler=make_sampler(seed, sampler),
                               pruner=optuna.pruners.NopPruner(), study_name=study_name,
                               directions=directions(objectives), load_if_exists=True)


@dataclass(frozen=True)
class Candidate:
    """A feasible new draw, asked of the study and not told yet: trained, or screened out."""

    ot_trial: optuna.Trial
    arch: ArchConfig
    params: int
    flops: int | None
    violation: dict[str, float]


class BudgetedSearcher(Searcher):
    """Asks `study` for points of a define-by-run `space`, rejects infeasible ones, records every trial event in
    the study; `on_record(ended)` is called after each record (`ended`: a trial ended).

    `objectives`: val_acc, then the costs told to Optuna beside it (the study's directions match). With an
    `epoch_budget`, no trial is drawn once the trials' epochs add up to it (running trials finish). With a
    `screen` (a proxy's scores of architectures), each pool of `screen_pool` feasible draws trains its best
    `screen_train` and records the others as screened out (told FAIL, so TPE learns from trained trials only).
    `stop` turning true ends the drawing (the caller's stop: nas.engine.search)."""

    def __init__(
            self,
            space: Space,
            budget: Budget,
            study: optuna.Study,
            seed: int,
            epochs: int,
            max_infeasible_streak: int = 300,
            initial_points: list[dict[str, Any]] | None = None,
            on_record: Callable[[bool], None] | None = None,
            sampler: Callable[[int], optuna.samplers.BaseSampler] | None = None,
            objectives: Sequence[str] = (SCORE,),
            epoch_budget: int | None = None,
            screen: Callable[[Sequence[ArchConfig]], list[float]] | None = None,
            screen_pool: int = 1,
            screen_train: int = 1,
            stop: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(metric=SCORE, mode="max")
        self.space = space
        self.budget = budget
        self.study = study
        self.seed = seed
        self.epochs = epochs
        self.max_infeasible_streak = max_infeasible_streak
        self.on_record = on_record
        self.make_sampler = sampler or make_sampler
        self.objectives = tuple(objectives)
        self.epoch_budget = epoch_budget
        self.screen, self.screen_pool, self.screen_train = screen, screen_pool, screen_train
        self.stop = stop or (lambda: False)
        self.epoch_budget_spent = False
        self.infeasible_streak = 0
        self.exhausted = False
        self.running: dict[str, optuna.Trial] = {}
        self.last_results: dict[str, dict[str, Any]] = {}
        self.pending: list[Candidate] = []  # the screen's picks not handed to Ray yet
        # Architectures already trained (or training): drawn again, they are skipped, not retrained.
        trials = render_trials(study)
        trained = ((trials["state"] != TrialState.INFEASIBLE) & trials["arch_id"].notna()
                   & (trials["reason"] != INTERRUPTED))
        self.trained_ids = set(trials.loc[trained, "arch_id"])
        self.epochs_spent = epochs_spent(study)
        for point in initial_points or []:
            study.enqueue_trial(point)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.stop():
            return Searcher.FINISHED
        if self.epoch_budget is not None and self.epochs_spent >= self.epoch_budget:
            self.epoch_budget_spent = True
            return Searcher.FINISHED
        if not self.pending:
            self.pending = self._screened(self._draw_pool())
        if not self.pending:
            self.exhausted = True
            return Searcher.FINISHED
        return self._start(trial_id, self.pending.pop(0))

    def _draw_pool(self) -> list[Candidate]:
        """New feasible draws: one, or a screen's pool (fewer when the space runs out). The streak counts draws in a
        row that gave nothing new to train: infeasible, unbuildable or repeated."""
        wanted = self.screen_pool if self.screen is not None else 1
        pool: list[Candidate] = []
        while len(pool) < wanted and self.infeasible_streak < self.max_infeasible_streak:
            with self._sampler_for_draw():
                ot_trial = self.study.ask()
                arch, cost, unbuildable = self._build(ot_trial)
            if unbuildable:
                self._reject(ot_trial, arch, None, None, unbuildable_violation(self.budget), unbuildable)
                continue
            if arch.arch_id in self.trained_ids or any(arch.arch_id == other.arch.arch_id for other in pool):
                self._skip_duplicate(ot_trial, arch)
                continue
            params, flops = cost
            violation = self.budget.violation(params, flops)
            if max(violation.values()) > 0:
                self._reject(ot_trial, arch, params, flops, violation, over_budget_reason(self.budget, params, flops))
                continue
            self.infeasible_streak = 0
            pool.append(Candidate(ot_trial, arch, params, flops, violation))
        return pool

    def _screened(self, pool: list[Candidate]) -> list[Candidate]:
        """The pool's best `screen_train` by the screen, best first; the others recorded as screened out."""
        if self.screen is None or len(pool) <= self.screen_train:
            return pool
        scores = self.screen([candidate.arch for candidate in pool])
        order = sorted(range(len(pool)), key=lambda index: -scores[index])
        first = min(candidate.ot_trial.number for candidate in pool)
        for rank, index in enumerate(order):
            candidate = pool[index]
            _set_attrs(candidate.ot_trial, **{SCREEN_ATTR: float(scores[index]), POOL_ATTR: first})
            if rank >= self.screen_train:
                _set_constraints(candidate.ot_trial, candidate.violation)
                _set_attrs(candidate.ot_trial, arch=candidate.arch.to_json(), params=candidate.params,
                           flops=candidate.flops, screened_out=True)
                self.study.tell(candidate.ot_trial, state=OptunaState.FAIL)
        return [pool[index] for index in order[:self.screen_train]]

    def _start(self, trial_id: str, candidate: Candidate) -> dict[str, Any]:
        """Hand a candidate to Ray as a trial."""
        ot_trial, arch = candidate.ot_trial, candidate.arch
        self.trained_ids.add(arch.arch_id)
        self.running[trial_id] = ot_trial
        seed = trial_seed(ot_trial, self.seed)
        _set_constraints(ot_trial, candidate.violation)
        _set_attrs(ot_trial, arch=arch.to_json(), params=candidate.params, flops=candidate.flops, seed=seed,
                   state=TrialState.QUEUED)
        self._recorded()
        return {"arch": arch.to_dict(), "trial_number": ot_trial.number, "seed": seed, "params": candidate.params,
                "flops": candidate.flops}

    def _build(self, ot_trial: optuna.Trial) -> tuple[ArchConfig | None, tuple[int, int | None] | None, str]:
        """(architecture, (params, FLOPs), why it cannot be built: '' when it can)."""
        try:
            arch = draw(self.space, ot_trial, self.budget.shape)
        except UsageError as error:
            return None, None, f"invalid architecture: {error}"
        except Exception as error:  # a user's space is user code: a draw that raises is an unbuildable draw
            return None, None, f"the space raised {type(error).__name__}: {first_line(error)}"
        try:
            return arch, self.budget.measure(arch, flops="flops" in self.objectives), ""
        except UsageError as error:
            return arch, None, f"invalid architecture: {error}"
        except Exception as error:  # a model the builders reject (timm's own checks) is as unbuildable
            return arch, None, f"building it raised {type(error).__name__}: {first_line(error)}"

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
        self.study.tell(ot_trial, state=OptunaState.FAIL)

    def _reject(self, ot_trial: optuna.Trial, arch: ArchConfig | None, params: int | None, flops: int | None,
                violation: dict[str, float], reason: str) -> None:
        """Over the limits or unbuildable: complete with the worst score and a positive constraint, so constrained
        TPE ranks it below every feasible trial."""
        self.infeasible_streak += 1
        _set_constraints(ot_trial, violation)
        _set_attrs(ot_trial, arch=arch.to_json() if arch is not None else None, params=params, flops=flops,
                   state=TrialState.INFEASIBLE, reason=reason)
        self.study.tell(ot_trial, self._values(0.0, params, flops))
        self._recorded()

    def record_start(self, trial_id: str) -> None:
        """Ray started the trial (its callbacks see this; a Searcher does not)."""
        ot_trial = self.running.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("state", TrialState.RUNNING)
            self._recorded()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        ot_trial = self.running.get(trial_id)
        if ot_trial is not None:
            self._record_result(ot_trial, result)
            self.last_results[trial_id] = result
            self._recorded()

    def _record_result(self, ot_trial: optuna.Trial, result: dict[str, Any]) -> None:
        """One epoch: val_acc appended to the trial's curve (also Optuna's intermediate value at that epoch when
        the study has one objective: a multi-objective study holds none), the trial's time so far, and the FLOPs it
        counted where its draw did not (a draw counts them only for a FLOPs limit or objective)."""
        attrs = ot_trial.user_attrs
        curve = list(attrs.get(CURVE_ATTR, []))
        epoch = int(result["training_iteration"])
        if len(curve) >= epoch:
            return
        curve.append(float(result[SCORE]))
        ot_trial.set_user_attr(CURVE_ATTR, curve)
        if len(self.objectives) == 1:
            ot_trial.report(curve[-1], epoch)
        ot_trial.set_user_attr("seconds", float(result["trial_seconds"]))
        if "flops" not in attrs:
            _set_attrs(ot_trial, flops=result.get("flops"))
        self.epochs_spent += 1

    def _values(self, score: float, params: int | None, flops: int | None) -> float | list[float]:
        """What Optuna is told: val_acc, then each cost objective (UNBUILDABLE where not measured)."""
        costs = {"params": params, "flops": flops}
        values = [score, *(float(UNBUILDABLE if costs[name] is None else costs[name]) for name in self.objectives[1:])]
        return values if len(values) > 1 else values[0]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended and record it. A trial that raised waits for `record_failure`, which
        knows why."""
        if error:
            return
        self._end(trial_id, trial_state(result, error, self.epochs), result, "")

    def record_failure(self, trial_id: str, reason: str) -> None:
        """The end of a trial that raised, with its reason (Ray's callbacks read it from the trial's error files)."""
        self._end(trial_id, TrialState.FAILED, None, reason)

    def _end(self, trial_id: str, state: TrialState, result: dict[str, Any] | None, reason: str) -> None:
        ot_trial = self.running.pop(trial_id, None)
        if ot_trial is None:
            return
        reported = self.last_results.pop(trial_id, {})
        if result and SCORE in result and result.get("training_iteration") != reported.get("training_iteration"):
            # Ray does not pass the result that made ASHA stop a trial to on_trial_result: its epoch counts too.
            self._record_result(ot_trial, result)
        if state == TrialState.STOPPED:
            reason = f"stopped by ASHA after {(result or reported).get('training_iteration')} epochs"
        _set_attrs(ot_trial, state=state, reason=reason, epochs_spent=self.epochs_spent)
        if state == TrialState.COMPLETE:
            attrs = ot_trial.user_attrs
            self.study.tell(ot_trial, self._values(float(result["best_val_acc"]), attrs.get("params"),
                                                   attrs.get("flops")))
        elif state == TrialState.STOPPED:
            self.study.tell(ot_trial, state=OptunaState.PRUNED)
        else:
            self.study.tell(ot_trial, state=OptunaState.FAIL)
        self._recorded(ended=True)

    def _recorded(self, ended: bool = False) -> None:
        if self.on_record is not None:
            self.on_record(ended)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to write: the searcher's state is the study in study.db, which every ask and tell updates."""


class TrialEvents(Callback):
    """What only Ray's callbacks see, told to the searcher: a trial started; a trial raised, and why (read from
    the error files Ray wrote)."""

    def __init__(self, searcher: BudgetedSearcher) -> None:
        self.searcher = searcher

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.searcher.record_start(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.searcher.record_failure(trial.trial_id, failure_reason(trial.pickled_error_file, trial.error_file))


def unbuildable_violation(budget: Budget) -> dict[str, float]:
    """Every constraint of `budget` violated by UNBUILDABLE: a draw that cannot be built has no cost to compare."""
    return dict.fromkeys(budget.violation(0, None), UNBUILDABLE)


def _set_constraints(ot_trial: optuna.Trial, violation: dict[str, float]) -> None:
    for key, value in violation.items():
        ot_trial.set_constraint(key, value)
    # optuna-dashboard reads only the pre-5.0 list in system attr "constraints".
    set_system_attr(ot_trial, "constraints", list(violation.values()))


def _set_attrs(ot_trial: optuna.Trial, **attrs: Any) -> None:
    """The given user attrs of a trial; None means not known, and is not recorded."""
    for key, value in attrs.items():
        if value is not None:
            ot_trial.set_user_attr(key, value)


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


def curve_of(trial: optuna.trial.FrozenTrial) -> list[float]:
    """val_acc after each epoch, as the trial reported it (a study from an older version holds it only as
    intermediate values)."""
    if CURVE_ATTR in trial.user_attrs:
        return list(trial.user_attrs[CURVE_ATTR])
    return [trial.intermediate_values[epoch] for epoch in sorted(trial.intermediate_values)]


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by all the study's trials so far."""
    return sum(len(curve_of(trial)) for trial in study.get_trials(deepcopy=False))


def trial_curves(study: optuna.Study, objectives: Sequence[str] = (SCORE,)) -> list[tuple[int, list[list[float]]]]:
    """(trial number, the objectives' values after each epoch) of every trained trial, for ASHA's rungs after a
    resume: val_acc of that epoch, and the trial's costs (fixed for a trial)."""
    curves = []
    for trial in study.get_trials(deepcopy=False):
        costs = [float(trial.user_attrs[name]) for name in objectives[1:] if trial.user_attrs.get(name) is not None]
        curve = curve_of(trial)
        if curve and len(costs) == len(objectives) - 1:
            curves.append((trial.number, [[score, *costs] for score in curve]))
    return curves


@lru_cache(maxsize=4096)
def _arch(text: str) -> ArchConfig:
    # Rendered after every event: each architecture is parsed once per process.
    return ArchConfig.from_json(text)


def render_trials(study: optuna.Study) -> pd.DataFrame:
    """trials.csv from the study: one row per drawn trial (a skipped repeat and a point enqueued but not drawn
    yet have none). The one writer of the table: the search writes this after every event."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if not has_row(trial) or trial.state == OptunaState.WAITING:
            continue
        state = attrs.get("state", TOLD_STATES[trial.state])
        # A failure that recorded no reason was cut off as it was drawn (or in a study from an older version).
        reason = attrs.get("reason", INTERRUPTED if state == TrialState.FAILED else "")
        arch = _arch(attrs["arch"]) if "arch" in attrs else None
        rows.append(trial_row(trial.number, state, reason, arch, attrs.get("params"), attrs.get("flops"),
                              attrs.get("seed"), curve_of(trial), attrs.get("seconds", 0.0),
                              attrs.get("epochs_spent")))
    return trials_frame(rows)


def trial_state(result: dict[str, Any] | None, error: bool, epochs: int) -> TrialState:
    """complete (every epoch ran), stopped (ASHA ended it early) or failed."""
    if error or not result or result.get("best_val_acc") is None or result.get("failed"):
        return TrialState.FAILED
    return TrialState.COMPLETE if result.get("training_iteration", 0) >= epochs else TrialState.STOPPED


def trial_seed(ot_trial: optuna.trial.BaseTrial, run_seed: int) -> int:
    """A trial's training seed: the run's seed plus its number, or the seed it carries (a retried trial keeps the
    seed of the one it replaces)."""
    return ot_trial.user_attrs.get("seed", run_seed + ot_trial.number)


def close_interrupted(study: optuna.Study, run_seed: int) -> list[int]:
    """Trials left RUNNING by Ctrl-C, a crash or kill -9 are recorded as failed (interrupted) and told FAIL, so
    the study's history is clean; one that was drawn (it has an architecture) is enqueued again with its parameters
    and seed, so the next draw of a resume trains the same architecture with the same seed to its end (`retry_of`
    names the trial it replaces). One cut off while being drawn had nothing to train: it is only closed. Each
    attribute is its own commit, so a kill can fall between the architecture and the seed: the seed is then the one
    `trial_seed` would have given, recorded on both."""
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        drawn = "arch" in trial.user_attrs
        seed = trial_seed(trial, run_seed) if drawn else None
        _set_attrs(running_trial(study, trial), state=TrialState.FAILED, reason=INTERRUPTED, seed=seed)
        study.tell(trial.number, state=OptunaState.FAIL)
        if drawn:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "seed": seed})
        numbers.append(trial.number)
    return numbers
