"""The one train/evaluate loop: search trials, retrained winners and transfer fine-tunes all run `fit`.

Data paths:
- In-memory splits (TensorSplit: digits, CIFAR, STL-10, synthetic) live on the device as uint8 and are
  batched, cropped, flipped and normalised there on whole batches (`TensorBatches`); no DataLoader.
- Files (FileSplit), and in-memory splits under RandAugment, go through a DataLoader with timm's transforms
  (`LoaderBatches`), one worker per core, pinned memory on CUDA.

Devices: on CUDA the step runs under bf16 autocast with channels-last inputs, fused AdamW and, on request,
torch.compile. On CPU it runs in float32 with one thread per physical core (unless OMP_NUM_THREADS is set),
and the same seed gives the same weights.

Distributed: when torch.distributed is initialised (torchrun; see `init_distributed`) the model is wrapped in
DistributedDataParallel, BatchNorm statistics cover the global batch, each rank takes an equal slice of every
global batch, metrics are all-reduced sums over the whole split, and only rank 0 writes checkpoints.
Accuracy and top-5 are fractions in [0, 1].
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from search_spaces.arch import ArchConfig
from core.errors import UsageError
from trainers import checkpoint as ckpt
from trainers.data import DatasetInfo, DatasetSplits, FileImageDataset, FileSplit, TensorSplit
from trainers.recipe import Recipe

# Datasets whose labels change under a horizontal mirror (a mirrored 2 reads as a 5): never flipped.
MIRROR_SENSITIVE_DATASETS = frozenset({"digits"})
# Steps between divergence checks on CUDA; each check waits for the GPU, so not every step.
CUDA_CHECK_EVERY = 50
# Independent random streams derived from (seed, epoch): data order and augmentation, loader workers.
ORDER_STREAM, WORKER_STREAM = 0, 1


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


@dataclass
class FitResult:
    """history covers every epoch of the run, resumed ones included; epochs_run = len(history)."""

    history: list[EpochMetrics]
    best_val_acc: float
    last_val_acc: float
    epochs_run: int
    seconds: float
    stopped: bool = False


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torch.distributed job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def distributed() -> Distributed:
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                       int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def init_distributed(device: str | None = None) -> Distributed:
    """Join the job torchrun describes in the environment: nccl on CUDA, gloo on CPU. A no-op without torchrun."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or (dist.is_available() and dist.is_initialized()):
        return distributed()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return distributed()


def select_device(name: str | torch.device | None = None) -> torch.device:
    """'auto' or None: CUDA (this rank's GPU under torchrun) when available, else CPU."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r}: CUDA is not available on this machine; expected auto or cpu")
        if device.index is None:
            device = torch.device("cuda", distributed().local_rank if distributed().active else 0)
    elif device.type != "cpu":
        raise UsageError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads slow small matmuls down)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text(), topology.joinpath("core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def configure_threads(device: torch.device, world: Distributed) -> None:
    """CPU: at most one intra-op thread per physical core, shared among this machine's ranks.

    Only ever lowers the count, so a smaller one set by the caller (a search trial's share) or by
    OMP_NUM_THREADS stays.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), physical_cores() // world.local_world_size)))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): call before building a model for reproducible weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random stream of one epoch: resuming at an epoch boundary replays it exactly."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


def allows_hflip(info: DatasetInfo) -> bool:
    return info.name not in MIRROR_SENSITIVE_DATASETS


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth in the backbone's blocks: XCiT's rule (same rate in each block), else timm ViT's (linear)."""
    from timm.layers import DropPath
    from timm.models.xcit import Xcit

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        if rate:
            raise UsageError(f"drop_path={rate}: the model has no `blocks` to apply it to; expected 0")
        return
    for index, block in enumerate(blocks):
        block_rate = rate if isinstance(model, Xcit) else rate * index / max(1, len(blocks) - 1)
        for name in ("drop_path", "drop_path1", "drop_path2", "drop_path3"):
            if hasattr(block, name):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(sum) whose gradient is the all_reduce(sum) of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, for gloo/CPU where SyncBatchNorm is CUDA-only.

    Sums and squared sums are all-reduced with autograd-aware collectives, so the gradients are those of
    one BatchNorm over the whole batch (as SyncBatchNorm's are).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        channels = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), x.new_full((1,), x.numel() / channels)])
        total = _SumAcrossRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels:2 * channels] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Give BatchNorm layers global-batch statistics: torch's SyncBatchNorm on CUDA, CrossRankBatchNorm2d on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats and child.momentum:
                replacement = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum).to(device)
                replacement.load_state_dict(child.state_dict())
                setattr(parent, name, replacement)
    return model


