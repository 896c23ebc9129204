"""Fine-tune a trained checkpoint on a transfer dataset: a new classifier head, every other weight loaded strictly.

As in the paper, a model is fine-tuned at the resolution it was trained at (224 px after ImageNet): the
transfer set is loaded at the checkpoint's image size (`pretrained_img_size`), smaller images upsampled
once at load. Training, checkpoints, metrics.csv and the one test at the end are `train_and_test`'s,
in results/<run>/transfer/<arch-id>/<dataset>/.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import UsageError
from core.files import write_json_atomic, write_text_atomic
from trainers import checkpoint as ckpt
from trainers.data import DatasetSplits
from trainers.engine import EpochMetrics, distributed, seed_everything
from trainers.recipe import Recipe
from trainers.retrain import (ARCH_FILE, RESULT_FILE, DataRequest, scores_of, say_on_main, train_and_test,
                              trained_checkpoint)

# The fresh head starts as timm initialises one (truncated normal, std 0.02; nn.Linear's default is ~5x wider).
HEAD_INIT_STD = 0.02


def load_pretrained(path: str | Path) -> ckpt.Checkpoint:
    """A trained model to fine-tune: a folder means its `best` checkpoint (else `last`); one-line UsageError for a
    missing, corrupt or arch-less checkpoint."""
    checkpoint = ckpt.load_checkpoint(trained_checkpoint(path))
    if checkpoint.arch is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its record holds no architecture; expected a "
                         "checkpoint written by nas retrain, nas train or nas transfer")
    return checkpoint


def pretrained_img_size(checkpoint: ckpt.Checkpoint) -> int:
    return int(checkpoint.record["dataset"]["img_size"])


def head_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.get_classifier().parameters())


def transfer_model(checkpoint: ckpt.Checkpoint, num_classes: int, in_chans: int, seed: int) -> nn.Module:
    """The checkpoint's model with all its weights (strict: any missing, extra or reshaped tensor is a UsageError
    naming the file), then a new `num_classes` head (timm's reset_classifier) seeded by `seed`."""
    trained_on = checkpoint.record["dataset"]
    if int(trained_on["in_chans"]) != in_chans:
        raise UsageError(f"checkpoint {checkpoint.weights_path} was trained on {trained_on['in_chans']}-channel "
                         f"images ({trained_on['name']}); the transfer set has {in_chans}: expected a checkpoint "
                         f"trained on {in_chans}-channel images")
    model = checkpoint.build_model()
    seed_everything(seed)
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    nn.init.trunc_normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return model


@dataclass(frozen=True)
class TransferTask:
    """One fine-tune: a pretrained checkpoint on one dataset, into `folder` (results/<run>/transfer/<arch-id>/<name>).

    role is 'winner' or 'baseline'; source says where the pretrained model came from (its retrain source).
    """

    checkpoint: Path
    role: str
    source: str
    data: DataRequest
    folder: Path
    recipe: Recipe
    overrides: dict[str, Any]
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    compile: bool = False


def finetune(task: TransferTask, checkpoint: ckpt.Checkpoint, data: DatasetSplits,
             on_epoch: Callable[[EpochMetrics], None] | None = None,
             say: Callable[[str], None] = say_on_main) -> dict[str, Any] | None:
    """Fine-tune `checkpoint` on `data` (loaded at the checkpoint's image size), test once, write result.json.

    Returns the result, or None when `on_epoch` stopped training early.
    """
    info = data.info
    if info.img_size != pretrained_img_size(checkpoint):
        raise UsageError(f"dataset {info.name} at {info.img_size} px for a checkpoint trained at "
                         f"{pretrained_img_size(checkpoint)} px: expected the checkpoint's image size")
    arch = checkpoint.arch
    model = transfer_model(checkpoint, info.num_classes, info.in_chans, task.seed)
    params = sum(parameter.numel() for parameter in model.parameters())
    if distributed().is_main:
        write_text_atomic(task.folder / ARCH_FILE, arch.to_json(indent=2) + "\n")
    say(f"finetune {arch.arch_id} ({task.role}, {task.source}) on {info.name} at {info.img_size} px, "
        f"{info.num_classes} classes: {params:,} params -> {task.folder}")
    run = train_and_test(model, data, task.recipe, task.folder, seed=task.seed, resume=task.resume,
                         device=task.device, compile=task.compile, arch=arch, on_epoch=on_epoch, say=say)
    if run is None:
        return None
    result = {
        "arch_id": arch.arch_id, "role": task.role, "source": task.source, "structure": arch.structure,
        "pretrained": str(checkpoint.weights_path.resolve()), "pretrained_on": checkpoint.record["dataset"]["name"],
        "dataset": info.name, "num_classes": info.num_classes, "img_size": info.img_size,
        "params": params, "backbone_params": params - head_params(model), **scores_of(run),
        "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch, "weights": run.weights,
        "epochs": len(run.history), "recipe": task.recipe.name, "overrides": task.overrides,
        "recipe_fields": task.recipe.to_dict(), "val_fraction": task.data.val_fraction,
        "split_seed": task.data.split_seed, "seed": task.seed, "world_size": distributed().world_size,
        "seconds": round(run.seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(task.folder / "best.json"),
    }
    if distributed().is_main:
        write_json_atomic(task.folder / RESULT_FILE, result)
    scores = ("no test split" if run.test is None else
              f"top1 {run.test['acc']:.2%}  top5 {run.test['top5']:.2%}  ({run.test['count']:,} images)")
    say(f"test    {arch.arch_id} on {info.name}: {scores}; best epoch {run.best_epoch}, {run.seconds:.1f}s")
    return result
