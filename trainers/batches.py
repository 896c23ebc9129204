"""Batches for the training loop: uint8 images augmented on the device, or files through a DataLoader.

- In-memory splits (TensorSplit: digits, CIFAR, STL-10, synthetic) live on the device as uint8 (`TensorBatches`).
- Cached splits (CachedSplit: the image cache's rows) stay in the memory-mapped cache, which every process on the
  machine shares; each batch is gathered on the host and only the batch is sent to the device (`CachedBatches`),
  unless the split fits DEVICE_RESIDENT_SHARE of a GPU, where it is copied there once.
- Both are cropped (pad-and-crop, or random-resized crop where the recipe or the data asks), flipped and
  normalised on the device, on whole batches (`DeviceBatches`); no DataLoader.
- Files (FileSplit), and in-memory or cached splits under RandAugment, go through a DataLoader with timm's
  transforms (`LoaderBatches`), one worker per core, pinned memory on CUDA.

Under torch.distributed each rank takes an equal slice of every global batch, and evaluation shards cover
every image once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qkvnas_core.errors import UsageError
from trainers.datasets.image_cache import ImageFiles
from trainers.datasets.splits import CachedSplit, DatasetInfo, FileSplit, TensorSplit
from trainers.recipe import Recipe
from trainers.runtime import Distributed, physical_cores, stream_seed

# Datasets whose labels change under a horizontal mirror (a mirrored 2 reads as a 5): never flipped.
MIRROR_SENSITIVE_DATASETS = frozenset({"digits", "mnist5k"})
# Independent random streams derived from (seed, epoch): data order and augmentation, loader workers.
ORDER_STREAM, WORKER_STREAM = 0, 1
# timm's RandomResizedCrop: the smallest area share for image files, the aspect ratios, the tries before its fallback.
FILES_RESIZED_CROP = 0.08
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# A cached split is copied onto a GPU whole when it takes at most this share of the GPU's memory (2.5 GB of 80):
# then batches are gathered there; a larger one stays in the shared cache and only batches cross.
DEVICE_RESIDENT_SHARE = 1 / 32


def allows_hflip(info: DatasetInfo) -> bool:
    return info.name not in MIRROR_SENSITIVE_DATASETS


def resized_crop_share(split: TensorSplit | FileSplit | CachedSplit, recipe: Recipe | None) -> float | None:
    """The smallest area share of the random-resized crop a training split gets: the recipe's, else timm's for image
    files (cached or not), else None (in-memory sets take the recipe's pad-and-crop)."""
    if recipe is None:
        return None
    if recipe.resized_crop is not None:
        return recipe.resized_crop
    from_files = isinstance(split, FileSplit) or (isinstance(split, CachedSplit)
                                                  and isinstance(split.source, ImageFiles))
    return FILES_RESIZED_CROP if from_files else None


def resized_crop_boxes(count: int, height: int, width: int, min_share: float,
                       generator: torch.Generator) -> torch.Tensor:
    """(count, 4) crops (top, left, height, width) drawn as timm's RandomResizedCrop draws them, for whole batches:
    an area share in [min_share, 1] and a log-uniform aspect ratio in CROP_RATIO, the first of CROP_TRIES that fits;
    where none fits, the centre crop at the nearest ratio."""
    area = height * width
    shares = torch.empty(count, CROP_TRIES).uniform_(min_share, 1.0, generator=generator)
    log_ratio = torch.empty(count, CROP_TRIES).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]),
                                                        generator=generator)
    ratio = log_ratio.exp()
    crop_w = (area * shares * ratio).sqrt().round()
    crop_h = (area * shares / ratio).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.float().argmax(dim=1)
    picked_w = crop_w.gather(1, first[:, None])[:, 0]
    picked_h = crop_h.gather(1, first[:, None])[:, 0]
    # the fallback: the whole image, cut to the nearest allowed ratio
    in_ratio = width / height
    fallback_w = round(height * CROP_RATIO[0]) if in_ratio < CROP_RATIO[0] else (
        round(height * CROP_RATIO[1]) if in_ratio > CROP_RATIO[1] else width)
    fallback_h = round(width / CROP_RATIO[0]) if in_ratio < CROP_RATIO[0] else (
        round(width / CROP_RATIO[1]) if in_ratio > CROP_RATIO[1] else height)
    any_fit = fits.any(dim=1)
    crop_w = torch.where(any_fit, picked_w, torch.tensor(float(min(fallback_w, width))))
    crop_h = torch.where(any_fit, picked_h, torch.tensor(float(min(fallback_h, height))))
    place = torch.rand(count, 2, generator=generator)
    top = torch.where(any_fit, (place[:, 0] * (height - crop_h + 1)).floor(), ((height - crop_h) / 2).round())
    left = torch.where(any_fit, (place[:, 1] * (width - crop_w + 1)).floor(), ((width - crop_w) / 2).round())
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's crop (boxes: top, left, height, width in pixels) resized to size x size by bilinear sampling,
    as PIL's resize of the box samples it for timm (the pixels beside the box included; no antialiasing, as the
    crops are never larger than the output), mirrored where `flips`; one affine grid_sample for the batch.
    images: float (B, C, H, W)."""
    height, width = images.shape[-2:]
    top, left, crop_h, crop_w = boxes.to(images.device, torch.float32).unbind(1)
    scale_x = torch.where(flips.to(images.device), -crop_w / width, crop_w / width)
    theta = torch.zeros(len(images), 2, 3, device=images.device)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * left + crop_w) / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (2 * top + crop_h) / height - 1
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DeviceBatches:
    """uint8 images served as augmented, normalised float batches, the augmentation done on the device.

    Training: a permutation of the split drawn from (seed, epoch); global batch i is permutation[i*B:(i+1)*B]
    (a last partial batch is dropped) and rank r takes its r-th equal slice, so the ranks together see the
    single-process batch. Crops and flips are drawn on the CPU for the whole epoch from the same stream, so data and
    augmentation match across devices and world sizes. The crop is a pad-and-crop by `crop_padding` or, where
    `resized_crop` is a share, a random-resized crop.
    Evaluation: rank r takes images r, r+W, r+2W, ... in order, every image once.
    Subclasses say where the images are: `_fetch(index)` gives the uint8 images at positions `index` of the split,
    on the device.
    """

    def __init__(self, labels: torch.Tensor, info: DatasetInfo, device: torch.device, *, batch_size: int,
                 train: bool, seed: int = 0, crop_padding: float = 0.0, hflip: float = 0.0,
                 resized_crop: float | None = None, world: Distributed = Distributed(),
                 channels_last: bool = False) -> None:
        if train and batch_size % world.world_size:
            raise UsageError(f"batch_size={batch_size} across {world.world_size} processes: expected a multiple "
                             "of the number of processes")
        self.labels = labels.to(device)
        self.device, self.batch_size, self.train, self.seed, self.world = device, batch_size, train, seed, world
        self.img_size = info.img_size
        self.padding = round(crop_padding * info.img_size) if train else 0
        self.resized_crop = resized_crop if train else None
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

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _stored_size(self) -> tuple[int, int]:
        raise NotImplementedError

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
            shard = torch.arange(self.world.rank, len(self.labels), self.world.world_size)
            for start in range(0, len(shard), self.batch_size):
                index = shard[start:start + self.batch_size]
                yield self._to_float(self._fetch(index)), self.labels[index.to(self.device)]
            return
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, ORDER_STREAM))
        steps = len(self)
        drawn = steps * self.batch_size
        order = torch.randperm(len(self.labels), generator=generator)[:drawn]
        boxes = offsets = None
        if self.resized_crop is not None:
            # crops of an image stored larger than the output are drawn on it resized to the output (antialiased)
            height, width = (min(side, self.img_size) for side in self._stored_size())
            boxes = resized_crop_boxes(drawn, height, width, self.resized_crop, generator)
            flips = torch.rand(drawn, generator=generator) < self.hflip
        elif self.padding > 0 or self.hflip > 0:
            offsets = torch.randint(0, 2 * self.padding + 1, (drawn, 2), generator=generator).to(self.device)
            flips = (torch.rand(drawn, generator=generator) < self.hflip).to(self.device)
        per_rank = self.batch_size // self.world.world_size
        for step in range(steps):
            start = step * self.batch_size + self.world.rank * per_rank
            picked = slice(start, start + per_rank)
            images = self._fetch(order[picked])
            labels = self.labels[order[picked].to(self.device)]
            if boxes is not None:
                normalised = torch.addcmul(self.shift, images.float(), self.scale)
                if max(normalised.shape[-2:]) > self.img_size:
                    normalised = F.interpolate(normalised, size=(height, width), mode="bilinear", antialias=True,
                                               align_corners=False)
                batch = resized_crop(normalised, boxes[picked], flips[picked], self.img_size)
                yield (batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch), labels
                continue
            if offsets is not None:
                images = self._crop_flip(images, offsets[picked], flips[picked])
            yield self._to_float(images), labels


class TensorBatches(DeviceBatches):
    """An in-memory split held on the device as uint8."""

    def __init__(self, split: TensorSplit, info: DatasetInfo, device: torch.device, **options: Any) -> None:
        super().__init__(split.labels, info, device, **options)
        self.images = split.images.to(device)

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index.to(self.device)]

    def _stored_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


class CachedBatches(DeviceBatches):
    """A cached split: each batch gathered on the host from the memory-mapped cache (the pages every process on the
    machine shares) and sent to the device alone, through two pinned buffers in turn on CUDA (one fills while the
    other's copy may still run); a split that fits DEVICE_RESIDENT_SHARE of the GPU is copied there once instead."""

    def __init__(self, split: CachedSplit, info: DatasetInfo, device: torch.device, **options: Any) -> None:
        super().__init__(torch.from_numpy(split.labels), info, device, **options)
        self.stored = split.cache().images
        self.rows = split.rows
        self.resident: torch.Tensor | None = None
        self.pinned: list[torch.Tensor] = []
        self.copies: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0
        if device.type == "cuda":
            split_bytes = len(self.rows) * int(np.prod(self.stored.shape[1:]))
            if split_bytes <= DEVICE_RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory:
                # read in row order (sequential pages), then indexed by each image's place in that order
                self.resident = torch.from_numpy(self.stored[np.sort(self.rows)]).to(device)
                self.resident_index = torch.from_numpy(np.argsort(np.argsort(self.rows))).to(device)
            else:
                self.pinned = [torch.empty((self.batch_size, *self.stored.shape[1:]), dtype=torch.uint8).pin_memory()
                               for _ in range(2)]

    def _stored_size(self) -> tuple[int, int]:
        return tuple(self.stored.shape[-2:])

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[self.resident_index[index.to(self.device)]]
        rows = self.rows[index.numpy()]
        if self.device.type != "cuda":
            return torch.from_numpy(self.stored[rows])
        slot = self.turn % 2
        self.turn += 1
        if self.copies[slot] is not None:
            self.copies[slot].synchronize()
        host = self.pinned[slot][:len(rows)]
        np.take(self.stored, rows, axis=0, out=host.numpy())
        images = host.to(self.device, non_blocking=True)
        self.copies[slot] = torch.cuda.Event()
        self.copies[slot].record()
        return images


class TensorImageDataset(torch.utils.data.Dataset):
    """An in-memory split as PIL images through a transform, for timm's PIL augmentations (RandAugment)."""

    def __init__(self, split: TensorSplit, transform: Callable[[Any], torch.Tensor]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(_pil_image(self.split.images[index].numpy())), int(self.split.labels[index])


class CachedImageDataset(torch.utils.data.Dataset):
    """A cached split as PIL images through a transform (RandAugment): the pixels come from the shared cache, so
    the loader's workers do no JPEG decoding; each worker maps the cache itself on first use."""

    def __init__(self, split: CachedSplit, transform: Callable[[Any], torch.Tensor]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.split.cache().images[self.split.rows[index]]
        return self.transform(_pil_image(np.asarray(pixels))), int(self.split.labels[index])


class FileImageDataset(torch.utils.data.Dataset):
    """A `FileSplit` for a DataLoader: (transform(RGB PIL image), label)."""

    def __init__(self, split: FileSplit, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        with Image.open(self.split.paths[index]) as image:
            rgb = image.convert("RGB")
        return (self.transform(rgb) if self.transform is not None else rgb), self.split.labels[index]


def _pil_image(pixels: np.ndarray) -> Image.Image:
    """(C, H, W) uint8 as a PIL image (L for one channel)."""
    pixels = pixels.transpose(1, 2, 0)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def posterize(image: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize op, except that 0 bits gives a black image as it did before Pillow began refusing 0 bits
    (timm asks for 0 at RandAugment magnitude 10, which 'mstd0.5' reaches)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def image_transform(info: DatasetInfo, recipe: Recipe | None, train: bool) -> Callable[[Any], torch.Tensor]:
    """timm's transforms: RandomResizedCrop (the recipe's area share, else timm's), flip, RandAugment, random
    erasing for training; resize + centre crop."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    if not train or recipe is None:
        return create_transform(info.img_size, is_training=False, interpolation="bicubic", mean=info.mean,
                                std=info.std)
    transform = create_transform(
        info.img_size, is_training=True, hflip=recipe.hflip if allows_hflip(info) else 0.0, color_jitter=None,
        auto_augment=recipe.randaugment, interpolation="bicubic", mean=info.mean, std=info.std,
        re_prob=recipe.random_erasing, re_mode="pixel", re_count=1,
        scale=(recipe.resized_crop or FILES_RESIZED_CROP, 1.0))
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


Batches = DeviceBatches | LoaderBatches


def make_batches(split: TensorSplit | FileSplit | CachedSplit, info: DatasetInfo, recipe: Recipe | None,
                 device: torch.device, *, batch_size: int, train: bool, seed: int = 0,
                 world: Distributed = Distributed(), channels_last: bool = False, workers: int | None = None) -> Batches:
    """The fastest path for a split: augmented on the device unless it is files or needs PIL RandAugment."""
    recipe = recipe if train else None
    if not isinstance(split, FileSplit) and (recipe is None or recipe.randaugment is None):
        options = dict(batch_size=batch_size, train=train, seed=seed, world=world, channels_last=channels_last,
                       crop_padding=recipe.crop_padding if recipe else 0.0, hflip=recipe.hflip if recipe else 0.0,
                       resized_crop=resized_crop_share(split, recipe))
        if isinstance(split, CachedSplit):
            return CachedBatches(split, info, device, **options)
        return TensorBatches(split, info, device, **options)
    transform = image_transform(info, recipe, train)
    dataset = (TensorImageDataset(split, transform) if isinstance(split, TensorSplit)
               else CachedImageDataset(split, transform) if isinstance(split, CachedSplit)
               else FileImageDataset(split, transform))
    return LoaderBatches(dataset, device, batch_size=batch_size, train=train, seed=seed, world=world,
                         repeated_aug=bool(recipe and recipe.repeated_aug), workers=workers,
                         channels_last=channels_last)
