"""Retrain one architecture with a full recipe and test it once: the loop `nas retrain` and `nas transfer` share.

A model trains in its own folder:

    last.* / best.*   the engine's checkpoints (last every epoch, best by validation accuracy)
    metrics.csv       one row per epoch (validation only; rewritten atomically after every epoch)
    arch.json         the architecture as trained (after the patch size met the dataset)
    result.json       written once training ends: the test scores of the best checkpoint, and the run's facts

The test split is evaluated exactly once, after the last epoch, with the weights that scored best on
validation; training never receives it. A folder with result.json is finished; one with checkpoints
but no result.json was interrupted and continues exactly with `resume`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object, write_json_atomic, write_text_atomic
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.cost import count_flops
from search_spaces.presets import fit_patch_size
from trainers import checkpoint as ckpt
from trainers.data import DatasetInfo, DatasetSplits, load_dataset
from trainers.engine import EpochMetrics, describe_epoch, evaluate, fit
from trainers.recipe import Recipe, describe_recipe
from trainers.runtime import distributed, init_distributed, seed_everything

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
ARCH_FILE = "arch.json"
METRICS_COLUMNS = [field.name for field in dataclasses.fields(EpochMetrics)]
RETRAIN_COLUMNS = ["arch_id", "role", "source", "structure", "params", "flops", "top1", "top5", "best_val_acc",
                   "best_epoch", "epochs", "recipe", "overrides", "dataset", "img_size", "patch_size", "seed",
                   "world_size", "seconds"]
# Where `nas train` puts a model when no folder is given: results/train/<arch-id>-<dataset>.
TRAIN_ROOT = Path("results") / "train"


def say_on_main(line: str) -> None:
    """Print on rank 0 only (every rank runs the same code under torchrun)."""
    if distributed().is_main:
        print(line, flush=True)


@dataclass(frozen=True)
class DataRequest:
    """Which dataset to train on and how validation is carved from its training set (plain data: crosses to Ray)."""

    name: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    img_size: int | None = None

    def load(self) -> DatasetSplits:
        return load_dataset(self.name, self.data_dir, download=self.download, val_fraction=self.val_fraction,
                            seed=self.split_seed, img_size=self.img_size)


@dataclass(frozen=True)
class RetrainTask:
    """One model to retrain: everything `retrain_model` needs, picklable so a Ray worker can run it.

    arch is already fitted to the dataset's images; source names where it came from (a trial id, a preset
    or an arch file); overrides are the recipe fields changed from the named recipe (for the tables).
    threads: torch intra-op threads to use (a Ray task's CPU share), or None to leave them.
    """

    arch: ArchConfig
    role: str
    source: str
    folder: Path
    recipe: Recipe
    overrides: dict[str, Any]
    data: DataRequest
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    compile: bool = False
    threads: int | None = None


@dataclass
class FinishedRun:
    """A finished training: its epochs, the best checkpoint's facts and its test scores (None: no test split)."""

    history: list[EpochMetrics]
    best_epoch: int
    best_val_acc: float
    weights: str
    test: dict[str, float] | None
    seconds: float


def folder_state(folder: Path) -> str:
    """'new' (absent or empty), 'finished' (result.json), 'partial' (checkpoints, no result) or 'other' files."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return "new"
    if (folder / RESULT_FILE).is_file():
        return "finished"
    if ckpt.existing_checkpoints(folder):
        return "partial"
    return "other"


def read_result(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / RESULT_FILE,
                            "the result.json a finished retrain writes (delete it to retrain that model)")


def plan_folder(folder: Path, *, resume: bool, recipe: Recipe, seed: int, source: str, asked: dict[str, Any],
                info: DatasetInfo | None = None) -> dict[str, Any] | None:
    """What to do with one model's folder before anything is written: None to train it (new, or interrupted and
    resumable), its result when it finished with the settings `asked` (skipped), or one UsageError."""
    state = folder_state(folder)
    if state != "new" and not resume:
        what = {"finished": "checkpoints of a finished run", "partial": "checkpoints of an interrupted run"}.get(
            state, "files")
        raise UsageError(f"{folder} already holds {what} of {source}: expected --resume to "
                         f"{'skip' if state == 'finished' else 'continue'} it, or another output folder")
    if state == "finished":
        result = read_result(folder)
        differs = [name for name, value in asked.items() if result.get(name) != value]
        if differs:
            raise UsageError(f"{folder} finished with another {', '.join(differs)}: expected the same settings to "
                             "resume, or another output folder")
        return result
    if state == "partial":
        record_path = ckpt.checkpoint_files(folder, "last")[2]
        if record_path.is_file():
            ckpt.check_resumable(read_json_object(record_path, "a checkpoint record"), folder, recipe, seed, info)
    return None


def plan(tasks: list[RetrainTask], info: DatasetInfo) -> tuple[list[RetrainTask], list[dict[str, Any]]]:
    """(models to train, results of models already finished), or one UsageError before anything is written."""
    to_train, finished = [], []
    for task in tasks:
        asked = {"recipe_fields": task.recipe.to_dict(), "dataset": info.name, "img_size": info.img_size,
                 "seed": task.seed, "val_fraction": task.data.val_fraction, "split_seed": task.data.split_seed}
        result = plan_folder(task.folder, resume=task.resume, recipe=task.recipe, seed=task.seed, source=task.source,
                             info=info, asked=asked)
        if result is None:
            to_train.append(task)
        else:
            finished.append(result)
    return to_train, finished


def results_frame(folders: list[Path], columns: list[str], extra: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per result.json found in `folders`, updated by `extra` results (same arch_id), in `columns`;
    baselines first, then the best test top-1, as papers print them."""
    rows: dict[str, dict[str, Any]] = {}
    for folder in folders:
        if (folder / RESULT_FILE).is_file():
            result = read_result(folder)
            rows[str(result.get("arch_id"))] = result
    for result in extra:
        rows[str(result["arch_id"])] = result
    records = [{**row, "overrides": json.dumps(row.get("overrides") or {}, sort_keys=True)} for row in rows.values()]
    return pd.DataFrame(records, columns=columns).sort_values(["role", "top1"], ascending=[True, False],
                                                               na_position="last", kind="stable")


