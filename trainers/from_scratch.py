"""One architecture trained from scratch with a full recipe and tested once: a `nas retrain` model
(`retrain_model`) and `nas train` (`train_arch`). The folder, its resume key and the loop are
`trainers.model_folder`'s.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.cost import count_flops
from search_spaces.model_tools.device import DEFAULT_DEVICE
from search_spaces.model_tools.memory import TRAINING_COPIES, check_fits
from search_spaces.presets import fit_patch_size
from trainers.datasets.registry import DataRequest
from trainers.datasets.splits import DatasetSplits
from trainers.metrics import EpochMetrics
from trainers.model_folder import TrainingTask, describe_test, plan, train_in_folder
from trainers.recipe import Recipe, describe_recipe
from trainers.runtime import init_distributed, main_rank_logger, seed_everything, select_device

RETRAIN_COLUMNS = ["arch_id", "role", "source", "structure", "params", "flops", "top1", "top5", "best_val_acc",
                   "best_epoch", "epochs", "recipe", "overrides", "dataset", "img_size", "patch_size", "seed",
                   "world_size", "seconds"]
# Where `nas train` puts a model when no folder is given: results/train/<arch-id>-<dataset>.
TRAIN_ROOT = Path("results") / "train"
log = main_rank_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class RetrainTask(TrainingTask):
    """One model to train from scratch: everything `retrain_model` needs, picklable so a Ray worker can run it.

    threads: torch intra-op threads to use (a Ray task's CPU share), or None to leave them.
    """

    threads: int | None = None


def retrain_model(task: RetrainTask, data: DatasetSplits | None = None,
                  on_epoch: Callable[[EpochMetrics], None] | None = None) -> dict[str, Any] | None:
    """Train `task.arch` from scratch with `task.recipe`, test it once, write result.json; returns that result.

    `data` is loaded from `task.data` when not given (a Ray worker loads its own). Returns None when
    `on_epoch` stopped training early.
    """
    if task.threads is not None:
        torch.set_num_threads(max(1, task.threads))
    data = data if data is not None else task.data.load()
    info = data.info
    task = dataclasses.replace(task, data=task.data.resolved(info))
    seed_everything(task.seed)
    check_fits(task.arch, info.shape, select_device(task.device), TRAINING_COPIES)
    model = build_model(task.arch, info.shape, drop_path_rate=task.recipe.drop_path)
    params = sum(parameter.numel() for parameter in model.parameters())
    headline = (f"train   {task.arch.arch_id} ({task.role}, {task.source})  {task.arch.summary()}  {params:,} params  "
                f"-> {task.folder}")
    done = train_in_folder(task, model, data, headline, on_epoch, flops=count_flops(task.arch, info.shape),
                           patch_size=task.arch.patch_size, arch=task.arch.to_dict())
    if done is None:
        return None
    run, result = done
    log.info(f"test    {task.arch.arch_id}: {describe_test(run)}; best checkpoint epoch {run.best_epoch} "
        f"({run.weights} weights), val_acc {run.best_val_acc:.2%}, {run.seconds:.1f}s")
    return result


def train_arch(arch: ArchConfig, data: DataRequest, recipe: Recipe, overrides: dict[str, Any], *,
               folder: Path | None = None, patch_size: int | None = None, seed: int = 0, resume: bool = False,
               device: str = DEFAULT_DEVICE, compile: bool = False, source: str | None = None) -> dict[str, Any]:
    """`nas train`: one architecture trained from scratch into `folder` (default results/train/<arch-id>-<dataset>)
    and tested once, through `retrain_model`. Under torchrun every rank calls this. source: where `arch` came
    from (a preset name or an arch file), for the tables.

    Returns the result (for a finished folder under `resume`: its earlier result). A NaN/inf loss raises
    TrainingDiverged; the last good checkpoint stays.
    """
    if seed < 0:
        raise UsageError(f"--seed {seed}: expected a non-negative integer")
    init_distributed(device)
    loaded = data.load()
    info = loaded.info
    fitted = fit_patch_size(arch, info.img_size, info.patch_size, patch_size)
    if fitted.patch_size != arch.patch_size:
        why = "(--patch-size)" if patch_size is not None else "(override with --patch-size)"
        log.info(f"patch size {arch.patch_size} -> {fitted.patch_size} for {info.name} at {info.img_size} px {why}")
    folder = folder if folder is not None else TRAIN_ROOT / f"{fitted.arch_id}-{info.name}"
    task = RetrainTask(arch=fitted, role="model", source=source or fitted.arch_id, folder=folder, recipe=recipe,
                       overrides=overrides, data=data.resolved(info), seed=seed, resume=resume, device=device,
                       compile=compile)
    to_train, finished = plan([task], info)
    if finished:
        top1 = finished[0].get("top1")
        log.info(f"done    {folder} finished earlier: nothing to train; its one test gave top1 "
            f"{'n/a' if top1 is None else f'{top1:.2%}'}")
        return finished[0]
    test_size = "no" if loaded.test is None else f"{len(loaded.test):,}"
    log.info(f"data    {info.name}: {len(loaded.train):,} train / {len(loaded.val):,} val / {test_size} test at "
        f"{info.img_size} px, {info.num_classes} classes")
    log.info(describe_recipe(recipe, overrides) + f", seed {seed}")
    return retrain_model(to_train[0], loaded)