class TensorBatches:
    """An in-memory split held on the device as uint8, served as augmented, normalised float batches.

    Training: a permutation of the split drawn from (seed, epoch); global batch i is permutation[i*B:(i+1)*B]
    (a last partial batch is dropped) and rank r takes its r-th equal slice, so the ranks together see the
    single-process batch. Crop offsets and flips are drawn on the CPU for the whole epoch from the same stream,
    so data and augmentation match across devices and world sizes.
    Evaluation: rank r takes images r, r+W, r+2W, ... in order, every image once.
    """

    def __init__(self, split: TensorSplit, info: DatasetInfo, device: torch.device, *, batch_size: int,
                 train: bool, seed: int = 0, crop_padding: float = 0.0, hflip: float = 0.0,
                 world: Distributed = Distributed(), channels_last: bool = False) -> None:
        if train and batch_size % world.world_size:
            raise UsageError(f"batch_size={batch_size} across {world.world_size} processes: expected a multiple "
                             "of the number of processes")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.device, self.batch_size, self.train, self.seed, self.world = device, batch_size, train, seed, world
        self.img_size = info.img_size
        self.padding = round(crop_padding * info.img_size) if train else 0
        self.hflip = hflip if train and allows_hflip(info) else 0.0
        self.channels_last = channels_last
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add.
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        if train and len(self.labels) < batch_size:
            raise UsageError(f"batch_size={batch_size} but the training split has {len(self.labels)} images: "
                             "expected a batch no larger than the split")

    def __len__(self) -> int:
        if self.train:
            return len(self.labels) // self.batch_size
        return math.ceil(len(range(self.world.rank, len(self.labels), self.world.world_size)) / self.batch_size)

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch = torch.addcmul(self.shift, images.float(), self.scale)
        if batch.shape[-1] != self.img_size or batch.shape[-2] != self.img_size:
            batch = F.interpolate(batch, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                                  align_corners=False)
        return batch

    def _crop_flip(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Pad, then one gather does every image's crop and flip: (B, C, H, W) uint8 in and out."""
        height, width = images.shape[-2:]
        padded = F.pad(images, (self.padding,) * 4) if self.padding else images
        rows = offsets[:, :1] + torch.arange(height, device=images.device)
        columns = torch.arange(width, device=images.device).expand(len(images), width)
        columns = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - columns, columns)
        picked = padded[torch.arange(len(images), device=images.device)[:, None, None], :, rows[:, :, None],
                        columns[:, None, :]]
        return picked.permute(0, 3, 1, 2)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            shard = torch.arange(self.world.rank, len(self.labels), self.world.world_size, device=self.device)
            for start in range(0, len(shard), self.batch_size):
                index = shard[start:start + self.batch_size]
                yield self._to_float(self.images[index]), self.labels[index]
            return
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, ORDER_STREAM))
        steps = len(self)
        order = torch.randperm(len(self.labels), generator=generator)[:steps * self.batch_size].to(self.device)
        augment = self.padding > 0 or self.hflip > 0
        if augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (steps * self.batch_size, 2), generator=generator)
            flips = torch.rand(steps * self.batch_size, generator=generator) < self.hflip
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        per_rank = self.batch_size // self.world.world_size
        for step in range(steps):
            start = step * self.batch_size + self.world.rank * per_rank
            picked = slice(start, start + per_rank)
            images = self.images[order[picked]]
            if augment:
                images = self._crop_flip(images, offsets[picked], flips[picked])
            yield self._to_float(images), self.labels[order[picked]]


