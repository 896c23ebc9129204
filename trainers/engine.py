"""The one train/evaluate loop: search trials, retrained winners and transfer fine-tunes all run `fit`.

`fit` trains on data.train and scores the validation split after every epoch; the batches come from
`trainers.batches`, the step from `trainers.optim`, the device and ranks from `trainers.runtime`. On CUDA the
step runs under bf16 autocast with channels-last inputs, fused AdamW and, on request, torch.compile. On CPU
it runs in float32 and the same seed gives the same weights. Under torch.distributed the model is wrapped in
DistributedDataParallel, metrics are all-reduced sums over the whole split, and only rank 0 writes
checkpoints. Accuracy and top-5 are fractions in [0, 1].
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from trainers import checkpoint as ckpt
from trainers.batches import Batches, DeviceBatches, make_batches
from trainers.datasets.splits import DatasetInfo, DatasetSplits, Split
from trainers.metrics import EpochMetrics
from trainers.optim import Training, build_training
from trainers.recipe import Recipe
from trainers.runtime import Distributed, configure_threads, distributed, seed_everything, select_device

# Steps between divergence checks on CUDA; each check waits for the GPU, so not every step.
CUDA_CHECK_EVERY = 50


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step (both 1-based)."""

    def __init__(self, epoch: int, step: int, steps_per_epoch: int, loss: float, checkpoint_note: str) -> None:
        self.epoch, self.step, self.steps_per_epoch, self.loss = epoch, step, steps_per_epoch, loss
        self.checkpoint_note = checkpoint_note
        super().__init__(f"training diverged at epoch {epoch}, step {step} of {steps_per_epoch}: loss is {loss}; "
                         f"{checkpoint_note}")

    def __reduce__(self) -> tuple[type, tuple[int, int, int, float, str]]:
        # Picklable with its own arguments, so it crosses process boundaries (Ray workers) intact.
        return TrainingDiverged, (self.epoch, self.step, self.steps_per_epoch, self.loss, self.checkpoint_note)


class StopTraining(Exception):
    """Raised by an `on_epoch` callback to end `fit` early and cleanly (the epoch is already saved)."""


def describe_epoch(metrics: EpochMetrics, epochs: int) -> str:
    """The one line an epoch prints (nas train, retrain, transfer)."""
    ema = "" if metrics.ema_val_acc is None else f"  ema_acc {metrics.ema_val_acc:6.2%} ({metrics.weights})"
    return (f"epoch {metrics.epoch:>{len(str(epochs))}}/{epochs}  train_loss {metrics.train_loss:.4f}  "
            f"val_loss {metrics.val_loss:.4f}  val_acc {metrics.val_acc:6.2%}  top5 {metrics.val_top5:6.2%}{ema}  "
            f"lr {metrics.lr:.2e}  {metrics.seconds:.1f}s  {metrics.images_per_s:,.0f} img/s")


@dataclass
class FitResult:
    """history covers every epoch of the run, resumed ones included; epochs_run = len(history)."""

    history: list[EpochMetrics]
    best_val_acc: float
    last_val_acc: float
    epochs_run: int
    seconds: float
    stopped: bool = False



@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Batches, *, device: torch.device,
                     world: Distributed = Distributed()) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 over every image of the split, summed across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    for images, labels in batches.epoch(0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            (top[:, 0] == labels).sum().double(),
            (top == labels[:, None]).any(dim=1).sum().double(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
        ])
    if world.active:
        dist.all_reduce(totals)
    model.train(was_training)
    loss_sum, correct, correct5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc": correct / count, "top5": correct5 / count, "count": int(count)}


def evaluate(model: nn.Module, split: Split, info: DatasetInfo, *, device: torch.device | str,
             batch_size: int = 256) -> dict[str, float]:
    """Evaluate `model` (already on `device`) on a whole split: {'loss', 'acc', 'top5', 'count'}."""
    device = select_device(device)
    world = distributed()
    batches = make_batches(split, info, None, device, batch_size=batch_size, train=False, world=world)
    return evaluate_batches(model, batches, device=device, world=world)



def _first_bad_loss(losses: torch.Tensor, world: Distributed) -> tuple[int, float] | None:
    """(index, value) of the first NaN/inf loss in a window; all ranks see the same answer, so none hangs."""
    if world.active:
        losses = losses.clone()
        dist.all_reduce(losses)
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad) == 0:
        return None
    index = int(bad[0, 0])
    return index, float(losses[index])


