"""What follows a search, second: fine-tune trained checkpoints on the transfer sets and gather the paper's table,
`transfer_run(request)`, as `nas transfer` asks.

Each (model, dataset) fine-tunes in <out>/transfer/<arch-id>/<dataset>/ (trainers/transfer.py's `finetune`); <out>
is the run folder a retrained checkpoint belongs to (or --out), and its transfer.csv holds test top-1 per dataset
and their average. RunFolder (nas/runs/results.py) names both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_text_atomic
from nas.runs.results import RunFolder
from nas.settings.requests import TransferRequest
from trainers import checkpoint as ckpt
from trainers.datasets.registry import DataRequest, dataset_names
from trainers.datasets.splits import DatasetSplits
from trainers.engine import TrainingDiverged
from trainers.model_folder import RESULT_FILE, plan, read_result
from trainers.recipe import describe_recipe, get_recipe
from trainers.runtime import init_distributed, main_rank_logger
from trainers.transfer import TransferTask, finetune, load_pretrained, pretrained_img_size

LEAD_COLUMNS = ["arch_id", "role", "source", "structure", "params"]
log = main_rank_logger(__name__)


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
    run = RunFolder.of_model(folder)
    return run.path if run is not None else folder.parent


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
    return [read_result(folder) for folder in RunFolder(out).transfer_results()]


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
                source=model.source, folder=RunFolder(out).transfer_folder(model.arch_id, name), recipe=recipe,
                overrides=request.overrides, data=data, seed=request.seed, resume=request.resume,
                device=request.device, compile=request.compile))
    to_train, results = plan(tasks)
    if world.active:
        torch.distributed.barrier()  # every rank has read the folders before rank 0 writes to them
    log.info(describe_recipe(recipe, request.overrides) + f", seed {request.seed}")
    log.info(f"models  {len(models)} x {len(datasets)} datasets: {len(to_train)} fine-tunes to run"
        + (f", {len(results)} already finished (skipped)" if results else "") + f" -> {out}")

    csv_path = RunFolder(out).transfer_file
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