def write_metrics(path: Path, history: list[EpochMetrics]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(metrics) for metrics in history)
    write_text_atomic(path, text.getvalue())


def _earlier_epochs(folder: Path) -> list[EpochMetrics]:
    """The epochs an interrupted run already has (its `last` checkpoint's history), so metrics.csv stays whole."""
    record_path = ckpt.checkpoint_files(folder, "last")[2]
    if not record_path.is_file():
        return []
    record = read_json_object(record_path, "a checkpoint record")
    try:
        return [EpochMetrics(**entry) for entry in record.get("history", [])]
    except TypeError as error:
        raise UsageError(f"{record_path}: corrupt epoch history ({error}); expected a checkpoint record") from None


def train_and_test(model: nn.Module, data: DatasetSplits, recipe: Recipe, folder: Path, *, seed: int, resume: bool,
                   device: str | torch.device, compile: bool = False, arch: ArchConfig | None = None,
                   on_epoch: Callable[[EpochMetrics], None] | None = None,
                   say: Callable[[str], None] = say_on_main) -> FinishedRun | None:
    """Train `model` into `folder` (checkpoints and metrics.csv every epoch), then test the best checkpoint once.

    Returns None when `on_epoch` stopped training early (StopTraining): an unfinished run is never tested.
    Under torchrun every rank calls this; rank 0 alone writes files.
    """
    world = distributed()
    started = time.perf_counter()
    history = _earlier_epochs(folder) if resume else []
    earlier_seconds = sum(metrics.seconds for metrics in history)

    def record(metrics: EpochMetrics) -> None:
        history.append(metrics)
        if world.is_main:
            write_metrics(folder / METRICS_FILE, history)
        say(describe_epoch(metrics, recipe.epochs))
        if on_epoch is not None:
            on_epoch(metrics)

    # Training and validation never receive the test split.
    fitted = fit(model, dataclasses.replace(data, test=None), recipe, device=device, seed=seed, on_epoch=record,
                 checkpoint_dir=folder, resume=resume, arch=arch, compile=compile, progress=world.is_main)
    if fitted.stopped:
        return None
    if world.active:
        dist.barrier()  # rank 0 has written `best`
    best = ckpt.load_checkpoint(folder / "best.json", model)
    test = None
    if data.test is not None:
        test = evaluate(model, data.test, data.info, device=device, batch_size=recipe.batch_size)
    return FinishedRun(history=fitted.history, best_epoch=best.epoch, best_val_acc=float(best.record["best_val_acc"]),
                       weights=str(best.record["weights"]), test=test,
                       seconds=earlier_seconds + time.perf_counter() - started)


def scores_of(run: FinishedRun) -> dict[str, Any]:
    """The test fields of a result: fractions in [0, 1], None without a test split."""
    test = run.test or {}
    return {"top1": test.get("acc"), "top5": test.get("top5"), "test_loss": test.get("loss"),
            "test_images": test.get("count")}


