"""Retrain a run's winners (and baselines) with a full recipe, then test each once: `retrain_run(request)`.

Winners come from the run's Pareto front (`top`), its trial ids (`trials`) or architectures (`archs`);
`baselines` adds reference models under the very same recipe. Each model trains in
<out>/retrain/<arch-id>/ (`trainers.from_scratch`), locally one after another (every torchrun rank runs the same
code) or all at once as Ray tasks on a cluster; <out>/retrain.csv gets each model's row when it finishes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_text_atomic
from qkvnas_core.log import handled_by
from nas.settings.naming import given
from nas.runs.fronts import pareto_front, scored_trials
from nas.runtime.ray_runtime import check_resources, start_ray
from nas.runs.seed_stats import baseline_comparison, seed_summary
from nas.settings.requests import RetrainRequest
from nas.runs.results import RunFolder, find_run, format_trial_id, load_settings, load_trials, state_counts
from search_spaces.arch import ArchConfig
from search_spaces.presets import fit_patch_size, load_arch
from trainers.datasets.registry import DataRequest
from trainers.datasets.splits import DatasetInfo
from trainers.engine import TrainingDiverged
from trainers.from_scratch import RETRAIN_COLUMNS, RetrainTask, retrain_model
from trainers.holdout import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLIT_VERSION
from trainers.model_folder import plan, results_frame
from trainers.recipe import Recipe, describe_recipe, full_recipe_name, get_recipe
from trainers.runtime import Distributed, init_distributed, main_rank_logger

log = main_rank_logger(__name__)  # every torchrun rank plans the same models; rank 0 speaks


@dataclass(frozen=True)
class Candidate:
    """A model to retrain before its patch size meets the dataset: where it came from and in which role.

    searched_at: the image size (px) a search chose its patch size for; None for presets and arch files.
    """

    arch: ArchConfig
    role: str
    source: str
    searched_at: int | None = None


def fitted_arch(candidate: Candidate, img_size: int, dataset_patch_size: int, patch_size: int | None) -> ArchConfig:
    """The candidate at the retrain images: an explicit patch size; else a searched winner retrained at another
    image size takes the dataset's (patch 2 from 8 px digits becomes 16 at 224 px); else `fit_patch_size`."""
    if patch_size is None and candidate.searched_at not in (None, img_size):
        patch_size = dataset_patch_size
    return fit_patch_size(candidate.arch, img_size, dataset_patch_size, patch_size)


def _trial_arch(row: Any, path: Path) -> ArchConfig:
    try:
        return ArchConfig.from_json(str(row["arch"]))
    except UsageError as error:
        raise UsageError(f"{path}: trial {row['trial_id']} has an unreadable arch ({error})") from None


def front_winners(table: pd.DataFrame, top: int, path: Path, searched_at: int | None,
                  include_stopped: bool = False) -> list[Candidate]:
    """The best `top` members of the params Pareto front by val_acc (fewer params first among equals), drawn from
    trials scored at full fidelity unless `include_stopped`."""
    if scored_trials(table, include_stopped).empty:
        kind = "scored" if include_stopped else "complete (every epoch run)"
        raise UsageError(f"{path} has no Pareto front ({state_counts(table)}): expected at least one {kind} trial "
                         "with a val_acc, --include-stopped, or models picked with --trial-ids / --arch")
    front = pareto_front(table, ["params"], include_stopped).sort_values(["val_acc", "params", "trial_id"],
                                                        ascending=[False, True, True], kind="stable")
    if len(front) < top:
        log.info(f"--top {top}: the Pareto front has {len(front)} member(s); retraining all of them")
    return [Candidate(_trial_arch(row, path), "winner", str(row["trial_id"]), searched_at)
            for _, row in front.head(top).iterrows()]


def trial_winners(table: pd.DataFrame, trial_ids: list[str], path: Path,
                  searched_at: int | None) -> list[Candidate]:
    rows = {str(row["trial_id"]): row for _, row in table.iterrows()}
    picked = []
    for trial_id in trial_ids:
        key = format_trial_id(int(trial_id)) if trial_id.isdigit() else trial_id
        if key not in rows:
            known = sorted(rows)
            listed = ", ".join(known[:8]) + (f" ... ({len(known)} trials)" if len(known) > 8 else "")
            raise UsageError(f"{given('trial_ids', trial_id)}: no such trial in {path}; expected one of "
                             f"{listed or 'none'}")
        if rows[key]["state"] not in ("complete", "stopped"):
            log.info(f"note: trial {key} is {rows[key]['state']}; retraining it as asked")
        picked.append(Candidate(_trial_arch(rows[key], path), "winner", key, searched_at))
    return picked


