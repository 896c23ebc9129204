"""One search: Ray Tune runs the trials, the budgeted searcher samples them, ASHA stops the weak early.

`run_search(settings)` owns the run folder `results/<run>/`: search.json (settings, versions, seed),
study.db (Optuna's SQLite storage, the record of truth), trials.csv (rendered from the study after every event,
written atomically) and one Ray experiment folder per session (`ray-1`, `ray-2` after a resume).
`resume_search(run_dir)` reopens the study: finished trials are kept and never rerun; trials a crash left
running are closed as failed (interrupted). Both build one `SearchSession`, run it, and return a `SearchResult`;
they print nothing: their lines are logged (qkvnas_core.log; the live view's are nas.engine.progress's).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.stopper import Stopper

from qkvnas_core.errors import UsageError
from qkvnas_core.log import logger
from qkvnas_core.files import exclusive_lock, write_json_atomic
from nas.engine.budget import Budget, check_feasible, smallest_description
from nas.settings.objectives import (SCORE, reference_limits)
from nas.engine.hypervolume import front_hypervolume, hypervolume_history
from nas.settings.naming import given, named
from nas.runs.fronts import scored_trials
from nas.runs.pareto import draw_front
from nas.runs.plots import plot_hypervolume
from nas.engine.progress import Progress
from nas.runtime.ray_runtime import check_resources, ray_processes, start_ray, stop_leftovers
from nas.runs.results import (Run, RunFolder, SessionRecord, as_written, best_trial, load_settings, search_document,
                              trained_count, write_trials)
from nas.engine.scheduler import RungScheduler
from nas.settings.requests import EARLIER_DEFAULTS, SearchSettings, resumable
from nas.engine.proxy_choice import POOL_PER_DRAW, STARTUP_DRAWS, proxy_scorer, startup_points
from nas.engine.searcher import (BudgetedSearcher, TrialEvents, close_interrupted, make_sampler, open_study,
                                 render_trials, trial_curves)
from nas.runtime.tracking import tracking_callbacks, tracking_environment
from search_spaces.spaces import Space, load_space
from trainers.datasets.registry import image_path, load_dataset
from trainers.datasets.splits import DatasetSplits
from trainers.holdout import SPLIT_VERSION
from trainers.recipe import get_recipe
from trainers.trial import TrialSettings, run_trial

log = logger(__name__)



def versions() -> dict[str, str]:
    import timm
    import torch

    return {"qkvnas": version("qkvnas"), "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def load_search_data(settings: SearchSettings) -> DatasetSplits:
    """The dataset the trials train on; the search scores on its validation split only, never on test. Image files
    are read into the image cache (decoded once at the search's size), which every trial reads."""
    # The test split stays on disk, unread: trials never receive it.
    splits = load_dataset(settings.dataset, settings.data_dir, val_fraction=settings.val_fraction,
                          seed=settings.seed if settings.split_seed is None else settings.split_seed,
                          classes=settings.classes, train_fraction=settings.train_fraction,
                          img_size=settings.img_size, val_images=settings.val_images, image_cache=True,
                          cache_dir=settings.cache_dir, with_test=False)
    capped = " (--val-images caps it)" if settings.val_images is not None and len(splits.val) == settings.val_images \
        else ""
    log.info(f"data: {settings.dataset} at {splits.info.img_size} px, {len(splits.train):,} training and "
             f"{len(splits.val):,} validation images{capped}, read from {image_path(splits)}")
    return splits


def resume_search(run_dir: Path, changes: dict[str, Any] | None = None, trainable: Callable | None = None,
                  stop: Callable[[], bool] | None = None) -> SearchResult:
    """Continue the run in `run_dir` with its own settings. `changes` are the settings given again: the
    resumable ones change (validated as for a new run); any other is one UsageError, as it would silently
    make the run a different search. The run folder is locked before its search.json is read."""
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir}: no such folder to resume; expected results/<run> from nas search")
    changes = changes or {}
    fixed = sorted(name for name in changes if name not in resumable(SearchSettings))
    if fixed:
        listed = ", ".join(given(name, changes[name]) for name in fixed)
        raise UsageError(f"resuming {run_dir} with {listed}: a resumed run keeps the settings it was started with; "
                         f"expected only {', '.join(named(name) for name in resumable(SearchSettings))}, or a new "
                         "run (--name)")
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive_lock(RunFolder(run_dir).lock_file, f"run folder {run_dir}"))
        record = load_settings(run_dir)
        # The folder may have been moved or renamed since: it is where the run is now.
        settings = SearchSettings.from_dict({**EARLIER_DEFAULTS, **record, "name": run_dir.name,
                                             "results_dir": str(run_dir.parent), **changes})
        if record.get("split_version", 1) != SPLIT_VERSION:
            raise UsageError(f"--resume {run_dir}: its validation split is version {record.get('split_version', 1)} "
                             f"(an older qkvnas), this version draws {SPLIT_VERSION}, with other images; expected a "
                             "new run (--name)")
        return open_session(settings, record, stack, trainable, stop).run()


