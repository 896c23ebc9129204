"""STL-10's labelled splits in torchvision's layout: column-major binaries of 96 px images, labels 1..10."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qkvnas_core.errors import UsageError
from trainers.datasets.cifar import download
from trainers.datasets.splits import (SourceData, SourceRequest, TensorSplit, data_root, dataset_info, missing_files,
                                      tensor_split)

LAYOUT = "stl10_binary/train_X.bin, train_y.bin, test_X.bin and test_y.bin (torchvision layout)"
SIDE = 96


def _read_part(folder: Path, images_file: str, labels_file: str) -> TensorSplit:
    raw = np.fromfile(folder / images_file, dtype=np.uint8)
    labels = np.fromfile(folder / labels_file, dtype=np.uint8).astype(np.int64) - 1  # 1-based in the files
    image_bytes = 3 * SIDE * SIDE
    if raw.size % image_bytes or raw.size // image_bytes != labels.size:
        raise UsageError(f"{folder / images_file}: expected {labels.size} images of 3x96x96 bytes "
                         f"(one per label in {labels_file}), got {raw.size} bytes")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"{folder / labels_file}: expected labels 1..10, got {labels.min() + 1}..{labels.max() + 1}")
    images = raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 1, 3, 2)  # each channel is stored column-major
    return tensor_split(images, labels)


def read_stl10(request: SourceRequest) -> SourceData:
    root = data_root(request, LAYOUT)
    folder = root / "stl10_binary"
    needed = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    if request.download and not all((folder / name).is_file() for name in needed):
        download("STL-10", root, "STL10", split="test")
    absent = [name for name in needed if not (folder / name).is_file()]
    if absent:
        raise missing_files(root, f"missing {', '.join(f'stl10_binary/{name}' for name in absent)}", LAYOUT,
                            downloadable=True)
    names_path = folder / "class_names.txt"
    class_names = tuple(names_path.read_text().splitlines()) if names_path.is_file() else None
    info = dataset_info("stl10", 10, SIDE, 3, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), class_names)
    return SourceData(info, _read_part(folder, "train_X.bin", "train_y.bin"), _read_part(folder, "test_X.bin",
                                                                                          "test_y.bin"))
