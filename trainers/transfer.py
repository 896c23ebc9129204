"""Fine-tune trained checkpoints on the transfer datasets and gather the paper's table: `transfer_run(request)`.

A checkpoint gets a new classifier head; every other weight is loaded strictly. As in the paper, a model is
fine-tuned at the resolution it was trained at (224 px after ImageNet): the transfer set is loaded at the
checkpoint's image size (`pretrained_img_size`), smaller images upsampled once at load. The folder, its
resume key, training, checkpoints, metrics.csv and the one test at the end are `trainers.model_folder`'s, in
<out>/transfer/<arch-id>/<dataset>/; <out>/transfer.csv holds test top-1 per dataset and their average.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_text_atomic
from trainers import checkpoint as ckpt
from trainers.datasets.registry import DataRequest, dataset_names
from trainers.datasets.splits import DatasetSplits
from trainers.engine import TrainingDiverged
from trainers.metrics import EpochMetrics
from trainers.transfer_request import TransferRequest
from trainers.model_folder import RESULT_FILE, TrainingTask, describe_test, plan, read_result, train_in_folder
from trainers.recipe import describe_recipe, get_recipe
from trainers.runtime import init_distributed, main_rank_logger, seed_everything

LEAD_COLUMNS = ["arch_id", "role", "source", "structure", "params"]

# The fresh head starts as timm initialises one (truncated normal, std 0.02; nn.Linear's default is ~5x wider).
HEAD_INIT_STD = 0.02
log = main_rank_logger(__name__)


def load_pretrained(path: str | Path) -> ckpt.Checkpoint:
    """A trained model to fine-tune: a folder means its `best` checkpoint (else `last`); one-line UsageError for a
    missing, corrupt or arch-less checkpoint."""
    checkpoint = ckpt.load_checkpoint(ckpt.trained_checkpoint(path))
    if checkpoint.arch is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its record holds no architecture; expected a "
                         "checkpoint written by nas retrain, nas train or nas transfer")
    return checkpoint


def pretrained_img_size(checkpoint: ckpt.Checkpoint) -> int:
    return int(checkpoint.record["dataset"]["img_size"])


def head_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.get_classifier().parameters())


def transfer_model(checkpoint: ckpt.Checkpoint, num_classes: int, in_chans: int, seed: int,
                   drop_path_rate: float = 0.0) -> nn.Module:
    """The checkpoint's model with all its weights (strict: any missing, extra or reshaped tensor is a UsageError
    naming the file), then a new `num_classes` head (timm's reset_classifier) seeded by `seed`."""
    trained_on = checkpoint.record["dataset"]
    if int(trained_on["in_chans"]) != in_chans:
        raise UsageError(f"checkpoint {checkpoint.weights_path} was trained on {trained_on['in_chans']}-channel "
                         f"images ({trained_on['name']}); the transfer set has {in_chans}: expected a checkpoint "
                         f"trained on {in_chans}-channel images")
    model = checkpoint.build_model(drop_path_rate=drop_path_rate)
    seed_everything(seed)
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    nn.init.trunc_normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return model


@dataclass(frozen=True, kw_only=True)
class TransferTask(TrainingTask):
    """One fine-tune: a pretrained checkpoint (its weights file; arch is its architecture) on one dataset, into
    `folder` (results/<run>/transfer/<arch-id>/<name>). role is 'winner' or 'baseline'; source says where the
    pretrained model came from (its retrain source)."""

    checkpoint: Path

    @property
    def pretrained(self) -> str:
        return str(self.checkpoint.resolve())


def finetune(task: TransferTask, checkpoint: ckpt.Checkpoint, data: DatasetSplits,
             on_epoch: Callable[[EpochMetrics], None] | None = None) -> dict[str, Any] | None:
    """Fine-tune `checkpoint` on `data` (loaded at the checkpoint's image size), test once, write result.json.

    Returns the result, or None when `on_epoch` stopped training early.
    """
    info = data.info
    if info.img_size != pretrained_img_size(checkpoint):
        raise UsageError(f"dataset {info.name} at {info.img_size} px for a checkpoint trained at "
                         f"{pretrained_img_size(checkpoint)} px: expected the checkpoint's image size")
    model = transfer_model(checkpoint, info.num_classes, info.in_chans, task.seed, task.recipe.drop_path)
    params = sum(parameter.numel() for parameter in model.parameters())
    headline = (f"finetune {task.arch.arch_id} ({task.role}, {task.source}) on {info.name} at {info.img_size} px, "
                f"{info.num_classes} classes: {params:,} params -> {task.folder}")
    done = train_in_folder(task, model, data, headline, on_epoch,
                           pretrained_on=checkpoint.record["dataset"]["name"],
                           backbone_params=params - head_params(model))
    if done is None:
        return None
    run, result = done
    log.info(f"test    {task.arch.arch_id} on {info.name}: {describe_test(run)}; best epoch {run.best_epoch}, "
        f"{run.seconds:.1f}s")
    return result


def parse_datasets(text: str) -> list[str]:
    """'cifar10,stl10' -> the transfer sets, in order, without repeats; unknown names are one UsageError."""
    datasets = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in datasets if name not in dataset_names()]
    if unknown or not datasets:
        raise UsageError(f"--datasets {text}: {', '.join(map(repr, unknown)) or 'none given'}; expected names from "
                         f"{', '.join(dataset_names())}")
    return datasets