def retrain_model(task: RetrainTask, data: DatasetSplits | None = None,
                  on_epoch: Callable[[EpochMetrics], None] | None = None,
                  say: Callable[[str], None] = say_on_main) -> dict[str, Any] | None:
    """Train `task.arch` from scratch with `task.recipe`, test it once, write result.json; returns that result.

    `data` is loaded from `task.data` when not given (a Ray worker loads its own). Returns None when
    `on_epoch` stopped training early.
    """
    if task.threads is not None:
        torch.set_num_threads(max(1, task.threads))
    data = data if data is not None else task.data.load()
    info = data.info
    world = distributed()
    seed_everything(task.seed)
    model = build_model(task.arch, info.num_classes, info.img_size, info.in_chans,
                        drop_path_rate=task.recipe.drop_path)
    params = sum(parameter.numel() for parameter in model.parameters())
    if world.is_main:
        write_text_atomic(task.folder / ARCH_FILE, task.arch.to_json(indent=2) + "\n")
    say(f"train   {task.arch.arch_id} ({task.role}, {task.source})  {task.arch.summary()}  {params:,} params  "
        f"-> {task.folder}")
    run = train_and_test(model, data, task.recipe, task.folder, seed=task.seed, resume=task.resume,
                         device=task.device, compile=task.compile, arch=task.arch, on_epoch=on_epoch, say=say)
    if run is None:
        return None
    result = {
        "arch_id": task.arch.arch_id, "role": task.role, "source": task.source, "structure": task.arch.structure,
        "params": params, "flops": count_flops(task.arch, info.num_classes, info.img_size, info.in_chans),
        **scores_of(run),
        "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch, "weights": run.weights,
        "epochs": len(run.history), "recipe": task.recipe.name, "overrides": task.overrides,
        "recipe_fields": task.recipe.to_dict(), "dataset": info.name, "num_classes": info.num_classes,
        "img_size": info.img_size, "patch_size": task.arch.patch_size, "val_fraction": task.data.val_fraction,
        "split_seed": task.data.split_seed, "seed": task.seed, "world_size": world.world_size,
        "seconds": round(run.seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": task.arch.to_dict(), "checkpoint": str(task.folder / "best.json"),
    }
    if world.is_main:
        write_json_atomic(task.folder / RESULT_FILE, result)
    scores = ("no test split" if run.test is None else
              f"top1 {run.test['acc']:.2%}  top5 {run.test['top5']:.2%}  ({run.test['count']:,} images)")
    say(f"test    {task.arch.arch_id}: {scores}; best checkpoint epoch {run.best_epoch} ({run.weights} weights), "
        f"val_acc {run.best_val_acc:.2%}, {run.seconds:.1f}s")
    return result


def trained_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint a trained-model path means: a folder's `best` (the weights that were tested), else its
    `last`; a TAG.json / TAG.safetensors file as given. A missing path is a UsageError."""
    path = Path(path)
    if path.is_dir():
        best = ckpt.checkpoint_files(path, "best")[2]
        last = ckpt.checkpoint_files(path, "last")[2]
        if best.is_file():
            return best
        if last.is_file():
            return last
        raise UsageError(f"checkpoint folder {path}: holds no best.json or last.json; expected a folder written by "
                         "nas retrain, nas train or nas transfer")
    if not path.exists():
        raise UsageError(f"checkpoint {path}: not found; expected a checkpoint folder (e.g. "
                         "results/<run>/retrain/<arch-id>) or its best.json")
    return path


def train_arch(arch: ArchConfig, data: DataRequest, recipe: Recipe, overrides: dict[str, Any], *,
               folder: Path | None = None, patch_size: int | None = None, seed: int = 0, resume: bool = False,
               device: str = "auto", compile: bool = False, source: str | None = None,
               say: Callable[[str], None] = say_on_main) -> dict[str, Any]:
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
        say(f"patch size {arch.patch_size} -> {fitted.patch_size} for {info.name} at {info.img_size} px {why}")
    folder = folder if folder is not None else TRAIN_ROOT / f"{fitted.arch_id}-{info.name}"
    task = RetrainTask(arch=fitted, role="model", source=source or fitted.arch_id, folder=folder, recipe=recipe,
                       overrides=overrides, data=data, seed=seed, resume=resume, device=device, compile=compile)
    to_train, finished = plan([task], info)
    if finished:
        top1 = finished[0].get("top1")
        say(f"done    {folder} finished earlier: nothing to train; its one test gave top1 "
            f"{'n/a' if top1 is None else f'{top1:.2%}'}")
        return finished[0]
    test_size = "no" if loaded.test is None else f"{len(loaded.test):,}"
    say(f"data    {info.name}: {len(loaded.train):,} train / {len(loaded.val):,} val / {test_size} test at "
        f"{info.img_size} px, {info.num_classes} classes")
    say(describe_recipe(recipe, overrides) + f", seed {seed}")
    return retrain_model(to_train[0], loaded, say=say)
