"""Small files in each dataset's real on-disk format (torchvision's layouts), for tests that read datasets.

CIFAR pickles as Python 2 wrote them, STL-10 column-major binaries, the Stanford Cars devkit, and image
class folders: what `trainers.datasets` reads, written with a few random images per class.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Python2Pickler(pickle._Pickler):
    """Writes `bytes` as Python 2 `str` opcodes, as the original CIFAR files (cPickle, Python 2) hold them.

    Read back with encoding="latin1" (torchvision) they are `str`; with encoding="bytes" (the CIFAR
    website's snippet) they are `bytes`: the same as the real files.
    """

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def write_python2_pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as pickle_file:
        Python2Pickler(pickle_file, protocol=2).dump(content)


def write_cifar10(root: Path, per_class: int = 2, test_per_class: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(1, 6):
        labels = [i % 10 for i in range(10 * per_class)]
        write_python2_pickle(folder / f"data_batch_{index}", {
            b"batch_label": f"training batch {index} of 5".encode(),
            b"labels": labels,
            b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
            b"filenames": [f"img_{index}_{i}.png".encode() for i in range(len(labels))],
        })
    test_labels = [i % 10 for i in range(10 * test_per_class)]
    write_python2_pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
        b"data": rng.integers(0, 256, (len(test_labels), 3072), dtype=np.uint8),
        b"filenames": [f"test_{i}.png".encode() for i in range(len(test_labels))],
    })
    write_python2_pickle(folder / "batches.meta", {
        b"num_cases_per_batch": 10 * per_class, b"label_names": [name.encode() for name in CIFAR10_NAMES],
        b"num_vis": 3072})
    return root


def write_cifar100(root: Path, per_class: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for part, count in (("train", 100 * per_class), ("test", 100)):
        fine = [i % 100 for i in range(count)]
        write_python2_pickle(folder / part, {
            b"filenames": [f"{part}_{i}.png".encode() for i in range(count)], b"batch_label": f"{part} batch".encode(),
            b"fine_labels": fine, b"coarse_labels": [label // 5 for label in fine],
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        })
    write_python2_pickle(folder / "meta", {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    return root


def _stl10_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 96, 96) images whose top row is white and whose pixels elsewhere are below 255."""
    images = rng.integers(0, 255, (count, 3, 96, 96), dtype=np.uint8)
    images[:, :, 0, :] = 255
    return images


def write_stl10(root: Path, per_class: int = 4, test_per_class: int = 2) -> tuple[Path, dict[str, np.ndarray]]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    arrays = {}
    for part, count in (("train", 10 * per_class), ("test", 10 * test_per_class)):
        images, labels = _stl10_images(count, rng), np.arange(count) % 10
        # the real files store each channel column-major: transposing H and W, then writing in C order
        (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{part}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        arrays[part], arrays[f"{part}_labels"] = images, labels
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return root, arrays


def write_jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def write_cars_annotations(path: Path, rows: list[tuple[str, int]]) -> None:
    """A 1xN struct array `annotations`, fields as in the devkit's cars_train_annos.mat (class is 1-based)."""
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annotations = np.empty((1, len(rows)), dtype=[(field, object) for field in fields])
    for index, (fname, label) in enumerate(rows):
        annotations[0, index] = (np.uint8(2), np.uint8(3), np.uint16(30), np.uint16(20), np.uint8(label), fname)
    scipy.io.savemat(path, {"annotations": annotations})


def write_stanford_cars(root: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    class_names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"]
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([class_names], dtype=object)})
    for part, per_class, annotations_path in (
            ("train", train_per_class, base / "devkit" / "cars_train_annos.mat"),
            ("test", test_per_class, base / "cars_test_annos_withlabels.mat")):
        rows = [(f"{index + 1:05d}.jpg", index % 3 + 1) for index in range(3 * per_class)]
        for index, (fname, _) in enumerate(rows):
            write_jpeg(base / f"cars_{part}" / fname, (24 + index, 16), seed=index)
        write_cars_annotations(annotations_path, rows)
    return root


def write_image_folders(root: Path, test_name: str | None = "val", per_class: int = 6) -> Path:
    """train/<class>/ with JPEGs, a grayscale PNG, one corrupt .JPEG and a stray text file; test as asked."""
    for class_index, class_name in enumerate(("n02", "n01", "n03")):  # written out of order: labels must sort
        for index in range(per_class):
            extension = ".JPEG" if index % 2 else ".jpeg"
            write_jpeg(root / "train" / class_name / f"{class_name}_{index}{extension}", (20, 12), seed=index)
        if test_name is not None:
            for index in range(2):
                write_jpeg(root / test_name / class_name / f"{class_name}_val_{index}.JPEG", (18, 14), seed=99 + index)
    Image.fromarray(np.full((10, 10), 128, np.uint8), mode="L").save(root / "train" / "n01" / "gray.png")
    (root / "train" / "n02" / "broken.JPEG").write_bytes(b"this is not a JPEG")
    (root / "train" / "n02" / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


def write_downsampled_imagenet(root: Path, side: int, per_file: int = 6, val_count: int = 8,
                               labels: tuple[int, ...] = (1, 2, 3, 119, 120, 121, 1000)) -> dict[str, np.ndarray]:
    """Downsampled ImageNet's official files (Chrabaszcz et al. 2017) as the archives unpack them:
    Imagenet<S>_train/train_data_batch_1..10 and Imagenet<S>_val/val_data, each a Python 2 pickle of a dict with
    `data` (N x 3*S*S uint8, channels first), `labels` (a list, 1..1000) and, in the training batches, `mean`.
    Returns the rows written: {"train": (N, 3, S, S), "train_labels": 1-based, "val": ..., "val_labels": ...}."""
    rng = np.random.default_rng(side)
    train_dir, val_dir = root / f"Imagenet{side}_train", root / f"Imagenet{side}_val"
    train_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    rows, row_labels = [], []
    for index in range(1, 11):
        batch_labels = [labels[(index + i) % len(labels)] for i in range(per_file)]
        data = rng.integers(0, 256, (per_file, 3 * side * side), dtype=np.uint8)
        write_python2_pickle(train_dir / f"train_data_batch_{index}", {
            b"data": data, b"labels": batch_labels, b"mean": data.mean(axis=0)})
        rows.append(data)
        row_labels += batch_labels
    val_labels = [labels[i % len(labels)] for i in range(val_count)]
    val = rng.integers(0, 256, (val_count, 3 * side * side), dtype=np.uint8)
    write_python2_pickle(val_dir / "val_data", {b"data": val, b"labels": val_labels})
    return {"train": np.concatenate(rows).reshape(-1, 3, side, side), "train_labels": np.asarray(row_labels),
            "val": val.reshape(-1, 3, side, side), "val_labels": np.asarray(val_labels)}


def write_photo_folders(root: Path, classes: int, per_class: int, size: tuple[int, int] = (500, 375),
                        quality: int = 90) -> Path:
    """train/<class>/*.JPEG and val/<class>/*.JPEG of photo-like images (smooth gradients and noise, so JPEG
    compresses them as it does photographs) at ImageNet's typical size."""
    rng = np.random.default_rng(0)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
    for part, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for class_index in range(classes):
            folder = root / part / f"n{class_index:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                tint = rng.uniform(0.2, 1.0, 3)[None, None, :]
                pixels = 255 * (0.6 * ramp * tint + 0.4 * rng.random((height, width, 1)))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                    folder / f"{part}_{class_index}_{index}.JPEG", "JPEG", quality=quality)
    return root
