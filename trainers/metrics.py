"""One epoch's figures: what the engine reports after each epoch and a checkpoint's record keeps as its history."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EpochMetrics:
    """One epoch. val_* measure the better of the model and its EMA (`weights` says which); with EMA off,
    the model. seconds covers training and evaluation (not the checkpoint write); images_per_s training only."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_top5: float
    lr: float
    seconds: float
    images_per_s: float
    ema_val_acc: float | None = None
    weights: str = "model"
