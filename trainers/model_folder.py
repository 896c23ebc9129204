"""One model trained in its own folder and tested once: the folder's files, the resume key, the result record and
the loop that `nas train`, `nas retrain` (`trainers.from_scratch`) and `nas transfer` (`trainers.transfer`) share.

    last.* / best.*   the engine's checkpoints (last every epoch, best by validation accuracy)
    metrics.csv       one row per epoch (validation only; rewritten atomically after every epoch)
    arch.json         the architecture as trained (after the patch size met the dataset), with its data_shape
    settings.json     the resume key, written before the first epoch
    result.json       written once training ends: the test scores of the best checkpoint, the key and the run's facts

The test split is evaluated exactly once, after the last epoch, with the weights that scored best on
validation; training never receives it. A folder with result.json is finished; one with checkpoints
but no result.json was interrupted and continues exactly with `resume`. Either is taken up again only
with the same resume key: everything besides the folder, the names and the hardware that decides what
the model learns.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
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
from qkvnas_core.files import check_json_fields, read_json_object, write_json_atomic, write_text_atomic
from search_spaces.arch import ArchConfig
from search_spaces.model_tools.device import DEFAULT_DEVICE
from search_spaces.shape import DataShape
from trainers import checkpoint as ckpt
from trainers.datasets.registry import DataRequest
from trainers.datasets.splits import DatasetInfo, DatasetSplits
from trainers.engine import describe_epoch, evaluate, fit
from trainers.holdout import SPLIT_VERSION
from trainers.metrics import EpochMetrics
from trainers.recipe import Recipe
from trainers.runtime import distributed, main_rank_logger

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
ARCH_FILE = "arch.json"
KEY_FILE = "settings.json"
METRICS_COLUMNS = [field.name for field in dataclasses.fields(EpochMetrics)]
log = main_rank_logger(__name__)  # the headline and each epoch's line, on rank 0 under torchrun


@dataclass(frozen=True, kw_only=True)
class TrainingTask:
    """What every model trained into its own folder needs; `RetrainTask` and `TransferTask` add their own.

    arch is already fitted to the images; data.img_size is the size the images are trained at (resolved, not
    None); source names where the model came from; overrides are the recipe fields changed from the named
    recipe (for the tables).
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
    device: str = DEFAULT_DEVICE
    compile: bool = False
    progress_bar: bool = True  # tqdm's per-epoch bar, on a terminal only; the Python API turns it off

    @property
    def pretrained(self) -> str | None:
        """The checkpoint whose weights the model starts from; None: from scratch."""
        return None


@dataclass(frozen=True)
class ResumeKey:
    """Everything that decides what a model learns, besides the code: a finished folder is skipped, and an
    interrupted one continued, only when it was started with the same key."""

    arch_id: str
    pretrained: str | None
    recipe_fields: dict[str, Any]
    dataset: str
    img_size: int
    val_fraction: float
    split_seed: int
    split_version: int
    seed: int
    image_cache: bool = False  # the images read from the image cache (the on-device augmentation), not the files

    def as_json(self) -> dict[str, Any]:
        """The key as result.json and settings.json hold it (tuples as lists), so it compares with them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def resume_key(task: TrainingTask) -> ResumeKey:
    """The one builder of the key, for every kind of task (retrain, train, transfer)."""
    if task.data.img_size is None:
        raise ValueError(f"{task.folder}: the task's data request has no resolved img_size")
    return ResumeKey(arch_id=task.arch.arch_id, pretrained=task.pretrained, recipe_fields=task.recipe.to_dict(),
                     dataset=task.data.name, img_size=task.data.img_size, val_fraction=task.data.val_fraction,
                     split_seed=task.data.split_seed, split_version=SPLIT_VERSION, seed=task.seed,
                     image_cache=task.data.image_cache)


def folder_state(folder: Path) -> str:
    """'new' (absent or empty), 'finished' (result.json), 'partial' (checkpoints, no result) or 'other' files."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return "new"
    if (folder / RESULT_FILE).is_file():
        return "finished"
    if ckpt.existing_checkpoints(folder):
        return "partial"
    return "other"


# What the tables and later commands read of a result.json (`result_record`), with its JSON type.
RESULT_FIELDS = {"arch_id": str, "role": str, "source": str, "structure": str, "params": int, "flops": int | None,
                 "backbone_params": int | None, "top1": float | None, "top5": float | None, "best_val_acc": float,
                 "best_epoch": int, "epochs": int, "recipe": str, "overrides": dict, "dataset": str,
                 "seed": int, "world_size": int, "seconds": float}