def run_search(settings: SearchSettings, trainable: Callable | None = None,
               stop: Callable[[], bool] | None = None) -> SearchResult:
    """Run a new search into `settings.run_dir`; the live view's lines are logged (nas.engine.progress).
    `trainable` replaces the trial function (tests inject faults with it); `stop`, when it turns true, ends the
    search as an interrupt does (no trial is drawn, the running ones are stopped and closed, the run resumable):
    the Python API's raising progress callback."""
    if settings.run_dir.exists():
        raise UsageError(f"run folder {settings.run_dir} already exists: `nas search {settings.run_dir} --resume` "
                         "continues it; expected --name NEW for a new run")
    with contextlib.ExitStack() as stack:
        return open_session(settings, None, stack, trainable, stop).run()


@dataclass(frozen=True)
class SearchResult:
    """How one session of a search ended: what `run_search` and `resume_search` return, and `nas search` prints.

    ended: finished (--trials trained), already trained (nothing was left to train), exhausted (no new feasible
    architecture in max_infeasible_streak draws) or interrupted (Ctrl-C; a resume continues it)."""

    run_dir: Path
    ended: str
    note: str  # why it ended before --trials were trained, or how to go on; "" when it finished
    trials: pd.DataFrame  # trials.csv as written last
    settings: dict[str, Any]  # search.json as written last: the settings and the sessions' record
    best: dict[str, Any] | None  # its row, None while no trial has a score
    front: Path | None  # search_front.csv, written when a trial ran every epoch
    study: optuna.Study
    hypervolume: float  # of the full-fidelity front, reference val_acc 0 and each cost's limit (search.json says)

    @property
    def trained(self) -> int:
        return trained_count(self.trials)

    @property
    def exit_code(self) -> int:
        """130 for an interrupted search (as Ctrl-C), 2 for a space exhausted before any score, else 0."""
        if self.ended == "interrupted":
            return 130
        return 2 if self.ended == "exhausted" and self.best is None else 0


