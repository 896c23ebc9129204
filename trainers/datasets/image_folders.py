"""Image files in class folders: ImageNet (train/ and val/ sorted into class folders) and any train/<class>/ tree.

The listing holds every file with an image extension, in sorted class and path order, so labels follow the sorted
class names; the splits are drawn over it. Files that do not open are left out of their split afterwards
(`readable_files`, a header check where the files are read every step; the image cache's build, where they are
cached), so a run's splits are the same whichever way it reads its images.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from qkvnas_core.errors import UsageError
from trainers.datasets.splits import (IMAGENET_MEAN, IMAGENET_STD, FileSplit, SourceData, SourceRequest, data_root,
                                      dataset_info, missing_files)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_LAYOUT = "train/<class>/*.JPEG and val/<class>/*.JPEG (val sorted into class folders)"
FOLDER_LAYOUT = "train/<class>/<images>, optionally test/<class>/<images> (or val/) as the test split"


def is_readable_image(path: str) -> bool:
    """Whether PIL can parse the file's header (a cheap check: the pixels are decoded later)."""
    try:
        with Image.open(path):
            return True
    except (OSError, Image.DecompressionBombError):
        return False


def readable_files(split: FileSplit, what: str) -> FileSplit:
    """The files of a split PIL can open, with one warning naming how many were left out, rather than a crash
    mid-training; the image cache finds them instead by decoding every image once."""
    keep = [index for index, path in enumerate(split.paths) if is_readable_image(path)]
    if len(keep) < len(split):
        warnings.warn(f"skipped {len(split) - len(keep)} unreadable images of {what}", stacklevel=2)
    return FileSplit([split.paths[index] for index in keep], [split.labels[index] for index in keep])


def class_folders(folder: Path) -> list[str]:
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
    for class_name in class_folders(folder):
        if class_name not in class_to_label:
            raise UsageError(f"{folder / class_name}: class {class_name!r} has no folder under train/; "
                             f"expected the test classes to be among the training classes")
        files = sorted(_image_files(str(folder / class_name)))
        paths += files
        labels += [class_to_label[class_name]] * len(files)
    return FileSplit(paths, labels)


def _read_image_folders(request: SourceRequest, layout: str, test_names: tuple[str, ...], test_required: bool,
                        name: str) -> SourceData:
    root = data_root(request, layout)
    train_dir = root / "train"
    test_dir = next((root / test_name for test_name in test_names if (root / test_name).is_dir()), None)
    if not train_dir.is_dir() or (test_required and test_dir is None):
        absent = "train/" if not train_dir.is_dir() else f"{test_names[0]}/"
        raise missing_files(root, f"no {absent} folder", layout)
    class_names = class_folders(train_dir)
    if not class_names:
        raise missing_files(root, "no class folders under train/", layout)
    class_to_label = {class_name: label for label, class_name in enumerate(class_names)}
    train = _read_class_tree(train_dir, class_to_label)
    seen = set(train.labels)
    empty = [class_name for class_name, label in class_to_label.items() if label not in seen]
    if empty:
        raise UsageError(f"{train_dir}: no images ({' '.join(IMAGE_EXTENSIONS)}) in class folder(s) "
                         f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; expected at least one per class")
    test = None
    if test_dir is not None:
        # ILSVRC ships val/ flat; read as is it would give an empty test split, not an error
        if not class_folders(test_dir):
            raise missing_files(root, f"no class folders under {test_dir.name}/", layout)
        test = _read_class_tree(test_dir, class_to_label)
    info = dataset_info(name, len(class_names), 224, 3, IMAGENET_MEAN, IMAGENET_STD, tuple(class_names))
    return SourceData(info, train, test)


def read_imagenet(request: SourceRequest) -> SourceData:
    return _read_image_folders(request, IMAGENET_LAYOUT, ("val",), test_required=True, name="imagenet")


def read_folder(request: SourceRequest) -> SourceData:
    return _read_image_folders(request, FOLDER_LAYOUT, ("test", "val"), test_required=False, name="folder")