@dataclass
class RetrainOutcome:
    """What a retrain did: every finished (model, seed)'s result (earlier ones included), a row each in `table`;
    per model its seeds' summary, and against each baseline the paired differences (`nas.runs.seed_stats`); the
    (model, seed) units that diverged, as '<arch_id> seed <seed>'."""

    table: pd.DataFrame
    csv_path: Path
    info: DatasetInfo
    diverged: list[str]

    @property
    def summary(self) -> pd.DataFrame:
        return seed_summary(self.table)

    @property
    def comparison(self) -> pd.DataFrame:
        return baseline_comparison(self.table)


def candidates(request: RetrainRequest, run_dir: Path, searched_at: int | None) -> list[Candidate]:
    """Every model the request names, winners first, before any patch size meets the data."""
    picked: list[Candidate] = []
    if request.top is not None or request.trial_ids:
        table = load_trials(run_dir)
        path = RunFolder(run_dir).trials_file
        if request.top is not None:
            picked += front_winners(table, request.top, path, searched_at, request.include_stopped)
        picked += trial_winners(table, list(request.trial_ids), path, searched_at)
    picked += [Candidate(load_arch(spec), "winner", spec) for spec in request.arch]
    picked += [Candidate(load_arch(spec), "baseline", spec) for spec in request.baseline]
    return picked


def model_folder(out: Path, arch_id: str, seed: int) -> Path:
    """Where one (model, seed) trains: <out>/retrain/<arch-id>/ for seed 0 (as before seeds were asked for),
    <out>/retrain/<arch-id>-seed<S>/ for another."""
    return RunFolder(out).retrain_dir / (arch_id if seed == 0 else f"{arch_id}-seed{seed}")


def retrain_tasks(picked: list[Candidate], info: DatasetInfo, request: RetrainRequest, out: Path, recipe: Recipe,
                  data: DataRequest) -> list[RetrainTask]:
    """Fit each candidate's patch size to the images and give each of its seeds a folder; the same model twice
    trains once."""
    tasks: dict[str, RetrainTask] = {}
    for candidate in picked:
        arch = fitted_arch(candidate, info.img_size, info.patch_size, request.patch_size)
        if arch.patch_size != candidate.arch.patch_size:
            searched = "" if candidate.searched_at is None else f"searched at {candidate.searched_at} px; "
            why = "(--patch-size)" if request.patch_size is not None else f"({searched}override with --patch-size)"
            log.info(f"patch size {candidate.arch.patch_size} -> {arch.patch_size} for {candidate.source} on "
                     f"{info.name} at {info.img_size} px {why}")
        if arch.arch_id in tasks:
            log.info(f"note: {candidate.source} is the same model as {tasks[arch.arch_id].source} "
                     f"({arch.arch_id}); trained once")
            continue
        tasks[arch.arch_id] = RetrainTask(
            arch=arch, role=candidate.role, source=candidate.source, folder=RunFolder(out).retrain_dir / arch.arch_id,
            recipe=recipe, overrides=request.overrides, data=data, resume=request.resume, device=request.device,
            compile=request.compile, progress_bar=request.progress_bar)
    return [dataclasses.replace(task, seed=seed, folder=model_folder(out, task.arch.arch_id, seed))
            for task in tasks.values() for seed in request.training_seeds]


def retrain_on_worker(task: RetrainTask) -> dict[str, Any] | None:
    """A Ray task: `retrain_model`, its lines shown on the worker's stdout, which Ray passes on to the driver (where
    a model trained locally would have shown them)."""
    with handled_by(logging.StreamHandler(sys.stdout)):
        return retrain_model(task)