class TensorImageDataset(torch.utils.data.Dataset):
    """An in-memory split as PIL images through a transform, for timm's PIL augmentations (RandAugment)."""

    def __init__(self, split: TensorSplit, transform: Callable[[Any], torch.Tensor]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        pixels = self.split.images[index].permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        return self.transform(image), int(self.split.labels[index])


def posterize(image: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize op, except that 0 bits gives a black image as it did before Pillow began refusing 0 bits
    (timm asks for 0 at RandAugment magnitude 10, which 'mstd0.5' reaches)."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def image_transform(info: DatasetInfo, recipe: Recipe | None, train: bool) -> Callable[[Any], torch.Tensor]:
    """timm's transforms: RandomResizedCrop, flip, RandAugment, random erasing for training; resize + centre crop."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    if not train or recipe is None:
        return create_transform(info.img_size, is_training=False, interpolation="bicubic", mean=info.mean,
                                std=info.std)
    transform = create_transform(
        info.img_size, is_training=True, hflip=recipe.hflip if allows_hflip(info) else 0.0, color_jitter=None,
        auto_augment=recipe.randaugment, interpolation="bicubic", mean=info.mean, std=info.std,
        re_prob=recipe.random_erasing, re_mode="pixel", re_count=1)
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
    return transform


class LoaderBatches:
    """A dataset read through a DataLoader: shuffled from (seed, epoch), or sharded per rank under DDP.

    Workers restart each epoch (no persistent workers) so their random streams, seeded from (seed, epoch, rank),
    replay exactly on resume. Evaluation shards are rank-strided and unpadded, so metrics cover each image once.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, device: torch.device, *, batch_size: int, train: bool,
                 seed: int = 0, world: Distributed = Distributed(), repeated_aug: bool = False,
                 workers: int | None = None, channels_last: bool = False) -> None:
        if train and batch_size % world.world_size:
            raise UsageError(f"batch_size={batch_size} across {world.world_size} processes: expected a multiple "
                             "of the number of processes")
        self.dataset, self.device, self.train, self.seed, self.world = dataset, device, train, seed, world
        self.per_rank = batch_size // world.world_size if train else batch_size
        self.repeated_aug = repeated_aug and world.active
        self.workers = physical_cores() // world.local_world_size if workers is None else workers
        self.channels_last = channels_last

    def _sampler(self, epoch: int) -> torch.utils.data.Sampler:
        from timm.data.distributed_sampler import RepeatAugSampler
        from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

        if not self.train:
            return SequentialSampler(range(self.world.rank, len(self.dataset), self.world.world_size))
        if self.world.active:
            sampler = (RepeatAugSampler(self.dataset, self.world.world_size, self.world.rank) if self.repeated_aug else
                       DistributedSampler(self.dataset, self.world.world_size, self.world.rank, seed=self.seed,
                                          drop_last=True))
            sampler.set_epoch(epoch)
            return sampler
        return RandomSampler(self.dataset, generator=torch.Generator().manual_seed(
            stream_seed(self.seed, epoch, ORDER_STREAM)))

    def __len__(self) -> int:
        if self.train:
            return len(self._sampler(0)) // self.per_rank
        return math.ceil(len(range(self.world.rank, len(self.dataset), self.world.world_size)) / self.per_rank)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self._sampler(epoch)
        dataset = self.dataset
        if not self.train:
            dataset = torch.utils.data.Subset(self.dataset, range(self.world.rank, len(self.dataset),
                                                                  self.world.world_size))
            sampler = None
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.per_rank, sampler=sampler, drop_last=self.train, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(
                stream_seed(self.seed, epoch, WORKER_STREAM + self.world.rank)))
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True, memory_format=memory_format),
                   labels.to(self.device, non_blocking=True))


Batches = TensorBatches | LoaderBatches


