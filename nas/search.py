"""One search: Ray Tune runs the trials, the budgeted Optuna searcher samples them, ASHA stops the weak early.

`run_search(settings)` owns the run folder `results/<run>/`: search.json (settings, versions, seed),
trials.csv (kept current, written atomically), study.db (Optuna's SQLite storage) and one Ray experiment
folder per session (`ray-1`, `ray-2` after a resume). A resumed run reopens the study and the table:
finished trials are kept and never rerun; trials a crash left running are closed as failed (interrupted).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from nas.budget import format_count
from nas.results import INTERRUPTED, TrialTable, load_settings
from nas.searcher import Budget, BudgetedOptunaSearch, close_interrupted, trial_state
from search_spaces.cost import count_params
from core.errors import UsageError
from core.files import write_json_atomic
from search_spaces.spaces import draw, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SearchSettings:
    """Everything that defines a search; written to search.json and read back by --resume."""

    name: str
    budget: int
    results_dir: str = "results"
    max_flops: int | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    classes: int | None = None
    train_fraction: float = 1.0
    img_size: int | None = None
    val_fraction: float = 0.2
    space: str = "qkv"
    patch_size: int | None = None
    trials: int = 16
    epochs: int = 10
    grace_epochs: int = 3
    reduction_factor: int = 3
    recipe: str = "proxy"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    seed: int = 0
    max_infeasible_streak: int = 300
    verbose: bool = False
    study_name: str | None = None

    def __post_init__(self) -> None:
        # The Optuna study keeps its first name even if the run folder is renamed or moved later.
        self.study_name = self.study_name or self.name

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"qkvnas": version("qkvnas"), "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def load_search_data(settings: SearchSettings):
    """The dataset the trials train on; the search scores on its validation split only, never on test."""
    from trainers.data import load_dataset

    splits = load_dataset(settings.dataset, settings.data_dir, val_fraction=settings.val_fraction,
                          seed=settings.seed, classes=settings.classes, train_fraction=settings.train_fraction,
                          img_size=settings.img_size)
    # The test split stays on disk: trials never receive it.
    return dataclasses.replace(splits, test=None)


class Progress:
    """A live view a person can read: one line per finished trial, and at most one every 15 s otherwise."""

    def __init__(self, table: TrialTable, target: int, already: int, interval: float = 15.0) -> None:
        self.table = table
        self.target = target
        self.already = already
        self.interval = interval
        self.start = time.monotonic()
        self.last = 0.0
        self.last_status = ""

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        t = self.table
        trained = trained_count(t)
        elapsed = now - self.start
        done_here = trained - self.already
        if done_here > 0 and trained < self.target:
            left = f"~{_duration(elapsed / done_here * (self.target - trained))} left"
        else:
            left = "estimating time left" if trained < self.target else "finishing"
        best = t.best()
        best_text = "no score yet" if best is None else (
            f"best val_acc {best['val_acc']:.4f} ({format_count(best['params'])} params, {best['trial_id']})")
        status = (f"{trained}/{self.target} trained: {t.count('complete')} complete, {t.count('stopped')} stopped, "
                  f"{t.count('failed')} failed, {t.count('running')} in progress, {t.count('infeasible')} infeasible "
                  f"| {best_text}")
        if force and status == self.last_status:
            return
        self.last_status = status
        print(f"[{_duration(elapsed):>7}] {status} | {left}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def trained_count(table: TrialTable) -> int:
    """Trials that went through Ray and ended (interrupted ones are not counted: a resume replaces them)."""
    return sum(1 for r in table.rows.values()
               if r["state"] in ("complete", "stopped", "failed") and r.get("seed") is not None
               and r.get("reason") != INTERRUPTED)


def close_running_rows(table: TrialTable) -> None:
    for row in table.rows.values():
        if row["state"] == "running":
            row.update(state="failed", reason=INTERRUPTED)


def error_reason(trial) -> str:
    """One line for why a Ray trial failed: the original exception's type and first line."""
    import cloudpickle

    cause: BaseException | None = None
    pickled = trial.pickled_error_file
    if pickled and Path(pickled).is_file():
        with open(pickled, "rb") as stream:
            error = cloudpickle.load(stream)
        cause = getattr(error, "cause", None) or error
    if cause is None:
        text = Path(trial.error_file).read_text().strip().splitlines() if trial.error_file else []
        return text[-1] if text else "unknown error"
    message = str(cause).strip().splitlines()
    first = message[0] if message else ""
    if "out of memory" in first.lower():
        return f"out of memory: {first}"
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def smallest_model(space_fn, patch_size: int, budget, draws: int = 200, seed: int = 0):
    """The smallest model the space builds, found by an Optuna study minimising parameters."""
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    best: tuple[int, Any] | None = None
    for _ in range(draws):
        trial = study.ask()
        try:
            arch = draw(space_fn, trial, patch_size)
        except UsageError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        params = count_params(arch, budget.num_classes, budget.img_size, budget.in_chans)
        study.tell(trial, params)
        if best is None or params < best[0]:
            best = (params, arch)
    return best


