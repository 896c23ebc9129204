"""What a dataset reader returns: the dataset's description and its splits, in one of three forms.

- `TensorSplit`: a small split held whole in memory as uint8 (digits, mnist5k, CIFAR, STL-10, synthetic).
- `FileSplit`: image files and labels, decoded per step through a DataLoader (image folders, Stanford Cars).
- `CachedSplit`: rows of a prepared image cache (`trainers.datasets.image_cache`): images decoded once at the
  size a run asks for, memory-mapped, shared by every process on a machine (downsampled ImageNet always; image
  files when a run asks for the cache, as every search does).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qkvnas_core.errors import UsageError
from search_spaces.presets import patch_size_for
from search_spaces.shape import DataShape
from trainers.datasets.image_cache import CacheSource, ImageCache, open_cache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset's images and labels."""

    name: str
    shape: DataShape  # the images the splits yield (after any proxy resize), their classes, a patch size for them
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    @property
    def img_size(self) -> int:
        return self.shape.img_size

    @property
    def in_chans(self) -> int:
        return self.shape.in_chans

    @property
    def num_classes(self) -> int:
        return self.shape.num_classes

    @property
    def patch_size(self) -> int:
        return self.shape.patch_size

    def to_dict(self) -> dict[str, Any]:
        """The flat record a checkpoint keeps of its dataset (its fields as before the shape was one object)."""
        return {"name": self.name, **asdict(self.shape), "mean": self.mean, "std": self.std,
                "class_names": self.class_names}


@dataclass
class TensorSplit:
    """A small split held whole in memory: the engine moves it to the device and augments there."""

    images: torch.Tensor  # uint8, (N, C, H, W), contiguous
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FileSplit:
    """A large split as image files, decoded per step through a DataLoader."""

    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class CachedSplit:
    """Rows of a prepared image cache: plain data (the cache's address and the rows), so it crosses to Ray's
    workers in a few bytes a row; each process maps the cache's file itself (`images()`), and the machine's
    page cache holds one copy for all of them."""

    source: CacheSource  # what the cache was built from: a process that finds it missing builds it again
    rows: np.ndarray  # int64, (N,): rows of the cache, in the split's order
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def cache(self) -> ImageCache:
        """The cache, mapped read-only in this process (built first where it is missing, under its lock)."""
        return open_cache(self.source)


Split = TensorSplit | FileSplit | CachedSplit


@dataclass
class DatasetSplits:
    """A dataset ready to train on: validation carved from train, proxies applied; test may be absent."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split | None


@dataclass(frozen=True)
class SourceRequest:
    """The arguments of `load_dataset` a dataset reader may need."""

    name: str
    data_dir: Path | None
    download: bool
    synthetic_train: int
    synthetic_classes: int
    synthetic_img_size: int
    cache_dir: Path | None  # where a reader that always caches (downsampled ImageNet) keeps it; None: the default


@dataclass
class SourceData:
    """A dataset as its files give it: the whole training set (validation not yet carved) and the test set."""

    info: DatasetInfo
    train: Split
    test: Split | None


@dataclass(frozen=True)
class DatasetEntry:
    """One registry entry: how to read a dataset, and one line saying what it is."""

    name: str
    description: str
    read: Callable[[SourceRequest], SourceData]


def dataset_info(name: str, num_classes: int, img_size: int, in_chans: int, mean: tuple[float, ...],
                 std: tuple[float, ...], class_names: tuple[str, ...] | None = None) -> DatasetInfo:
    """A reader's DatasetInfo, with the patch size that suits its images."""
    return DatasetInfo(name, DataShape(img_size, in_chans, num_classes, patch_size_for(img_size)), mean, std,
                       class_names)


def data_root(request: SourceRequest, layout: str) -> Path:
    """The folder a file-backed dataset reads; not being given one is a usage error."""
    if request.data_dir is None:
        raise UsageError(f"dataset {request.name} reads files: pass --data-dir, a folder holding {layout}")
    return request.data_dir


def missing_files(root: Path, problem: str, layout: str, downloadable: bool = False) -> UsageError:
    """The one message for a data folder that lacks what its layout needs."""
    hint = ", or pass --download" if downloadable else ""
    return UsageError(f"data dir {root}: {problem}; expected {root}/{layout}{hint}")


def tensor_split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
    return TensorSplit(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                       torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def labels_of(split: Split) -> np.ndarray:
    if isinstance(split, TensorSplit):
        return split.labels.numpy()
    if isinstance(split, CachedSplit):
        return split.labels
    return np.asarray(split.labels, dtype=np.int64)


def subset(split: Split, index: np.ndarray) -> Split:
    """The images at `index` of a split, in that order, in the split's own form."""
    if isinstance(split, TensorSplit):
        rows = torch.from_numpy(index)
        return TensorSplit(split.images[rows].contiguous(), split.labels[rows])
    if isinstance(split, CachedSplit):
        return CachedSplit(split.source, split.rows[index], split.labels[index])
    return FileSplit([split.paths[i] for i in index], [split.labels[i] for i in index])


def complement(index: np.ndarray, length: int) -> np.ndarray:
    return np.setdiff1d(np.arange(length), index)
