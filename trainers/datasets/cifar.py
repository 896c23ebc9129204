"""CIFAR-10 and CIFAR-100 in torchvision's layout: the python batches, pickles read by the restricted unpickler."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkvnas_core.errors import UsageError
from trainers.datasets.safe_pickle import load_pickle
from trainers.datasets.splits import (SourceData, SourceRequest, TensorSplit, data_root, dataset_info, missing_files,
                                      tensor_split)


@dataclass(frozen=True)
class CifarFormat:
    """Where torchvision's layout keeps one CIFAR variant and which pickle keys hold its labels."""

    name: str
    title: str
    torchvision_class: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str


CIFAR10 = CifarFormat(
    "cifar10", "CIFAR-10", "CIFAR10", "cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)),
    ("test_batch",), "batches.meta", "labels", "label_names", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    "cifar-10-batches-py/data_batch_1..5 and test_batch (torchvision layout)")
CIFAR100 = CifarFormat(
    "cifar100", "CIFAR-100", "CIFAR100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
    "fine_label_names", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    "cifar-100-python/train and test (torchvision layout)")


def download(title: str, root: Path, dataset_class: str, **kwargs: Any) -> None:
    """Fetch a dataset with torchvision's downloader, which checks the archive's MD5."""
    from torchvision import datasets

    try:
        getattr(datasets, dataset_class)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as error:
        raise UsageError(f"data dir {root}: downloading {title} failed ({error})") from error


def _read_batch(path: Path, layout: str) -> dict[str, Any]:
    """One CIFAR pickle, keys as str: the originals are Python 2 pickles, read as torchvision reads them."""
    content = load_pickle(path, f"a CIFAR pickle ({layout})")
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a pickled dict (CIFAR python layout), got {type(content).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_batches(folder: Path, files: tuple[str, ...], cifar: CifarFormat) -> TensorSplit:
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        batch = _read_batch(path, cifar.layout)
        if "data" not in batch or cifar.label_key not in batch:
            raise UsageError(f"{path}: expected keys 'data' and {cifar.label_key!r} (CIFAR python layout)")
        data, batch_labels = batch["data"], batch[cifar.label_key]
        if not isinstance(data, np.ndarray) or not isinstance(batch_labels, (list, np.ndarray)) \
                or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or len(data) != len(batch_labels):
            shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise UsageError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {shown} and "
                             f"{type(batch_labels).__name__} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{folder}: labels other than integers in {', '.join(files)}") from None
    if label_array.ndim != 1 or (len(label_array) and (label_array.min() < 0
                                                       or label_array.max() >= cifar.num_classes)):
        raise UsageError(f"{folder}: labels outside 0..{cifar.num_classes - 1} in {', '.join(files)}")
    return tensor_split(np.concatenate(images), label_array)


def read_cifar(cifar: CifarFormat, request: SourceRequest) -> SourceData:
    root = data_root(request, cifar.layout)
    folder = root / cifar.folder
    needed = cifar.train_files + cifar.test_files
    if request.download and not all((folder / name).is_file() for name in needed):
        download(cifar.title, root, cifar.torchvision_class)
    if not folder.is_dir():
        raise missing_files(root, f"no {cifar.title} batches found", cifar.layout, downloadable=True)
    absent = [name for name in needed if not (folder / name).is_file()]
    if absent:
        raise missing_files(root, f"missing {', '.join(f'{cifar.folder}/{name}' for name in absent)}", cifar.layout,
                            downloadable=True)
    meta_path = folder / cifar.meta_file
    class_names = None
    if meta_path.is_file():
        names = _read_batch(meta_path, cifar.layout).get(cifar.names_key)
        if not isinstance(names, list) or not all(isinstance(name, (str, bytes)) for name in names):
            raise UsageError(f"{meta_path}: expected {cifar.names_key!r}, a list of class names (CIFAR python layout)")
        class_names = tuple(name.decode("latin1") if isinstance(name, bytes) else name for name in names)
    info = dataset_info(cifar.name, cifar.num_classes, 32, 3, cifar.mean, cifar.std, class_names)
    return SourceData(info, _read_batches(folder, cifar.train_files, cifar),
                      _read_batches(folder, cifar.test_files, cifar))


def read_cifar10(request: SourceRequest) -> SourceData:
    return read_cifar(CIFAR10, request)


def read_cifar100(request: SourceRequest) -> SourceData:
    return read_cifar(CIFAR100, request)