def train_epoch(training: Training, batches: Batches, epoch: int, *, world: Distributed = Distributed(),
                bar: Any = None, checkpoint_note: str = "no checkpoints were being written",
                max_steps: int | None = None) -> torch.Tensor:
    """One epoch of steps (or its first max_steps): the loop `fit` runs and the benchmark times.

    Returns the per-step losses on the device. Losses are checked for NaN/inf every step on CPU and every
    CUDA_CHECK_EVERY steps on CUDA (each check waits for the device); a bad one raises TrainingDiverged.
    """
    steps = len(batches) if max_steps is None else min(max_steps, len(batches))
    check_every = CUDA_CHECK_EVERY if training.device.type == "cuda" else 1
    training.model.train()
    losses = torch.zeros(steps, device=training.device)
    checked = 0
    for index, (images, labels) in enumerate(batches.epoch(epoch)):
        if index == steps:
            break
        losses[index] = training.step(images, labels)
        if index + 1 - checked >= check_every or index + 1 == steps:
            bad = _first_bad_loss(losses[checked:index + 1], world)
            if bad is not None:
                raise TrainingDiverged(epoch, checked + bad[0] + 1, len(batches), bad[1],
                                       checkpoint_note)
            checked = index + 1
            if bar is not None:
                bar.set_postfix(loss=f"{float(losses[index]):.4f}", refresh=False)
        if bar is not None:
            bar.update(1)
    return losses


def _prepare_device(device: str | torch.device | None, world: Distributed) -> torch.device:
    """The device a run trains on, its threads set, and on CUDA the kernels' autotuning and TF32 matmuls."""
    device = select_device(device)
    configure_threads(device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    return device


def _checkpoint_to_resume(checkpoint_dir: Path | None, resume: bool, recipe: Recipe, seed: int,
                          info: DatasetInfo) -> ckpt.Checkpoint | None:
    """The `last` checkpoint a resumed run continues (checked against its recipe, seed and data), None for a new
    run; checkpoints a new run would overwrite are one UsageError."""
    if checkpoint_dir is None:
        return None
    existing = ckpt.existing_checkpoints(checkpoint_dir)
    if existing and not resume:
        raise UsageError(f"{checkpoint_dir} already holds checkpoints ({', '.join(p.name for p in existing)}): "
                         "expected resume (--resume) to continue them, or another output directory")
    if not (resume and ckpt.checkpoint_files(checkpoint_dir, "last")[2].exists()):
        return None
    checkpoint = ckpt.load_checkpoint(checkpoint_dir, with_state=True)
    ckpt.check_resumable(checkpoint.record, checkpoint_dir, recipe, seed, info)
    return checkpoint


@dataclass
class _Progress:
    """Where a run stands: its epochs so far (a resumed run's included), the best val_acc, the next epoch."""

    history: list[EpochMetrics]
    best_val_acc: float = -1.0
    first_epoch: int = 1

    @classmethod
    def resumed(cls, checkpoint: ckpt.Checkpoint | None, training: Training) -> _Progress:
        """A new run's start, or where the checkpoint left off (the optimizer, schedule and EMA restored into
        `training`)."""
        if checkpoint is None:
            return cls([])
        ckpt.restore_resume_state(checkpoint, optimizer=training.optimizer, scheduler=training.scheduler,
                                  ema_module=None if training.ema is None else training.ema.module)
        training.step.num_updates = int(checkpoint.state_scalars["step"])
        return cls([EpochMetrics(**entry) for entry in checkpoint.history],
                   float(checkpoint.state_scalars["best_val_acc"]), checkpoint.epoch + 1)


def _scored_epoch(training: Training, eval_batches: Batches, epoch: int, losses: torch.Tensor, *, started: float,
                  train_seconds: float, images: int, device: torch.device, world: Distributed) -> EpochMetrics:
    """One epoch's figures: its mean training loss over every rank, the validation scores of the model or, where
    they are better, of its EMA (which weights scored is recorded), the time it took."""
    train_loss = losses.sum()
    if world.active:
        dist.all_reduce(train_loss)
    scores = evaluate_batches(training.eval_model, eval_batches, device=device, world=world)
    scored_weights, ema_val_acc = "model", None
    if training.ema is not None:
        ema_scores = evaluate_batches(training.ema.module, eval_batches, device=device, world=world)
        ema_val_acc = ema_scores["acc"]
        if ema_scores["acc"] > scores["acc"]:
            scores, scored_weights = ema_scores, "ema"
    return EpochMetrics(
        epoch=epoch, train_loss=float(train_loss) / (len(losses) * world.world_size), val_loss=scores["loss"],
        val_acc=scores["acc"], val_top5=scores["top5"], lr=float(training.optimizer.param_groups[0]["lr"]),
        seconds=time.perf_counter() - started, images_per_s=images / max(train_seconds, 1e-9),
        ema_val_acc=ema_val_acc, weights=scored_weights)


def fit(model: nn.Module, data: DatasetSplits, recipe: Recipe, *, device: str | torch.device | None = None,
        seed: int = 0, on_epoch: Callable[[EpochMetrics], None] | None = None, checkpoint_dir: Path | None = None,
        resume: bool = False, arch: ArchConfig | None = None, compile: bool = False, progress: bool = False,
        eval_split: str = "val") -> FitResult:
    """Train `model` on data.train with `recipe`, evaluating `eval_split` after every epoch.

    on_epoch(metrics) runs on every rank after each epoch's evaluation and checkpoint; raising StopTraining
    ends the run cleanly, any other exception propagates. checkpoint_dir gets `last` (with resume state)
    every epoch and `best` when val_acc improves; an existing checkpoint there is an error unless `resume`,
    which continues it exactly (same recipe, seed and data required). A NaN/inf loss raises TrainingDiverged
    naming the epoch and step and leaves the checkpoints untouched. Seeds everything from `seed` at the start
    (the caller seeds model construction itself, e.g. with seed_everything).
    """
    started = time.perf_counter()
    world = distributed()
    device = _prepare_device(device, world)
    if eval_split not in ("val", "test"):
        raise ValueError(f"eval_split={eval_split!r}: expected val or test")
    eval_data = getattr(data, eval_split)
    if eval_data is None:
        raise UsageError(f"dataset {data.info.name!r} has no {eval_split} split to evaluate on")
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    resume_from = _checkpoint_to_resume(checkpoint_dir, resume, recipe, seed, data.info)
    seed_everything(seed)
    if resume_from is not None:
        resume_from.load_into(model)

    channels_last = device.type == "cuda"
    train_batches = make_batches(data.train, data.info, recipe, device, batch_size=recipe.batch_size, train=True,
                                 seed=seed, world=world, channels_last=channels_last)
    eval_batches = make_batches(eval_data, data.info, None, device, batch_size=recipe.batch_size, train=False,
                                world=world, channels_last=channels_last)
    steps_per_epoch = len(train_batches)
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size={recipe.batch_size}: larger than the training split of {data.info.name!r}; "
                         "expected a smaller batch")
    training = build_training(model, recipe, data.info.num_classes, device, steps_per_epoch=steps_per_epoch,
                              compile=compile, world=world, erase_in_step=isinstance(train_batches, DeviceBatches))
    run = _Progress.resumed(resume_from, training)

    stopped = False
    for epoch in range(run.first_epoch, recipe.epochs + 1):
        epoch_started = time.perf_counter()
        bar = _progress_bar(steps_per_epoch, epoch, recipe.epochs, enabled=progress and world.is_main)
        try:
            losses = train_epoch(training, train_batches, epoch, world=world, bar=bar,
                                 checkpoint_note=_checkpoint_note(checkpoint_dir, run.history))
        finally:
            if bar is not None:
                bar.close()
        metrics = _scored_epoch(training, eval_batches, epoch, losses, started=epoch_started,
                                train_seconds=time.perf_counter() - epoch_started,
                                images=steps_per_epoch * recipe.batch_size, device=device, world=world)
        run.history.append(metrics)
        improved = metrics.val_acc > run.best_val_acc
        run.best_val_acc = max(run.best_val_acc, metrics.val_acc)
        if checkpoint_dir is not None and world.is_main:
            _save_epoch(checkpoint_dir, training, metrics, run.history, improved, run.best_val_acc, recipe=recipe,
                        info=data.info, seed=seed, arch=arch)
        if on_epoch is not None:
            try:
                on_epoch(metrics)
            except StopTraining:
                stopped = True
                break

    last_val_acc = run.history[-1].val_acc if run.history else 0.0
    return FitResult(history=run.history, best_val_acc=max(run.best_val_acc, 0.0), last_val_acc=last_val_acc,
                     epochs_run=len(run.history), seconds=time.perf_counter() - started, stopped=stopped)


