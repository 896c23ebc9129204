"""One search: Ray Tune runs the trials, the budgeted searcher samples them, ASHA stops the weak early.

`run_search(settings)` owns the run folder `results/<run>/`: search.json (settings, versions, seed),
trials.csv (kept current, written atomically), study.db (Optuna's SQLite storage) and one Ray experiment
folder per session (`ray-1`, `ray-2` after a resume). `resume_search(run_dir)` reopens the study and the
table: finished trials are kept and never rerun; trials a crash left running are closed as failed.
"""
from __future__ import annotations

import contextlib
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

from qkvnas_core.errors import UsageError
from qkvnas_core.files import exclusive_lock, write_json_atomic
from nas.budget import Budget, check_feasible, smallest_description
from nas.pareto import write_pareto
from nas.progress import Progress
from nas.ray_runtime import check_resources, ray_processes, start_ray, stop_leftovers
from nas.results import TrialTable, load_settings
from nas.scheduler import RungScheduler
from nas.searcher import (METRIC, BudgetedSearcher, close_interrupted, failure_reason, open_study, table_from_study,
                          trial_curves)
from search_spaces.spaces import Space, load_space
from trainers.data import DatasetSplits, load_dataset
from trainers.recipe import get_recipe
from trainers.trial import TrialSettings, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Settings a resume may change; the others define the run and stay as they were.
RESUMABLE = ("trials", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "address", "verbose")
LOCK_FILE = ".lock"
SEARCH_FRONT = "search_front"


@dataclass
class SearchSettings:
    """Everything that defines a search; written to search.json and read back by a resume.

    Validates itself; a bad value is one UsageError naming it as the `nas search` flag that sets it.
    """

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
    grace_epochs: int = 1
    reduction_factor: int = 4
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
        for name in ("budget", "max_flops", "classes", "img_size", "patch_size", "trials", "epochs", "grace_epochs",
                     "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{_flag(name)} {value}: expected a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed {self.seed}: expected a non-negative integer")
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int) or self.reduction_factor < 2:
            raise UsageError(f"--reduction-factor {self.reduction_factor}: expected an integer of at least 2")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction {self.val_fraction}: expected a number between 0 and 1")
        if not 0 < self.train_fraction <= 1:
            raise UsageError(f"--train-fraction {self.train_fraction}: expected a number above 0, at most 1")
        if not self.cpus_per_trial > 0 or not self.gpus_per_trial >= 0:
            raise UsageError(f"--cpus-per-trial {self.cpus_per_trial:g} --gpus-per-trial {self.gpus_per_trial:g}: "
                             "expected a positive CPU count and a GPU count of 0 or more")

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"qkvnas": version("qkvnas"), "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def load_search_data(settings: SearchSettings) -> DatasetSplits:
    """The dataset the trials train on; the search scores on its validation split only, never on test."""
    splits = load_dataset(settings.dataset, settings.data_dir, val_fraction=settings.val_fraction,
                          seed=settings.seed, classes=settings.classes, train_fraction=settings.train_fraction,
                          img_size=settings.img_size)
    # The test split stays on disk: trials never receive it.
    return dataclasses.replace(splits, test=None)


def resume_search(run_dir: Path, changes: dict[str, Any] | None = None, trainable: Callable | None = None) -> int:
    """Continue the run in `run_dir` with its own settings. `changes` are the settings given again: the
    RESUMABLE ones change (validated as for a new run); any other is one UsageError, as it would silently
    make the run a different search."""
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run folder; expected results/<run> from nas search")
    record = load_settings(run_dir)
    fixed = sorted(name for name in changes or {} if name not in RESUMABLE)
    if fixed:
        given = ", ".join(f"{_flag(name)} {changes[name]}" for name in fixed)
        raise UsageError(f"--resume {run_dir} with {given}: a resumed run keeps the settings it was started with; "
                         f"expected only {', '.join(_flag(name) for name in RESUMABLE)}, or a new run (--name)")
    # The folder may have been moved or renamed since: it is where the run is now.
    record.update(name=run_dir.name, results_dir=str(run_dir.parent), **(changes or {}))
    return run_search(SearchSettings.from_dict(record), resume=True, trainable=trainable)