def data_dirs(values: list[str] | tuple[str, ...], datasets: list[str]) -> dict[str, str | None]:
    """Each dataset's folder from --data-dir values: NAME=DIR for one dataset, a bare DIR as the root for the rest."""
    root, named = None, {}
    for value in values:
        name, separator, folder = value.partition("=")
        if not separator:
            if root is not None:
                raise UsageError(f"--data-dir {value}: a second root (first {root}); expected one root and/or "
                                 "NAME=DIR entries")
            root = value
        elif name not in datasets:
            raise UsageError(f"--data-dir {value}: {name!r} is not among --datasets ({', '.join(datasets)}); "
                             "expected NAME=DIR for one of them")
        else:
            named[name] = folder
    return {name: named.get(name, root) for name in datasets}


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint to fine-tune, with its role and where it came from."""

    checkpoint: ckpt.Checkpoint
    role: str
    source: str

    @property
    def arch_id(self) -> str:
        return self.checkpoint.arch.arch_id


def _source(checkpoint: ckpt.Checkpoint) -> str:
    """The retrain's source (trial id or preset) when the checkpoint sits in a retrain folder, else the folder."""
    folder = checkpoint.weights_path.parent
    if not (folder / RESULT_FILE).is_file():
        return folder.name
    return str(read_result(folder).get("source") or folder.name)


def load_models(checkpoints: list[str], baselines: list[str]) -> list[Pretrained]:
    """Every checkpoint read, and its model built and loaded strictly, before anything trains."""
    models: dict[str, Pretrained] = {}
    for path, role in [(path, "winner") for path in checkpoints] + [(path, "baseline") for path in baselines]:
        checkpoint = load_pretrained(path)
        checkpoint.build_model()  # a checkpoint whose weights do not fit its architecture fails here, first
        model = Pretrained(checkpoint, role, _source(checkpoint))
        if model.arch_id in models:
            raise UsageError(f"checkpoint {path}: the same architecture ({model.arch_id}) as "
                             f"{models[model.arch_id].checkpoint.weights_path}; expected each model once")
        models[model.arch_id] = model
    return list(models.values())


def default_out(checkpoint: ckpt.Checkpoint) -> Path:
    """results/<run> for results/<run>/retrain/<arch-id>/best.json; else the checkpoint folder's parent."""
    folder = checkpoint.weights_path.parent
    return folder.parent.parent if folder.parent.name == "retrain" else folder.parent