def check_budget_feasible(space_name: str, space_fn, patch_size: int, budget, draws: int) -> None:
    """Before any trial: a budget the space cannot meet is one clear error naming the smallest model."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(draws):
        trial = study.ask()
        try:
            params, flops = budget.measure(draw(space_fn, trial, patch_size))
        except UsageError:
            continue
        if max(budget.violation(params, flops).values()) <= 0:
            return
    raise UsageError(infeasible_message(space_name, space_fn, patch_size, budget))


def smallest_description(space_name: str, space_fn, patch_size: int, budget) -> str:
    found = smallest_model(space_fn, patch_size, budget)
    if found is None:
        return f"space {space_name!r} built no valid architecture"
    params, arch = found
    return f"the smallest model space {space_name!r} builds is {arch.summary()} with {params:,} params ({format_count(params)})"


def infeasible_message(space_name: str, space_fn, patch_size: int, budget) -> str:
    limit = f"budget {format_count(budget.params)} ({budget.params:,} params)"
    if budget.max_flops is not None:
        limit += f" with max {format_count(budget.max_flops)} FLOPs"
    return (f"{limit} admits no model of space {space_name!r}: "
            f"{smallest_description(space_name, space_fn, patch_size, budget)}; expected a budget of at least that")


def run_search(settings: SearchSettings, resume: bool = False, trainable: Callable | None = None) -> int:
    """Run (or continue) a search; returns the process exit code."""
    run_dir = settings.run_dir
    if run_dir.exists() and not resume:
        raise UsageError(f"run folder {run_dir} already exists: pass --resume {run_dir} to continue it, "
                         "or --name NEW for a new run")
    if resume and not (run_dir / "search.json").is_file():
        raise UsageError(f"{run_dir}: no search.json; expected a run folder written by nas search")

    space_fn = load_space(settings.space)
    splits = load_search_data(settings)
    info = splits.info
    patch_size = settings.patch_size or info.patch_size
    budget = Budget(settings.budget, settings.max_flops, info.num_classes, info.img_size, info.in_chans)
    if not resume:
        check_budget_feasible(settings.space, space_fn, patch_size, budget, settings.max_infeasible_streak)

    run_dir.mkdir(parents=True, exist_ok=True)
    record = load_settings(run_dir) if resume else {}
    sessions = int(record.get("sessions", 0)) + 1
    record.update(settings.to_dict())
    record.update(sessions=sessions, versions=versions(), patch_size=patch_size, num_classes=info.num_classes,
                  img_size=info.img_size, in_chans=info.in_chans, started=record.get("started", _now()),
                  finished=None)
    write_json_atomic(run_dir / "search.json", record)

    table = TrialTable(run_dir / "trials.csv")
    close_running_rows(table)
    table.write()
    already = trained_count(table)
    remaining = settings.trials - already
    if remaining <= 0:
        print(f"{run_dir}: {already} trials already trained (--trials {settings.trials}); "
              f"raise --trials to extend it")
        return finish(settings, table, record, run_dir, exhausted=None, seconds=0.0)

    start = time.monotonic()
    exhausted = _tune(settings, splits, space_fn, patch_size, budget, table, remaining, already, sessions, resume,
                      trainable)
    return finish(settings, table, record, run_dir, exhausted, time.monotonic() - start)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _tune(settings, splits, space_fn, patch_size, budget, table, remaining, already, sessions, resume,
          trainable) -> str | None:
    """Ray Tune's part; returns the infeasible-streak message when the space ran out of feasible draws."""
    if trainable is None:
        from trainers.trial import run_trial as trainable

    run_dir = settings.run_dir.resolve()
    started_ray = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        if not settings.verbose:
            # Failed trials are recorded with their reason in trials.csv; Ray's tracebacks would bury the view.
            logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR,
                                      log_to_driver=settings.verbose)
        if settings.address:
            ray.init(address=settings.address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
        started_ray = True
    try:
        progress = Progress(table, settings.trials, already)
        searcher = BudgetedOptunaSearch(
            space_fn, patch_size, budget, table, f"sqlite:///{run_dir / 'study.db'}", settings.study_name,
            settings.seed, settings.epochs, settings.max_infeasible_streak,
            initial_points=None if resume else list(getattr(space_fn, "initial_points", [])),
            trial_constants={
                "epochs": settings.epochs, "recipe": settings.recipe, "recipe_overrides": settings.recipe_overrides,
                "threads": max(1, int(settings.cpus_per_trial)),
                "device": "cuda" if settings.gpus_per_trial > 0 else "cpu"},
            on_draw=progress.show)
        if resume:
            close_interrupted(searcher.study)
        scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_acc", mode="max",
                                  max_t=settings.epochs, grace_period=min(settings.grace_epochs, settings.epochs),
                                  reduction_factor=settings.reduction_factor)
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, data=splits), resources),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.config['trial_number']:04d}"),
            run_config=tune.RunConfig(name=f"ray-{sessions}", storage_path=str(run_dir), verbose=1 if settings.verbose else 0,
                                      callbacks=[ResultsCallback(table, settings.epochs, progress)],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        tuner.fit()
        close_interrupted(searcher.study)
        progress.show(force=True)
        if searcher.exhausted:
            return (f"stopped: {settings.max_infeasible_streak} draws in a row gave no new architecture within the "
                    f"budget (every feasible one tried, or the budget too tight); "
                    f"{smallest_description(settings.space, space_fn, patch_size, budget)}")
        return None
    finally:
        close_running_rows(table)
        table.write()
        if started_ray:
            ray.shutdown()


def finish(settings, table, record, run_dir, exhausted: str | None, seconds: float) -> int:
    """Record the session's end, print the outcome, write the front; the exit code says how it ended."""
    record.update(finished=_now(), seconds=round(float(record.get("seconds") or 0.0) + seconds, 1))
    write_json_atomic(run_dir / "search.json", record)
    best = table.best()
    code = 0
    if exhausted:
        print(exhausted)
    elif trained_count(table) < settings.trials:
        # Ray Tune ends fit() quietly on Ctrl-C: what is missing tells an interrupted search.
        print(f"search interrupted after {trained_count(table)} of {settings.trials} trials; "
              f"continue it with: nas search --resume {run_dir}")
        code = 130
    if best is None:
        print(f"{run_dir}: no trial has a score yet")
        return 2 if exhausted else code
    print(f"best: {best['trial_id']} val_acc {best['val_acc']:.4f} with {best['params']:,} params "
          f"({best['structure']}); results in {run_dir}")
    _write_front(run_dir)
    return code


def _write_front(run_dir: Path) -> None:
    """Pareto files at the end of every search (the `nas pareto` command writes the same)."""
    from nas.pareto_cmd import write_pareto

    path = write_pareto(run_dir)
    print(f"Pareto front: {path}")


class ResultsCallback(Callback):
    """Keeps trials.csv current as Ray reports, and drives the progress view."""

    def __init__(self, table: TrialTable, epochs: int, progress: Progress) -> None:
        self.table = table
        self.epochs = epochs
        self.progress = progress

    @staticmethod
    def _row_id(trial) -> str:
        return TrialTable.trial_id(trial.config["trial_number"])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row_id = self._row_id(trial)
        self.table.record_epoch(row_id, int(result["training_iteration"]), float(result["val_acc"]),
                                float(result["trial_seconds"]))
        if self.table.rows[row_id].get("flops") is None:
            self.table.update(row_id, flops=int(result["flops"]))
        self.table.write()
        self.progress.show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row_id = self._row_id(trial)
        state = trial_state(trial.last_result, False, self.epochs)
        reason = f"stopped by ASHA after {self.table.rows[row_id]['epochs']} epochs" if state == "stopped" else ""
        self.table.update(row_id, state=state, reason=reason)
        self.table.write()
        self.progress.show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row_id = self._row_id(trial)
        self.table.update(row_id, state="failed", reason=error_reason(trial))
        self.table.write()
        self.progress.show(force=True)
