"""ImageNet 16/32/64 (trainers/datasets/downsampled_imagenet.py) on small files in the official format, and the
restricted unpickler every dataset pickle goes through (trainers/datasets/safe_pickle.py)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dataset_files import write_cifar10, write_downsampled_imagenet, write_python2_pickle
from qkvnas_core.errors import UsageError
from trainers.datasets import image_cache
from trainers.datasets.registry import load_dataset
from trainers.datasets.safe_pickle import load_pickle
from trainers.datasets.splits import CachedSplit


@pytest.fixture(autouse=True)
def fresh_process_memo():
    image_cache._OPENED.clear()
    yield
    image_cache._OPENED.clear()


@pytest.mark.parametrize("side", [16, 32, 64])
def test_the_official_files_read_into_the_cache_row_for_row(tmp_path, side):
    written = write_downsampled_imagenet(tmp_path / "data", side)
    splits = load_dataset(f"imagenet{side}", tmp_path / "data", cache_dir=tmp_path / "cache", val_fraction=0.25)
    assert splits.info.name == f"imagenet{side}" and splits.info.num_classes == 1000
    assert splits.info.img_size == side and splits.info.in_chans == 3
    assert all(isinstance(split, CachedSplit) for split in (splits.train, splits.val, splits.test))
    # every training row once, in train or val, with its image and its label counted from 0
    cache = splits.train.cache()
    rows = np.concatenate([splits.train.rows, splits.val.rows])
    assert sorted(rows.tolist()) == list(range(len(written["train"])))
    assert np.array_equal(cache.images[rows], written["train"][rows])
    assert np.array_equal(np.concatenate([splits.train.labels, splits.val.labels]), written["train_labels"][rows] - 1)
    # val_data is the test split
    test_cache = splits.test.cache()
    assert np.array_equal(test_cache.images[splits.test.rows], written["val"])
    assert splits.test.labels.tolist() == (written["val_labels"] - 1).tolist()


def test_imagenet16_120_keeps_labels_1_to_120(tmp_path):
    written = write_downsampled_imagenet(tmp_path / "data", 16)
    splits = load_dataset("imagenet16", tmp_path / "data", classes=120, cache_dir=tmp_path / "cache")
    assert splits.info.num_classes == 120
    kept = written["train_labels"] <= 120
    assert len(splits.train) + len(splits.val) == kept.sum()
    assert set(np.concatenate([splits.train.labels, splits.val.labels]).tolist()) == {0, 1, 2, 118, 119}
    assert set(splits.test.labels.tolist()) <= set(range(120))


def test_the_cache_is_built_once_and_found_again(tmp_path, caplog):
    write_downsampled_imagenet(tmp_path / "data", 32)
    load_dataset("imagenet32", tmp_path / "data", cache_dir=tmp_path / "cache")
    image_cache._OPENED.clear()
    with caplog.at_level("INFO", logger="qkvnas"):
        again = load_dataset("imagenet32", tmp_path / "data", cache_dir=tmp_path / "cache", seed=1)
    assert "to decode" not in caplog.text and "indexing" not in caplog.text
    assert len(again.train) + len(again.val) == 60


def test_missing_files_are_named(tmp_path):
    write_downsampled_imagenet(tmp_path, 16)
    (tmp_path / "Imagenet16_train" / "train_data_batch_7").unlink()
    with pytest.raises(UsageError, match=rf"data dir {tmp_path}: missing train_data_batch_7; expected "
                                         rf"{tmp_path}/train_data_batch_1\.\.10 and val_data of Imagenet16"):
        load_dataset("imagenet16", tmp_path, cache_dir=tmp_path / "cache")


def test_a_file_of_another_resolution_is_named(tmp_path):
    write_downsampled_imagenet(tmp_path, 32)
    with pytest.raises(UsageError, match=r"train_data_batch_1: expected uint8 data of shape \(N, 768\) and N labels, "
                                         r"got uint8 \(6, 3072\)"):
        load_dataset("imagenet16", tmp_path, cache_dir=tmp_path / "cache")


def test_labels_outside_1_to_1000_are_named(tmp_path):
    write_downsampled_imagenet(tmp_path, 16)
    write_python2_pickle(tmp_path / "Imagenet16_train" / "train_data_batch_3", {
        b"data": np.zeros((2, 768), np.uint8), b"labels": [0, 5]})
    with pytest.raises(UsageError, match=r"train_data_batch_3: labels 0\.\.5; expected 1\.\.1000"):
        load_dataset("imagenet16", tmp_path, cache_dir=tmp_path / "cache")


class RunsAShellCommand:
    """What a hostile dataset file would hold: unpickling it runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet16"])
def test_a_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path, dataset):
    marker = tmp_path / "ran"
    if dataset == "cifar10":
        write_cifar10(tmp_path)
        hostile = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    else:
        write_downsampled_imagenet(tmp_path, 16)
        hostile = tmp_path / "Imagenet16_train" / "train_data_batch_1"
    hostile.write_bytes(pickle.dumps({"data": RunsAShellCommand(marker), "labels": [1]}))
    with pytest.raises(UsageError) as refused:
        load_dataset(dataset, tmp_path, cache_dir=tmp_path / "cache")
    message = str(refused.value)
    assert message.startswith(f"{hostile}: the pickle asks for posix.system, which a dataset file never holds; refused")
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"", b"not a pickle", pickle.dumps([1, 2])[:-3], b"\x80\x05" + b"\xff" * 40])
def test_bytes_that_are_no_pickle_are_one_line(tmp_path, payload):
    path = tmp_path / "batch"
    path.write_bytes(payload)
    with pytest.raises(UsageError, match=rf"^{path}: not a readable pickle \(.*\); expected a batch$"):
        load_pickle(path, "a batch")


def test_numpy_arrays_and_containers_read_under_every_protocol(tmp_path):
    content = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3], "mean": np.float64(0.5),
               "names": ("a", b"b"), "set": {1, 2}}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        read = load_pickle(path, "a batch")
        assert np.array_equal(read["data"], content["data"]) and read["labels"] == [1, 2, 3]
        assert read["mean"] == 0.5 and read["names"] == ("a", b"b") and read["set"] == {1, 2}
