"""Batches for the training loop: in-memory splits augmented on the device, or files through a DataLoader.

- In-memory splits (TensorSplit: digits, CIFAR, STL-10, synthetic) live on the device as uint8 and are
  batched, cropped, flipped and normalised there on whole batches (`TensorBatches`); no DataLoader.
- Files (FileSplit), and in-memory splits under RandAugment, go through a DataLoader with timm's transforms
  (`LoaderBatches`), one worker per core, pinned memory on CUDA.

Under torch.distributed each rank takes an equal slice of every global batch, and evaluation shards cover
every image once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from qkvnas_core.errors import UsageError
from trainers.data import DatasetInfo, FileImageDataset, FileSplit, TensorSplit
from trainers.recipe import Recipe
from trainers.runtime import Distributed, physical_cores, stream_seed

# Datasets whose labels change under a horizontal mirror (a mirrored 2 reads as a 5): never flipped.
MIRROR_SENSITIVE_DATASETS = frozenset({"digits", "mnist5k"})
# Independent random streams derived from (seed, epoch): data order and augmentation, loader workers.
ORDER_STREAM, WORKER_STREAM = 0, 1


def allows_hflip(info: DatasetInfo) -> bool:
    return info.name not in MIRROR_SENSITIVE_DATASETS



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

