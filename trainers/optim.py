"""Optimisation: parameter groups, AdamW, the learning-rate schedule, EMA, mixup, and the train step.

`build_training` makes a model ready to train on a device (DDP, compile, optimizer, schedule, EMA) and
returns the `TrainStep` that `fit` and the throughput benchmark both run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces.ffn import auxiliary_loss
from trainers.recipe import Recipe
from trainers.runtime import Distributed, sync_batchnorm


def no_weight_decay_patterns(model: nn.Module) -> set[str]:
    """Parameter names exempt from weight decay: every module's no_weight_decay() names, and the QKV codes."""
    patterns = {"*.codes", "codes"}
    for prefix, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            patterns.update(f"{prefix}.{name}" if prefix else name for name in names())
    return patterns


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """timm AdamW at the recipe's effective lr with fused kernels; no decay on 1-D params, biases, QKV codes and
    the names modules list in no_weight_decay()."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    def param_groups(module: nn.Module) -> list[dict[str, Any]]:
        return param_groups_weight_decay(module, recipe.weight_decay,
                                         no_weight_decay_list=no_weight_decay_patterns(module))

    return create_optimizer_v2(model, opt="adamw", lr=recipe.effective_lr, weight_decay=recipe.weight_decay,
                               param_group_fn=param_groups, fused=device.type in ("cuda", "cpu"))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> Any:
    """timm's CosineLRScheduler stepped per update: linear warm-up to the effective lr, then cosine to min_lr
    at the last update (or constant). A pure function of the update count, so resume is exact."""
    from timm.scheduler import CosineLRScheduler

    warmup = recipe.warmup_epochs * steps_per_epoch
    after_warmup = max(1, recipe.epochs * steps_per_epoch - warmup)
    lr_min = recipe.min_lr if recipe.schedule == "cosine" else recipe.effective_lr
    return CosineLRScheduler(optimizer, t_initial=after_warmup, lr_min=lr_min, warmup_t=warmup,
                             warmup_lr_init=recipe.warmup_lr, warmup_prefix=True, t_in_epochs=False, cycle_limit=1)


def training_loss(recipe: Recipe) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixes:
        return SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(recipe.label_smoothing)
    return nn.CrossEntropyLoss()


class TrainStep:
    """One optimisation step, the code `fit` and the throughput benchmark both run.

    mixup/cutmix -> forward (bf16 autocast on CUDA) -> loss in float32, plus the model's auxiliary losses
    (`search_spaces.ffn.auxiliary_loss`: the MoE balance loss; the one hook, so search, retrain and transfer
    all train with it) -> backward -> clip -> AdamW -> schedule -> EMA. Returns the detached loss (with the
    auxiliary part) without waiting for the device.
    """

    def __init__(self, forward_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 loss_fn: nn.Module, device: torch.device, mixup: Callable | None = None,
                 grad_clip: float | None = None, scheduler: Any = None, ema: Any = None,
                 random_erasing: Callable | None = None) -> None:
        self.forward_model, self.model, self.optimizer = forward_model, model, optimizer
        self.loss_fn, self.mixup, self.grad_clip = loss_fn, mixup, grad_clip
        self.scheduler, self.ema, self.random_erasing = scheduler, ema, random_erasing
        self.device_type = device.type
        self.autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.num_updates = 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.random_erasing is not None:
            images = self.random_erasing(images)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward_model(images)
        loss = self.loss_fn(logits.float(), targets)
        auxiliary = auxiliary_loss(self.model)
        if auxiliary is not None:
            loss = loss + auxiliary
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.num_updates)
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        return loss.detach()


@dataclass
class Training:
    """A model made ready to train on a device: what the step calls, what evaluation calls, and the step."""

    model: nn.Module
    forward_model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    step: TrainStep
    device: torch.device


def build_training(model: nn.Module, recipe: Recipe, num_classes: int, device: torch.device, *, steps_per_epoch: int,
                   compile: bool = False, world: Distributed = Distributed(), erase_in_step: bool = False) -> Training:
    """Move `model` to the device and build everything around it: DDP, compile, AdamW, schedule, EMA, the step.

    Changes `model` in place: channels-last on CUDA, and under DDP BatchNorm layers that share statistics across
    ranks. Stochastic depth is the model's own (`build_model(..., drop_path_rate=recipe.drop_path)`).
    erase_in_step: random erasing runs on whole batches in the step (on-device data); loaders erase per image in
    their transforms instead.
    """
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing
    from timm.utils import ModelEmaV3

    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if world.active:
        model = sync_batchnorm(model, device)
    optimizer = build_optimizer(model, recipe, device)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema else None
    forward_model: nn.Module = model
    if world.active:
        from torch.nn.parallel import DistributedDataParallel

        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model = model
    if compile:
        forward_model = torch.compile(forward_model)
        eval_model = forward_model if not world.active else torch.compile(model)
    mixup = None
    if recipe.mixes:
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                      switch_prob=recipe.mixup_switch_prob, mode="batch", label_smoothing=recipe.label_smoothing,
                      num_classes=num_classes)
    random_erasing = None
    if erase_in_step and recipe.random_erasing > 0:
        random_erasing = RandomErasing(recipe.random_erasing, mode="pixel", device=device)
    step = TrainStep(forward_model, model, optimizer, loss_fn=training_loss(recipe), device=device, mixup=mixup,
                     grad_clip=recipe.grad_clip, scheduler=scheduler, ema=ema, random_erasing=random_erasing)
    return Training(model, forward_model, eval_model, optimizer, scheduler, ema, step, device)