def run_search(settings: SearchSettings, resume: bool = False, trainable: Callable | None = None) -> int:
    """Run (or continue) a search; returns the process exit code. Nothing is written before every check
    (space, data, budget, Ray and its resources) has passed; a resume holds the run folder's lock."""
    run_dir = settings.run_dir
    if run_dir.exists() and not resume:
        raise UsageError(f"run folder {run_dir} already exists: pass --resume {run_dir} to continue it, "
                         "or --name NEW for a new run")
    if resume and not (run_dir / "search.json").is_file():
        raise UsageError(f"{run_dir}: no search.json; expected a run folder written by nas search")
    with contextlib.ExitStack() as stack:
        if resume:
            stack.enter_context(exclusive_lock(run_dir / LOCK_FILE, f"run folder {run_dir}"))
        space = load_space(settings.space)
        splits = load_search_data(settings)
        info = splits.info
        patch_size = settings.patch_size or info.patch_size
        budget = Budget(settings.budget, settings.max_flops, info.num_classes, info.img_size, info.in_chans)
        if not resume:
            check_feasible(settings.space, space, patch_size, budget, settings.max_infeasible_streak)
        started_ray = start_ray(settings.address, settings.verbose)
        if started_ray:
            stack.callback(ray.shutdown)
        check_resources(settings.cpus_per_trial, settings.gpus_per_trial,
                        f"--cpus-per-trial {settings.cpus_per_trial:g} --gpus-per-trial {settings.gpus_per_trial:g}")
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            stack.enter_context(exclusive_lock(run_dir / LOCK_FILE, f"run folder {run_dir}"))
        return _search(settings, resume, trainable, splits, space, patch_size, budget, started_ray)


def _search(settings: SearchSettings, resume: bool, trainable: Callable | None, splits: DatasetSplits, space: Space,
            patch_size: int, budget: Budget, started_ray: bool) -> int:
    run_dir = settings.run_dir
    info = splits.info
    record = load_settings(run_dir) if resume else {}
    stopped = stop_leftovers([tuple(process) for process in record.get("ray_processes") or []])
    if stopped:
        print(f"stopped {stopped} Ray processes the killed session left running")
    sessions = int(record.get("sessions", 0)) + 1
    record.update(settings.to_dict())
    record.update(sessions=sessions, versions=versions(), patch_size=patch_size, num_classes=info.num_classes,
                  img_size=info.img_size, in_chans=info.in_chans, started=record.get("started", _now()),
                  finished=None, ray_processes=ray_processes() if started_ray else [])
    write_json_atomic(run_dir / "search.json", record)
    clock = SessionClock(run_dir / "search.json", record)

    study = open_study(f"sqlite:///{run_dir.resolve() / 'study.db'}", settings.study_name, settings.seed)
    if resume:
        close_interrupted(study)
    table = TrialTable(run_dir / "trials.csv")
    table.close_running()
    if resume:
        rebuilt = table_from_study(study, table.path)
        if sorted(rebuilt.rows) != sorted(table.rows) or any(
                rebuilt.rows[key]["state"] != table.rows[key]["state"] for key in rebuilt.rows):
            print(f"{table.path} disagrees with study.db ({len(table.rows)} rows, {len(rebuilt.rows)} trials): "
                  "rebuilt from the study, the record of truth")
            table = rebuilt
    table.write()
    already = table.trained()
    remaining = settings.trials - already
    if remaining <= 0:
        print(f"{run_dir}: {already} trials already trained (--trials {settings.trials}); "
              f"raise --trials to extend it")
        return finish(settings, table, clock, exhausted=None)
    exhausted = _tune(settings, splits, space, patch_size, budget, table, study, remaining, already, sessions,
                      resume, trainable, clock)
    return finish(settings, table, clock, exhausted)


