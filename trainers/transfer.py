"""Fine-tune one trained checkpoint on one transfer set: `finetune(task, checkpoint, data)`.

A checkpoint gets a new classifier head; every other weight is loaded strictly. As in the paper, a model is
fine-tuned at the resolution it was trained at (224 px after ImageNet): the transfer set is loaded at the
checkpoint's image size (`pretrained_img_size`), smaller images upsampled once at load. The folder, its
resume key, training, checkpoints, metrics.csv and the one test at the end are `trainers.model_folder`'s.
Which models on which sets, into which run folder, and the paper's table are nas/winners/transfer.py's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from qkvnas_core.errors import UsageError
from trainers import checkpoint as ckpt
from trainers.datasets.splits import DatasetSplits
from trainers.metrics import EpochMetrics
from trainers.model_folder import TrainingTask, describe_test, train_in_folder
from trainers.runtime import main_rank_logger, seed_everything

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
