"""The Ray Tune function trainable: one search trial trains one architecture and reports every epoch."""
from __future__ import annotations

import time
from typing import Any

import torch
from ray import tune

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.cost import count_flops
from trainers.data import DatasetSplits
from trainers.engine import EpochMetrics, fit, seed_everything, select_device
from trainers.recipe import get_recipe


def run_trial(config: dict[str, Any], data: DatasetSplits) -> None:
    """config: arch (dict), seed, epochs, recipe, recipe_overrides, threads, device; data comes from the object store."""
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    arch = ArchConfig.from_dict(config["arch"])
    info = data.info
    recipe = get_recipe(config.get("recipe", "proxy"), epochs=config["epochs"], **config.get("recipe_overrides", {}))
    flops = config.get("flops") or count_flops(arch, info.num_classes, info.img_size, info.in_chans)
    seed_everything(int(config["seed"]))
    model = build_model(arch, info.num_classes, info.img_size, info.in_chans)
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

    fit(model, data, recipe, device=select_device(config.get("device", "cpu")), seed=int(config["seed"]),
        on_epoch=report)