class SessionClock:
    """Keeps `seconds` in search.json current (a killed session's time is not lost): earlier sessions' total
    plus this one's elapsed time, written on every trial event and at the end."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self.earlier = float(record.get("seconds") or 0.0)
        self.start = time.monotonic()

    def write(self, **changes: Any) -> None:
        self.record.update(seconds=round(self.earlier + time.monotonic() - self.start, 1), **changes)
        write_json_atomic(self.path, self.record)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _tune(settings: SearchSettings, splits: DatasetSplits, space: Space, patch_size: int, budget: Budget,
          table: TrialTable, study: optuna.Study, remaining: int, already: int, sessions: int, resume: bool,
          trainable: Callable | None, clock: SessionClock) -> str | None:
    """Ray Tune's part; returns the infeasible-streak message when the space ran out of feasible draws."""
    run_dir = settings.run_dir.resolve()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not settings.verbose:
        # Failed trials are recorded with their reason in trials.csv; Ray's tracebacks would bury the view.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        progress = Progress(table, settings.trials, already)
        searcher = BudgetedSearcher(
            space, patch_size, budget, table, study, settings.seed, settings.epochs, settings.max_infeasible_streak,
            initial_points=None if resume else list(getattr(space, "initial_points", [])), on_draw=progress.show)
        scheduler = RungScheduler(METRIC, settings.epochs, settings.grace_epochs, settings.reduction_factor)
        scheduler.seed(trial_curves(study))
        trial_settings = TrialSettings(
            recipe=get_recipe(settings.recipe, epochs=settings.epochs, **settings.recipe_overrides),
            threads=max(1, int(settings.cpus_per_trial)), device="cuda" if settings.gpus_per_trial > 0 else "cpu")
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable or run_trial, data=splits, settings=trial_settings),
                                resources),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.config['trial_number']:04d}"),
            run_config=tune.RunConfig(name=f"ray-{sessions}", storage_path=str(run_dir),
                                      verbose=1 if settings.verbose else 0,
                                      callbacks=[ResultsCallback(table, searcher, progress, clock)],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        tuner.fit()
        close_interrupted(study)
        progress.show(force=True)
        if searcher.exhausted:
            return (f"stopped: {settings.max_infeasible_streak} draws in a row gave no new architecture within the "
                    f"budget (every feasible one tried, or the budget too tight); "
                    f"{smallest_description(settings.space, space, patch_size, budget)}")
        return None
    finally:
        table.close_running()
        table.write()


def finish(settings: SearchSettings, table: TrialTable, clock: SessionClock, exhausted: str | None) -> int:
    """Record the session's end, print the outcome, write the front; the exit code says how it ended.

    The search's own front is search_front.* (params): `nas pareto` writes pareto.*, which a search never touches."""
    clock.write(finished=_now())
    run_dir = settings.run_dir
    best = table.best()
    code = 0
    if exhausted:
        print(exhausted)
    elif table.trained() < settings.trials:
        # Ray Tune ends fit() quietly on Ctrl-C: what is missing tells an interrupted search.
        print(f"search interrupted after {table.trained()} of {settings.trials} trials; "
              f"continue it with: nas search --resume {run_dir}")
        code = 130
    if best is None:
        print(f"{run_dir}: no trial has a score yet")
        return 2 if exhausted else code
    print(f"best: {best['trial_id']} val_acc {best['val_acc']:.4f} with {best['params']:,} params "
          f"({best['structure']}); results in {run_dir}")
    print(f"Pareto front: {write_pareto(run_dir, name=SEARCH_FRONT)}")
    return code


class ResultsCallback(Callback):
    """Keeps trials.csv current as trials start and report (the searcher records how they end, a failure with
    the reason read here from Ray's error files); drives the progress view and the session's time."""

    def __init__(self, table: TrialTable, searcher: BudgetedSearcher, progress: Progress, clock: SessionClock) -> None:
        self.table = table
        self.searcher = searcher
        self.progress = progress
        self.clock = clock

    @staticmethod
    def _row_id(trial) -> str:
        return TrialTable.trial_id(trial.config["trial_number"])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.table.update(self._row_id(trial), state="running")
        self.table.write()
        self.progress.show()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row_id = self._row_id(trial)
        self.table.record_epoch(row_id, int(result["training_iteration"]), float(result["val_acc"]),
                                float(result["trial_seconds"]))
        if self.table.rows[row_id].get("flops") is None:
            self.table.update(row_id, flops=int(result["flops"]))
        self.table.write()
        self.progress.show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.clock.write()
        self.progress.show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.searcher.record_failure(trial.trial_id, failure_reason(trial.pickled_error_file, trial.error_file))
        self.on_trial_complete(iteration, trials, trial)
