"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017, arXiv 1707.08819) in its official files: all
1.28M training and 50,000 validation images of ImageNet-1k at 16, 32 or 64 px, as CIFAR-style pickled batches
(`train_data_batch_1` .. `_10` and `val_data`, each a dict with `data`, N x 3*S*S uint8 rows channels first, and
`labels`, 1..1000). NAS-Bench-201's ImageNet16-120 is `--dataset imagenet16 --classes 120` (labels 1-120).

The batches are read into the image cache (one per set, at the files' own size, every row), one file at a time
through the restricted unpickler, never whole into memory; a run's splits are rows of it. As for every dataset
here, validation is carved from the training batches and val_data is the test split (NAS-Bench-201 instead cuts
its validation and test images from val_data).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.datasets.image_cache import PickleLayout, open_cache, pickled_rows
from trainers.datasets.splits import (IMAGENET_MEAN, IMAGENET_STD, CachedSplit, SourceData, SourceRequest, data_root,
                                      dataset_info, missing_files)

SIDES = (16, 32, 64)
TRAIN_FILES = tuple(f"train_data_batch_{index}" for index in range(1, 11))
VAL_FILE = "val_data"
NUM_CLASSES = 1000


def layout(side: int) -> str:
    return (f"train_data_batch_1..10 and val_data of Imagenet{side} (Chrabaszcz et al. 2017), in the folder or one "
            f"level below it (Imagenet{side}_train/, Imagenet{side}_val/ as the official archives unpack)")


def _find(root: Path, name: str) -> Path | None:
    """`name` in the data folder or in one of its subfolders (the archives unpack into Imagenet<S>_train/ ...)."""
    if (root / name).is_file():
        return root / name
    return next((path for path in sorted(root.glob(f"*/{name}")) if path.is_file()), None)


def _cached_split(dataset: str, files: list[Path], pickle_layout: PickleLayout,
                  request: SourceRequest) -> CachedSplit:
    source = pickled_rows(dataset, files, pickle_layout, request.cache_dir)
    cache = open_cache(source)
    return CachedSplit(source, np.arange(len(cache.labels), dtype=np.int64), np.array(cache.labels))


def read_downsampled_imagenet(side: int, request: SourceRequest) -> SourceData:
    root = data_root(request, layout(side))
    wanted = (*TRAIN_FILES, VAL_FILE)
    found = {name: _find(root, name) for name in wanted}
    absent = [name for name in wanted if found[name] is None]
    if absent:
        raise missing_files(root, f"missing {', '.join(absent)}", layout(side))
    pickle_layout = PickleLayout("data", "labels", side, 3, 1, NUM_CLASSES, layout(side))
    name = f"imagenet{side}"
    train = _cached_split(f"{name}-train", [found[file] for file in TRAIN_FILES], pickle_layout, request)
    test = _cached_split(f"{name}-val", [found[VAL_FILE]], pickle_layout, request)
    info = dataset_info(name, NUM_CLASSES, side, 3, IMAGENET_MEAN, IMAGENET_STD)
    return SourceData(info, train, test)