@dataclass
class SearchSession:
    """One session of a run (a new search, or one resume of it), built once by `open_session`: what its steps
    share. Its record in search.json, its study and trials.csv are current from the start."""

    settings: SearchSettings
    resumed: bool
    space: Space
    splits: DatasetSplits
    budget: Budget
    study: optuna.Study
    clock: SessionClock
    progress: Progress
    trainable: Callable
    limits: dict[str, float]  # the costs the hypervolume is measured over, and their limits
    stop: StopRequest  # the caller asks the search to end, as an interrupt would

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.settings.run_dir)

    def run(self) -> SearchResult:
        settings = self.settings
        already = self.progress.already
        if already >= settings.trials:
            return self.finish("already trained", f"{self.folder.path}: {already} trials already trained "
                                                  f"(--trials {settings.trials}); raise --trials to extend it")
        searcher = self.tune(settings.trials - already)
        if searcher.exhausted:
            return self.finish("exhausted", (
                f"stopped: {settings.max_infeasible_streak} draws in a row gave no new architecture within the "
                f"budget (every feasible one tried, or the budget too tight); "
                f"{smallest_description(settings.space, self.space, self.budget)}"))
        trained = trained_count(render_trials(self.study))
        if self.stop():
            return self.finish("interrupted", f"search stopped by the caller after {trained} of {settings.trials} "
                                              f"trials; continue it with: nas search {self.folder.path} --resume")
        if searcher.epoch_budget_spent:
            return self.finish("finished", f"--epoch-budget {settings.epoch_budget} spent ({searcher.epochs_spent} "
                                           f"epochs in {trained} trials)")
        if trained < settings.trials:
            # Ray Tune ends fit() quietly on Ctrl-C: what is missing tells an interrupted search.
            return self.finish("interrupted", f"search interrupted after {trained} of {settings.trials} trials; "
                                              f"continue it with: nas search {self.folder.path} --resume")
        return self.finish("finished", "")

    def save_trials(self, ended: bool = False) -> None:
        """trials.csv rendered from the study, after every event; when a trial `ended`, the session's time too."""
        trials = render_trials(self.study)
        write_trials(self.folder.trials_file, trials)
        if ended:
            self.clock.write()
        self.progress.show(trials, force=ended)

    def startup_points(self) -> list[dict[str, Any]]:
        """The new search's first points: the space's initial points, then a proxy's picks (--startup)."""
        settings = self.settings
        if settings.startup is not None:
            log.info(f"startup: scoring {STARTUP_DRAWS * POOL_PER_DRAW} feasible draws with {settings.startup}; "
                     f"the best {STARTUP_DRAWS} train first")
        return startup_points(settings.startup, self.space, self.budget, self.splits,
                              get_recipe(settings.recipe, epochs=settings.epochs, **settings.recipe_overrides),
                              settings.seed)

    def tune(self, remaining: int) -> BudgetedSearcher:
        """Ray Tune's part: `remaining` trials; returns the searcher, which knows why it stopped drawing."""
        settings = self.settings
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        recipe = get_recipe(settings.recipe, epochs=settings.epochs, **settings.recipe_overrides)
        screen = None
        if settings.screen is not None:
            log.info(f"screen: each trial is the best {settings.screen_train} of {settings.screen_pool} feasible "
                     f"draws by {settings.screen}")
            screen = proxy_scorer(settings.screen, self.splits, recipe, settings.seed)
        searcher = BudgetedSearcher(
            self.space, self.budget, self.study, settings.seed, settings.epochs,
            settings.max_infeasible_streak, on_record=self.save_trials,
            initial_points=None if self.resumed else self.startup_points(),
            sampler=functools.partial(make_sampler, kind=settings.sampler), objectives=settings.objectives,
            epoch_budget=settings.epoch_budget, screen=screen, screen_pool=settings.screen_pool,
            screen_train=settings.screen_train, stop=self.stop)
        if settings.early_stopping == "asha":
            scheduler = RungScheduler(settings.objectives, settings.epochs, settings.grace_epochs,
                                      settings.reduction_factor)
            scheduler.seed(trial_curves(self.study, settings.objectives))
        else:
            scheduler = FIFOScheduler()
        trial_settings = TrialSettings(
            recipe=get_recipe(settings.recipe, epochs=settings.epochs, **settings.recipe_overrides),
            threads=max(1, int(settings.cpus_per_model)), device="cuda" if settings.gpus_per_model > 0 else "cpu")
        resources = {"cpu": settings.cpus_per_model, "gpu": settings.gpus_per_model}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(self.trainable, data=self.splits, settings=trial_settings),
                                resources),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: RunFolder.trial_folder(
                                            trial.config["trial_number"])),
            run_config=tune.RunConfig(name=self.folder.experiment_name(self.clock.record.sessions),
                                      stop=CallerStop(self.stop),
                                      storage_path=str(self.folder.path.resolve()),
                                      verbose=1 if settings.verbose else 0,
                                      callbacks=[TrialEvents(searcher),
                                                 *tracking_callbacks(settings.logger, self.folder.path)],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        try:
            with tracking_environment(settings.logger):
                tuner.fit()
        finally:
            # Trials Ctrl-C left running are failed (interrupted) in the study: a resume trains others instead.
            close_interrupted(self.study, settings.seed)
            self.save_trials(ended=True)
        return searcher

    def finish(self, ended: str, note: str) -> SearchResult:
        """Record the session's end and write the search's own front, search_front.* (params): `nas pareto`
        writes pareto.*, which a search never touches. The front holds trials scored at full fidelity; its
        hypervolume goes to search.json, and its history against epochs spent to hypervolume.png."""
        trials = render_trials(self.study)
        hypervolume = run_hypervolume(trials, self.limits)
        self.clock.write(finished=_now(), ended=ended, hypervolume=hypervolume,
                         hypervolume_reference={SCORE: 0.0, **self.limits})
        best = best_trial(trials)
        full_fidelity = scored_trials(trials, include_stopped=False)
        front = None
        if len(full_fidelity):
            run = Run(self.folder.path, self.clock.document, trials)
            front = draw_front(run, name=self.folder.search_front.name).csv_path
            history = hypervolume_history(full_fidelity, [SCORE, *self.limits], self.limits)
            plot_hypervolume(history, self.folder.hypervolume_plot,
                             f"{self.settings.name}: hypervolume of the front scored at {self.settings.epochs} epochs")
        return SearchResult(self.folder.path, ended, note, as_written(trials, self.folder.trials_file),
                            self.clock.document, best, front, self.study, hypervolume)


def open_session(settings: SearchSettings, record: dict[str, Any] | None, stack: contextlib.ExitStack,
                 trainable: Callable | None, stop: Callable[[], bool] | None = None) -> SearchSession:
    """Check everything a session needs (space, data, budget, Ray and its resources), then record its start:
    search.json, the study (trials a stopped session left running closed as interrupted) and trials.csv.

    `record` is the run's search.json on a resume (its folder already locked), None for a new run; nothing is
    written before every check has passed. `stack` shuts down a Ray started here and releases the lock."""
    resumed = record is not None
    run_dir = settings.run_dir
    folder = RunFolder(run_dir)
    if resumed:
        # Every file a resume reads is read before anything is written or started: a damaged study.db is one line.
        folder.check_study(settings.study_name)
        with folder.reading_study():
            render_trials(open_study(folder.storage, settings.study_name, settings.seed, settings.objectives,
                                     settings.sampler))
    space = load_space(settings.space)
    splits = load_search_data(settings)
    info = splits.info
    shape = dataclasses.replace(info.shape, patch_size=settings.patch_size or info.patch_size)
    budget = Budget(settings.budget, settings.max_flops, shape)
    if not resumed:
        check_feasible(settings.space, space, budget, settings.max_infeasible_streak)
    started_ray = start_ray(settings.address, settings.verbose)
    if started_ray:
        stack.callback(ray.shutdown)
    check_resources(settings.cpus_per_model, settings.gpus_per_model,
                    f"{named('cpus_per_model')} {settings.cpus_per_model:g} {named('gpus_per_model')} "
                    f"{settings.gpus_per_model:g}")
    if not resumed:
        run_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(exclusive_lock(RunFolder(run_dir).lock_file, f"run folder {run_dir}"))

    earlier = SessionRecord.from_document(record or {})
    stopped = stop_leftovers([tuple(process) for process in earlier.ray_processes])
    if stopped:
        log.info(f"stopped {stopped} Ray processes the killed session left running")
    session = dataclasses.replace(
        earlier, sessions=earlier.sessions + 1, versions=versions(), split_version=SPLIT_VERSION,
        patch_size=shape.patch_size, num_classes=shape.num_classes, img_size=shape.img_size, in_chans=shape.in_chans,
        train_count=len(splits.train), val_count=len(splits.val), images_from=image_path(splits),
        started=earlier.started or _now(), finished=None, ended=None,
        ray_processes=ray_processes() if started_ray else [])
    clock = SessionClock(folder.settings_file, settings, session)
    clock.write()
    study = open_study(folder.storage, settings.study_name, settings.seed, settings.objectives, settings.sampler)
    close_interrupted(study, settings.seed)
    trials = render_trials(study)
    write_trials(folder.trials_file, trials)
    limits = reference_limits(settings.budget, settings.max_flops)
    progress = Progress(settings.trials, trained_count(trials),
                        hypervolume=functools.partial(run_hypervolume, limits=limits), epochs=settings.epochs)
    return SearchSession(settings, resumed, space, splits, budget, study, clock, progress,
                         trainable or run_trial, limits, StopRequest(stop))


class StopRequest:
    """The caller's `stop` (a callable), as the session and Ray Tune hold it. Tune pickles its search algorithm and
    stopper with the experiment's state, which a resume never reads (it reads the study): the pickled copy is one
    that never stops, not the caller's callable (which may hold what does not pickle, a logging handler's lock)."""

    def __init__(self, stop: Callable[[], bool] | None = None) -> None:
        self.stop = stop

    def __call__(self) -> bool:
        return self.stop is not None and self.stop()

    def __getstate__(self) -> dict[str, Any]:
        return {"stop": None}


class CallerStop(Stopper):
    """Ray Tune's stopper for the caller's stop request: when it turns true, every trial is stopped."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.stop()

    def stop_all(self) -> bool:
        return self.stop()


def run_hypervolume(trials: pd.DataFrame, limits: dict[str, float]) -> float:
    """The hypervolume of the trials scored at full fidelity, over val_acc and the costs in `limits`."""
    return front_hypervolume(scored_trials(trials, include_stopped=False), [SCORE, *limits], limits)


class SessionClock:
    """Writes search.json (the settings and the SessionRecord) and keeps its `seconds` current (a killed session's
    time is not lost): earlier sessions' total plus this one's elapsed time, written at the start, on every trial's
    end and at the end."""

    def __init__(self, path: Path, settings: SearchSettings, record: SessionRecord) -> None:
        self.path, self.settings, self.record = path, settings, record
        self.earlier = record.seconds
        self.start = time.monotonic()

    @property
    def document(self) -> dict[str, Any]:
        """search.json as written last."""
        return search_document(self.settings, self.record)

    def write(self, **changes: Any) -> None:
        self.record = dataclasses.replace(self.record, seconds=round(self.earlier + time.monotonic() - self.start, 1),
                                          **changes)
        write_json_atomic(self.path, self.document)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