def _progress_bar(total: int, epoch: int, epochs: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True, disable=None)


def _checkpoint_note(checkpoint_dir: Path | None, history: list[EpochMetrics]) -> str:
    """What a divergence leaves behind: every finished epoch wrote `last`, so the newest one is the good one."""
    if checkpoint_dir is None:
        return "no checkpoints were being written"
    if not history:
        return f"no checkpoint was written to {checkpoint_dir} yet"
    return f"the last good checkpoint (epoch {history[-1].epoch}) is untouched in {checkpoint_dir}"


def _save_epoch(directory: Path, training: Training, metrics: EpochMetrics, history: list[EpochMetrics],
                improved: bool, best_val_acc: float, *, recipe: Recipe, info: DatasetInfo, seed: int,
                arch: ArchConfig | None) -> None:
    """`last` with the resume state every epoch; `best` (the weights that scored) when val_acc improved."""
    records = [asdict(entry) for entry in history]
    ema_weights = None if training.ema is None else training.ema.module.state_dict()

    def record(weights: str) -> dict[str, Any]:
        return ckpt.checkpoint_record(epoch=metrics.epoch, step=training.step.num_updates, seed=seed, recipe=recipe,
                                      dataset=info, arch=arch, history=records, best_val_acc=best_val_acc,
                                      scored_weights=weights)

    state = ckpt.pack_resume_state(optimizer=training.optimizer, scheduler=training.scheduler, ema_weights=ema_weights,
                                   epoch=metrics.epoch, step=training.step.num_updates, best_val_acc=best_val_acc)
    ckpt.save_checkpoint(directory, "last", weights=training.model.state_dict(), record=record("model"), state=state)
    if improved:
        best_weights = ema_weights if metrics.weights == "ema" else training.model.state_dict()
        ckpt.save_checkpoint(directory, "best", weights=best_weights, record=record(metrics.weights))