def run_on_ray(tasks: list[RetrainTask], address: str, cpus: float, gpus: float,
               on_result: Callable[[RetrainTask, dict[str, Any] | None, BaseException | None], None]) -> None:
    """Every model as its own Ray task, all submitted at once; on_result runs on the driver as each ends.
    The address and the resources are checked as `nas search` checks them, and a local Ray is loopback-only."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # each model's epoch lines look alike; deduplication hides them
    import ray

    started = start_ray(address, log_to_driver=True)
    try:
        check_resources(cpus, gpus, f"--cpus-per-model {cpus:g} --gpus-per-model {gpus:g}")
        # Named as the function it runs: Ray prefixes the worker's lines with it, `(retrain_model pid=...)`.
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(retrain_on_worker).options(
            name="retrain_model")
        device = "cuda" if gpus > 0 else "cpu"
        # Ray workers may start elsewhere: they get absolute paths.
        pending = {remote.remote(dataclasses.replace(
            task, device=device, threads=max(1, int(cpus)), folder=task.folder.resolve(),
            data=dataclasses.replace(task.data, data_dir=None if task.data.data_dir is None
                                     else str(Path(task.data.data_dir).resolve())))): task for task in tasks}
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, TrainingDiverged):
                    on_result(task, None, error.cause)
                    continue
                if isinstance(error.cause, UsageError):
                    raise UsageError(str(error.cause)) from None
                raise
            on_result(task, result, None)
    finally:
        if started:
            ray.shutdown()


def retrain_run(request: RetrainRequest) -> RetrainOutcome:
    """Plan every model (one UsageError before anything is written), train those not finished, test each once.

    Its lines are logged (rank 0 only under torchrun): progress at INFO, a model whose training diverged at ERROR
    (the others go on). A model trained as a Ray task prints its own lines on its worker, which Ray shows here.
    """
    world = init_distributed(request.device) if request.address is None else Distributed()
    run_dir = find_run(request.run)
    settings = load_settings(run_dir, required=False)
    searched_at = settings.get("img_size")
    picked = candidates(request, run_dir, None if searched_at is None else int(searched_at))
    dataset = request.dataset or settings.get("dataset")
    if dataset is None:
        raise UsageError(f"{run_dir} has no search.json naming its dataset: expected --dataset NAME")
    recipe = get_recipe(request.recipe or full_recipe_name(dataset), **request.overrides)
    same_data = dataset == settings.get("dataset")
    data_request = DataRequest(
        name=dataset, data_dir=request.data_dir or (settings.get("data_dir") if same_data else None),
        download=request.download, img_size=request.img_size, image_cache=request.image_cache,
        cache_dir=request.cache_dir or (settings.get("cache_dir") if same_data else None),
        val_fraction=(request.val_fraction if request.val_fraction is not None
                      else settings.get("val_fraction", DEFAULT_VAL_FRACTION)),
        split_seed=next(seed for seed in (request.split_seed, settings.get("split_seed"), settings.get("seed"),
                                          DEFAULT_SPLIT_SEED) if seed is not None))
    data = data_request.load()
    info = data.info
    data_request = data_request.resolved(info)
    searched_split = settings.get("split_version", 1)
    if same_data and searched_split != SPLIT_VERSION:
        log.info(f"note: {run_dir} was searched on validation split version {searched_split}; this version "
                 f"draws version {SPLIT_VERSION} (other images"
                 f"{', and another digits test set' if dataset == 'digits' else ''})")
    out = Path(request.out) if request.out is not None else run_dir
    tasks = retrain_tasks(picked, info, request, out, recipe, data_request)
    to_train, finished = plan(tasks, info)
    if world.active:
        torch.distributed.barrier()  # every rank has read the folders before rank 0 writes to them
    test_size = "no" if data.test is None else f"{len(data.test):,}"
    log.info(f"data    {info.name}: {len(data.train):,} train / {len(data.val):,} val / {test_size} test at "
        f"{info.img_size} px, {info.num_classes} classes")
    seeds = request.training_seeds
    log.info(describe_recipe(recipe, request.overrides)
             + (f", seed {seeds[0]}" if len(seeds) == 1 else f", seeds {','.join(map(str, seeds))} (every model with each)"))
    where = (f"Ray at {request.address}" if request.address is not None else
             f"{request.device}{f' x {world.world_size} processes' if world.active else ''}")
    runs = "" if len(seeds) == 1 else f" (of {len(tasks) // len(seeds)} models x {len(seeds)} seeds)"
    log.info(f"models  {len(to_train)}{runs} to train on {where}"
             + (f", {len(finished)} already finished (skipped)" if finished else "")
             + f" -> {RunFolder(out).retrain_dir}")

    csv_path = RunFolder(out).retrain_file
    results = list(finished)
    diverged: list[str] = []

    def on_result(task: RetrainTask, result: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:
            diverged.append(f"{task.arch.arch_id} seed {task.seed}")
            log.error(f"{task.arch.arch_id} ({task.source}) seed {task.seed}: {error}")
            return
        results.append(result)
        if world.is_main:
            # Every finished model under the output folder, earlier retrains' included.
            earlier = sorted(RunFolder(out).retrain_dir.iterdir()) if RunFolder(out).retrain_dir.is_dir() else []
            write_text_atomic(csv_path, results_frame(earlier, RETRAIN_COLUMNS, results).to_csv(index=False))

    if request.address is not None:
        run_on_ray(to_train, request.address, request.cpus_per_model, request.gpus_per_model, on_result)
    else:
        for task in to_train:
            try:
                on_result(task, retrain_model(task, data), None)
            except TrainingDiverged as error:
                on_result(task, None, error)
    table = results_frame([task.folder for task in tasks], RETRAIN_COLUMNS, results)
    return RetrainOutcome(table=table, csv_path=csv_path, info=info, diverged=diverged)