FRACTION_FIELDS = ("top1", "top5", "best_val_acc")
NON_NEGATIVE_FIELDS = ("params", "flops", "backbone_params", "best_epoch", "epochs", "seed", "world_size", "seconds")


def read_result(folder: Path) -> dict[str, Any]:
    """A finished model's result.json, each field the tables read present, of its JSON type and in range."""
    path = folder / RESULT_FILE
    expected = "the result.json a finished train, retrain or transfer writes (delete it to train that model again)"
    result = read_json_object(path, expected)
    try:
        check_json_fields(result, RESULT_FIELDS)
        for name in FRACTION_FIELDS:
            if result.get(name) is not None and not 0 <= result[name] <= 1:
                raise UsageError(f"{name}={result[name]!r}: expected a fraction from 0 to 1")
        for name in NON_NEGATIVE_FIELDS:
            if result.get(name) is not None and result[name] < 0:
                raise UsageError(f"{name}={result[name]!r}: expected a non-negative number")
    except UsageError as error:
        raise UsageError(f"{path}: {error}; expected {expected}") from None
    return result


def _differences(key: ResumeKey, recorded: dict[str, Any]) -> list[str]:
    """The fields of `key` a recorded one differs in. A field an older qkvnas did not record is at its default, and
    the recipe is compared as a Recipe reads it (a recipe field added since is at its default)."""
    defaults = {item.name: item.default for item in dataclasses.fields(ResumeKey)
                if item.default is not dataclasses.MISSING}
    differs = []
    for name, value in key.as_json().items():
        was = recorded.get(name, defaults.get(name))
        if name == "recipe_fields" and isinstance(was, dict):
            try:
                was = Recipe.from_dict(was).to_dict()
            except UsageError:
                pass  # a recipe this version cannot read differs
        if was != value:
            differs.append(name)
    return differs


def plan_folder(task: TrainingTask, info: DatasetInfo | None = None) -> dict[str, Any] | None:
    """What to do with one model's folder before anything is written: None to train it (new, or interrupted and
    resumable), its result when it finished with the task's resume key (skipped), or one UsageError.
    info, when given, is the dataset as loaded now, which an interrupted run's checkpoint must match."""
    folder, source = task.folder, task.source
    state = folder_state(folder)
    if state != "new" and not task.resume:
        what = {"finished": "checkpoints of a finished run", "partial": "checkpoints of an interrupted run"}.get(
            state, "files")
        raise UsageError(f"{folder} already holds {what} of {source}: expected --resume to "
                         f"{'skip' if state == 'finished' else 'continue'} it, or another output folder")
    key = resume_key(task)
    if state == "finished":
        result = read_result(folder)
        differs = _differences(key, result)
        if differs:
            raise UsageError(f"{folder} finished with another {', '.join(differs)}: expected the same settings to "
                             "resume, or another output folder")
        return result
    if state == "partial":
        if not (folder / KEY_FILE).is_file():
            raise UsageError(f"{folder} holds an interrupted run without {KEY_FILE} (started by an older qkvnas, "
                             "whose validation split differs): expected another output folder")
        differs = _differences(key, read_json_object(folder / KEY_FILE, "the settings an interrupted run started with"))
        if differs:
            raise UsageError(f"cannot resume {folder}: it was started with another {', '.join(differs)}; expected "
                             "the same settings to continue it, or another output folder")
        record_path = ckpt.checkpoint_files(folder, "last")[2]
        if record_path.is_file():
            ckpt.check_resumable(read_json_object(record_path, "a checkpoint record"), folder, task.recipe, task.seed,
                                 info)
    return None


def plan(tasks: list[TrainingTask], info: DatasetInfo | None = None
         ) -> tuple[list[TrainingTask], list[dict[str, Any]]]:
    """(models to train, results of models already finished), or one UsageError before anything is written."""
    to_train, finished = [], []
    for task in tasks:
        result = plan_folder(task, info)
        if result is None:
            to_train.append(task)
        else:
            finished.append(result)
    return to_train, finished


def start_folder(task: TrainingTask, shape: DataShape) -> None:
    """arch.json (with the data shape trained at) and settings.json, before the first epoch (rank 0 alone
    writes)."""
    if distributed().is_main:
        write_text_atomic(task.folder / ARCH_FILE, task.arch.to_json(indent=2, shape=shape) + "\n")
        write_json_atomic(task.folder / KEY_FILE, resume_key(task).as_json())