def make_batches(split: TensorSplit | FileSplit, info: DatasetInfo, recipe: Recipe | None, device: torch.device, *,
                 batch_size: int, train: bool, seed: int = 0, world: Distributed = Distributed(),
                 channels_last: bool = False, workers: int | None = None) -> Batches:
    """The fastest path for a split: on-device tensors unless it is files or needs PIL RandAugment."""
    if isinstance(split, TensorSplit) and (not train or recipe is None or recipe.randaugment is None):
        return TensorBatches(split, info, device, batch_size=batch_size, train=train, seed=seed,
                             crop_padding=recipe.crop_padding if recipe and train else 0.0,
                             hflip=recipe.hflip if recipe and train else 0.0, world=world,
                             channels_last=channels_last)
    transform = image_transform(info, recipe, train)
    dataset = (TensorImageDataset(split, transform) if isinstance(split, TensorSplit)
               else FileImageDataset(split, transform))
    return LoaderBatches(dataset, device, batch_size=batch_size, train=train, seed=seed, world=world,
                         repeated_aug=bool(recipe and recipe.repeated_aug), workers=workers,
                         channels_last=channels_last)


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
    from timm.optim import create_optimizer_v2
    from timm.optim._param_groups import param_groups_weight_decay

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

    mixup/cutmix -> forward (bf16 autocast on CUDA) -> loss in float32 -> backward -> clip -> AdamW ->
    schedule -> EMA. Returns the detached loss without waiting for the device.
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

    Changes `model` in place: stochastic depth from the recipe, channels-last on CUDA, and under DDP BatchNorm
    layers that share statistics across ranks. erase_in_step: random erasing runs on whole batches in the step
    (on-device data); loaders erase per image in their transforms instead.
    """
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing
    from timm.utils import ModelEmaV3

    set_drop_path(model, recipe.drop_path)
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


def evaluate(model: nn.Module, split: TensorSplit | FileSplit, info: DatasetInfo, *, device: torch.device | str,
             batch_size: int = 256) -> dict[str, float]:
    """Evaluate `model` (already on `device`) on a whole split: {'loss', 'acc', 'top5', 'count'}."""
    device = select_device(device)
    world = distributed()
    batches = make_batches(split, info, None, device, batch_size=batch_size, train=False, world=world)
    return evaluate_batches(model, batches, device=device, world=world)


def _check_resumable(checkpoint: ckpt.Checkpoint, recipe: Recipe, seed: int, info: DatasetInfo) -> None:
    saved = checkpoint.recipe
    changed = [f"{name} ({getattr(saved, name)!r} saved, {getattr(recipe, name)!r} now)"
               for name in recipe.to_dict() if getattr(saved, name) != getattr(recipe, name)]
    if changed:
        raise UsageError(f"cannot resume {checkpoint.weights_path} with another recipe: {', '.join(changed)}; "
                         "expected the recipe it was started with")
    if checkpoint.record["seed"] != seed:
        raise UsageError(f"cannot resume {checkpoint.weights_path} with seed {seed}: it was started with seed "
                         f"{checkpoint.record['seed']}")
    if checkpoint.record["dataset"] != json.loads(json.dumps(asdict(info))):
        raise UsageError(f"cannot resume {checkpoint.weights_path} on dataset {info.name!r} as loaded now: it was "
                         f"trained on {checkpoint.record['dataset'].get('name')!r} with other settings")


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
                bar: Any = None, checkpoint_dir: Path | None = None, max_steps: int | None = None) -> torch.Tensor:
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
                                       _checkpoint_note(checkpoint_dir))
            checked = index + 1
            if bar is not None:
                bar.set_postfix(loss=f"{float(losses[index]):.4f}", refresh=False)
        if bar is not None:
            bar.update(1)
    return losses


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
    device = select_device(device)
    world = distributed()
    configure_threads(device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    if eval_split not in ("val", "test"):
        raise UsageError(f"eval_split={eval_split!r}: expected val or test")
    eval_data = getattr(data, eval_split)
    if eval_data is None:
        raise UsageError(f"dataset {data.info.name!r} has no {eval_split} split to evaluate on")
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    resume_from = None
    if checkpoint_dir is not None:
        existing = ckpt.existing_checkpoints(checkpoint_dir)
        if existing and not resume:
            raise UsageError(f"{checkpoint_dir} already holds checkpoints ({', '.join(p.name for p in existing)}): "
                             "expected resume (--resume) to continue them, or another output directory")
        if resume and ckpt.checkpoint_files(checkpoint_dir, "last")[2].exists():
            resume_from = ckpt.load_checkpoint(checkpoint_dir, with_state=True)
            _check_resumable(resume_from, recipe, seed, data.info)
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
                              compile=compile, world=world, erase_in_step=isinstance(train_batches, TensorBatches))

    history: list[EpochMetrics] = []
    best_val_acc = -1.0
    first_epoch = 1
    if resume_from is not None:
        ckpt.restore_resume_state(resume_from, optimizer=training.optimizer, scheduler=training.scheduler,
                                  ema_module=None if training.ema is None else training.ema.module)
        training.step.num_updates = int(resume_from.state_scalars["step"])
        best_val_acc = float(resume_from.state_scalars["best_val_acc"])
        history = [EpochMetrics(**entry) for entry in resume_from.history]
        first_epoch = resume_from.epoch + 1

    stopped = False
    for epoch in range(first_epoch, recipe.epochs + 1):
        epoch_started = time.perf_counter()
        bar = _progress_bar(steps_per_epoch, epoch, recipe.epochs, enabled=progress and world.is_main)
        try:
            losses = train_epoch(training, train_batches, epoch, world=world, bar=bar, checkpoint_dir=checkpoint_dir)
        finally:
            if bar is not None:
                bar.close()
        train_seconds = time.perf_counter() - epoch_started
        train_loss = losses.sum()
        if world.active:
            dist.all_reduce(train_loss)
        train_loss = float(train_loss) / (steps_per_epoch * world.world_size)

        scores = evaluate_batches(training.eval_model, eval_batches, device=device, world=world)
        scored_weights, ema_val_acc = "model", None
        if training.ema is not None:
            ema_scores = evaluate_batches(training.ema.module, eval_batches, device=device, world=world)
            ema_val_acc = ema_scores["acc"]
            if ema_scores["acc"] > scores["acc"]:
                scores, scored_weights = ema_scores, "ema"
        metrics = EpochMetrics(
            epoch=epoch, train_loss=train_loss, val_loss=scores["loss"], val_acc=scores["acc"],
            val_top5=scores["top5"], lr=float(training.optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - epoch_started,
            images_per_s=steps_per_epoch * recipe.batch_size / max(train_seconds, 1e-9), ema_val_acc=ema_val_acc,
            weights=scored_weights)
        history.append(metrics)
        improved = metrics.val_acc > best_val_acc
        best_val_acc = max(best_val_acc, metrics.val_acc)
        if checkpoint_dir is not None and world.is_main:
            _save_epoch(checkpoint_dir, training, metrics, history, improved, best_val_acc, recipe=recipe,
                        info=data.info, seed=seed, arch=arch)
        if on_epoch is not None:
            try:
                on_epoch(metrics)
            except StopTraining:
                stopped = True
                break

    last_val_acc = history[-1].val_acc if history else 0.0
    return FitResult(history=history, best_val_acc=max(best_val_acc, 0.0), last_val_acc=last_val_acc,
                     epochs_run=len(history), seconds=time.perf_counter() - started, stopped=stopped)


def _progress_bar(total: int, epoch: int, epochs: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True, disable=None)


def _checkpoint_note(checkpoint_dir: Path | None) -> str:
    if checkpoint_dir is None:
        return "no checkpoints were being written"
    last = ckpt.checkpoint_files(checkpoint_dir, "last")[2]
    if not last.exists():
        return f"no checkpoint was written to {checkpoint_dir} yet"
    return f"the last good checkpoint (epoch {json.loads(last.read_text())['epoch']}) is untouched in {checkpoint_dir}"


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