def transfer_table(results: list[dict[str, Any]], datasets: list[str]) -> pd.DataFrame:
    """One row per model: test top-1 on each dataset (fractions) and their average (when it has them all)."""
    order = list(dict.fromkeys(datasets + [result["dataset"] for result in results]))
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        row = rows.setdefault(result["arch_id"], {"arch_id": result["arch_id"], "role": result["role"],
                                                  "source": result["source"], "structure": result["structure"],
                                                  "params": result["backbone_params"]})
        row[f"{result['dataset']}_top1"] = result["top1"]
    columns = LEAD_COLUMNS + [f"{name}_top1" for name in order] + ["average_top1"]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    scores = frame[[f"{name}_top1" for name in order]].astype(float)
    frame["average_top1"] = scores.mean(axis=1).where(scores.notna().all(axis=1))
    return frame.sort_values(["role", "average_top1"], ascending=[True, False], na_position="last", kind="stable")


def _finished_results(out: Path) -> list[dict[str, Any]]:
    """Every finished fine-tune under out/transfer/<arch-id>/<dataset>/."""
    return [read_result(path.parent) for path in sorted((out / "transfer").glob(f"*/*/{RESULT_FILE}"))]


@dataclass
class TransferOutcome:
    """The table of this request's models (test top-1 per dataset, average), and the fine-tunes that diverged."""

    table: pd.DataFrame
    datasets: list[str]
    csv_path: Path
    diverged: int


def transfer_run(request: TransferRequest) -> TransferOutcome:
    """Plan every fine-tune (one UsageError before anything is written), run those not finished, test each once.

    Its lines are logged (rank 0 only under torchrun): progress at INFO, a fine-tune whose training diverged at
    ERROR (the others go on)."""
    datasets = parse_datasets(request.datasets)
    folders_of = data_dirs(request.data_dir, datasets)
    recipe = get_recipe(request.recipe, **request.overrides)
    world = init_distributed(request.device)
    models = load_models(list(request.checkpoints), list(request.baseline))
    out = Path(request.out) if request.out is not None else default_out(models[0].checkpoint)
    tasks: list[TransferTask] = []
    for name in datasets:
        for model in models:
            data = DataRequest(name, folders_of[name], request.download, request.val_fraction, request.split_seed,
                               pretrained_img_size(model.checkpoint))
            tasks.append(TransferTask(
                checkpoint=model.checkpoint.weights_path, arch=model.checkpoint.arch, role=model.role,
                source=model.source, folder=out / "transfer" / model.arch_id / name, recipe=recipe,
                overrides=request.overrides, data=data, seed=request.seed, resume=request.resume,
                device=request.device, compile=request.compile))
    to_train, results = plan(tasks)
    if world.active:
        torch.distributed.barrier()  # every rank has read the folders before rank 0 writes to them
    log.info(describe_recipe(recipe, request.overrides) + f", seed {request.seed}")
    log.info(f"models  {len(models)} x {len(datasets)} datasets: {len(to_train)} fine-tunes to run"
        + (f", {len(results)} already finished (skipped)" if results else "") + f" -> {out / 'transfer'}")

    csv_path = out / "transfer.csv"
    diverged = 0
    checkpoints = {model.checkpoint.weights_path: model.checkpoint for model in models}
    loaded: dict[tuple[str, int], DatasetSplits] = {}
    for task in to_train:
        key = (task.data.name, task.data.img_size)
        if key not in loaded:
            loaded.clear()  # one transfer set in memory at a time (CIFAR-10 at 224 px is 7.5 GB as uint8)
            loaded[key] = task.data.load()
        try:
            result = finetune(task, checkpoints[task.checkpoint], loaded[key])
        except TrainingDiverged as error:
            diverged += 1
            log.error(f"{task.arch.arch_id} on {task.data.name}: {error}")
            continue
        results.append(result)
        if world.is_main:
            finished = {(r["arch_id"], r["dataset"]): r for r in _finished_results(out) + results}
            write_text_atomic(csv_path, transfer_table(list(finished.values()), datasets).to_csv(index=False))
    ours = [result for result in results if result["arch_id"] in {model.arch_id for model in models}]
    return TransferOutcome(table=transfer_table(ours, datasets), datasets=datasets, csv_path=csv_path,
                           diverged=diverged)
