"""The Ray Tune function trainable: one search trial trains one architecture and reports every epoch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from ray import tune

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.cost import count_flops
from trainers.datasets.splits import DatasetSplits
from trainers.engine import fit
from trainers.metrics import EpochMetrics
from trainers.recipe import Recipe
from trainers.runtime import seed_everything, select_device


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares; it reaches the trials through `tune.with_parameters`.

    threads: torch intra-op threads of a trial (its CPU share); device: cpu or cuda.
    """

    recipe: Recipe
    threads: int = 1
    device: str = "cpu"


def run_trial(config: dict[str, Any], data: DatasetSplits, settings: TrialSettings) -> None:
    """config (the searcher's, per trial): arch (dict), seed, and flops when the searcher counted them."""
    torch.set_num_threads(max(1, settings.threads))
    arch = ArchConfig.from_dict(config["arch"])
    info = data.info
    flops = config.get("flops") or count_flops(arch, info.shape)
    seed_everything(int(config["seed"]))
    model = build_model(arch, info.shape, drop_path_rate=settings.recipe.drop_path)
    start = time.perf_counter()
    best = 0.0

    def report(metrics: EpochMetrics) -> None:
        nonlocal best
        best = max(best, metrics.val_acc)
        tune.report({
            "val_acc": metrics.val_acc, "best_val_acc": best, "val_loss": metrics.val_loss,
            "train_loss": metrics.train_loss, "epoch": metrics.epoch, "flops": flops,
            "images_per_s": metrics.images_per_s, "trial_seconds": time.perf_counter() - start,
        })

    fit(model, data, settings.recipe, device=select_device(settings.device), seed=int(config["seed"]),
        on_epoch=report)