def results_frame(folders: list[Path], columns: list[str], extra: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per result.json found in `folders`, updated by `extra` results (same arch_id and seed), in `columns`
    (arch_id, role, top1 and seed among them); baselines first, then the best mean test top-1, as papers print
    them."""
    rows: dict[tuple[str, Any], dict[str, Any]] = {}
    for folder in folders:
        if (folder / RESULT_FILE).is_file():
            result = read_result(folder)
            rows[str(result.get("arch_id")), result.get("seed")] = result
    for result in extra:
        rows[str(result["arch_id"]), result.get("seed")] = result
    records = [{**row, "overrides": json.dumps(row.get("overrides") or {}, sort_keys=True)} for row in rows.values()]
    frame = pd.DataFrame(records, columns=columns)
    # A model's seeds stay together, models ordered by their mean top-1.
    order = frame.assign(model_top1=frame.groupby("arch_id")["top1"].transform("mean")).sort_values(
        ["role", "model_top1", "arch_id", "seed"], ascending=[True, False, True, True], na_position="last",
        kind="stable").index
    return frame.loc[order]


@dataclass
class FinishedRun:
    """A finished training: its epochs, the best checkpoint's facts and its test scores (None: no test split)."""

    history: list[EpochMetrics]
    best_epoch: int
    best_val_acc: float
    weights: str
    test: dict[str, float] | None
    seconds: float


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
                   progress_bar: bool = True) -> FinishedRun | None:
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
        log.info(describe_epoch(metrics, recipe.epochs))
        if on_epoch is not None:
            on_epoch(metrics)

    # Training and validation never receive the test split.
    fitted = fit(model, dataclasses.replace(data, test=None), recipe, device=device, seed=seed, on_epoch=record,
                 checkpoint_dir=folder, resume=resume, arch=arch, compile=compile,
                 progress=progress_bar and world.is_main)
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


def result_record(task: TrainingTask, info: DatasetInfo, run: FinishedRun, params: int,
                  **extra: Any) -> dict[str, Any]:
    """result.json of any task: the resume key, the model, its test scores (fractions in [0, 1], None without a
    test split) and the run's facts; `extra` adds the fields of one kind of task."""
    test = run.test or {}
    return {
        "arch_id": task.arch.arch_id, "role": task.role, "source": task.source, "structure": task.arch.structure,
        "params": params, "top1": test.get("acc"), "top5": test.get("top5"), "test_loss": test.get("loss"),
        "test_images": test.get("count"), "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch,
        "weights": run.weights, "epochs": len(run.history), "recipe": task.recipe.name, "overrides": task.overrides,
        **resume_key(task).as_json(), "num_classes": info.num_classes, "world_size": distributed().world_size,
        "seconds": round(run.seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(task.folder / "best.json"), **extra,
    }


def finish_folder(task: TrainingTask, result: dict[str, Any]) -> None:
    """result.json: the folder is finished (rank 0 alone writes)."""
    if distributed().is_main:
        write_json_atomic(task.folder / RESULT_FILE, result)


def train_in_folder(task: TrainingTask, model: nn.Module, data: DatasetSplits, headline: str,
                    on_epoch: Callable[[EpochMetrics], None] | None = None,
                    **extra: Any) -> tuple[FinishedRun, dict[str, Any]] | None:
    """The steps every task shares: open its folder, train and test once, write result.json (with `extra`).

    Returns the run and its result, or None when `on_epoch` stopped training early.
    """
    start_folder(task, data.info.shape)
    log.info(headline)
    run = train_and_test(model, data, task.recipe, task.folder, seed=task.seed, resume=task.resume,
                         device=task.device, compile=task.compile, arch=task.arch, on_epoch=on_epoch,
                         progress_bar=task.progress_bar)
    if run is None:
        return None
    params = sum(parameter.numel() for parameter in model.parameters())
    result = result_record(task, data.info, run, params, **extra)
    finish_folder(task, result)
    return run, result


def describe_test(run: FinishedRun) -> str:
    """The one test's scores for the log line."""
    if run.test is None:
        return "no test split"
    return f"top1 {run.test['acc']:.2%}  top5 {run.test['top5']:.2%}  ({run.test['count']:,} images)"
