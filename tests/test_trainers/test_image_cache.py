"""The image cache (trainers/datasets/image_cache.py): images decoded once, equal to a decode by hand with PIL, built
by one process, never read half-built, rebuilt when its source changes or its files are damaged."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_files import write_image_folders, write_jpeg, write_photo_folders
from qkvnas_core.errors import UsageError
from trainers.datasets import image_cache
from trainers.datasets.image_cache import MANIFEST_FILE, image_files, open_cache
from trainers.datasets.registry import load_dataset
from trainers.datasets.splits import CachedSplit

ROOT = Path(__file__).resolve().parents[2]


def reference_decode(path: str, side: int) -> np.ndarray:
    """docs/datasets.md's method, written out with PIL alone: draft, RGB, shorter side to S (bicubic), centre crop."""
    image = Image.open(path)
    image.draft("RGB", (side, side))
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (side, max(side, round(height * side / width)))
    else:
        size = (max(side, round(width * side / height)), side)
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side))).transpose(2, 0, 1)


@pytest.fixture(autouse=True)
def fresh_process_memo():
    """Each test opens caches as a new process would (the process keeps the caches it opened)."""
    image_cache._OPENED.clear()
    yield
    image_cache._OPENED.clear()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A small ImageNet-like folder: 3 classes of 500 x 375 JPEGs (quality 90)."""
    return write_photo_folders(tmp_path_factory.mktemp("photos"), classes=3, per_class=20)


def _jpegs(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*.JPEG"))


def test_cached_images_equal_a_decode_by_hand_and_the_splits_stay(photos, tmp_path):
    splits = load_dataset("imagenet", photos, img_size=24, seed=3, train_fraction=0.5)
    cached = load_dataset("imagenet", photos, img_size=24, seed=3, train_fraction=0.5, image_cache=True,
                          cache_dir=tmp_path)
    assert isinstance(cached.train, CachedSplit) and isinstance(cached.val, CachedSplit)
    assert isinstance(cached.test, CachedSplit) and cached.info == splits.info
    # the split's images and labels are the files' own, in the same order, each decoded as docs/datasets.md says
    for files, rows in ((splits.train, cached.train), (splits.val, cached.val), (splits.test, cached.test)):
        assert rows.labels.tolist() == files.labels
        cache = rows.cache()
        for index in range(0, len(files), 3):
            assert np.array_equal(cache.images[rows.rows[index]], reference_decode(files.paths[index], 24))
    manifest = json.loads((cached.train.source.folder / MANIFEST_FILE).read_text())
    assert manifest["count"] == len(splits.train) + len(splits.val) and manifest["img_size"] == 24
    assert manifest["method"] == image_cache.RESIZE_METHOD and manifest["unreadable"] == []
    assert manifest["split_version"] == 2 and manifest["qkvnas"]
    # the cache is found again, not rebuilt
    stamp = (cached.train.source.folder / MANIFEST_FILE).stat().st_mtime_ns
    image_cache._OPENED.clear()
    again = load_dataset("imagenet", photos, img_size=24, seed=3, train_fraction=0.5, image_cache=True,
                         cache_dir=tmp_path)
    assert (again.train.source.folder / MANIFEST_FILE).stat().st_mtime_ns == stamp
    assert np.array_equal(again.val.rows, cached.val.rows)


def test_the_default_place_is_the_users_cache_folder(photos, cache_home):
    source = image_files("imagenet", _jpegs(photos)[:4], [0, 0, 1, 1], 8)
    assert source.folder.parent == cache_home / "qkvnas" / "images"
    assert open_cache(source).images.shape == (4, 3, 8, 8)


def test_images_that_do_not_decode_are_named_once_and_left_out(tmp_path, caplog):
    """The folder holds a file that is no JPEG and a JPEG cut short (its header reads): the build names both once,
    the splits leave them out, and every other image is where the file path puts it."""
    root = write_image_folders(tmp_path / "data", per_class=4)
    cut = root / "train" / "n01" / "n01_0.jpeg"
    write_jpeg(cut, (200, 150), seed=5)
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size * 2 // 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = load_dataset("folder", root, img_size=8, val_fraction=0.5)
    with caplog.at_level(logging.INFO, logger="qkvnas"):
        cached = load_dataset("folder", root, img_size=8, val_fraction=0.5, image_cache=True,
                              cache_dir=tmp_path / "cache")
    named = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(named) == 1 and "2 of" in named[0] and "n01_0.jpeg" in named[0] and "broken.JPEG" in named[0]
    listing = cached.train.source.files
    for part in ("train", "val"):
        from_cache = [listing[row] for row in getattr(cached, part).rows]
        assert from_cache == [path for path in getattr(files, part).paths if path != str(cut)]
    manifest = json.loads((cached.train.source.folder / MANIFEST_FILE).read_text())
    assert sorted(Path(entry["file"]).name for entry in manifest["unreadable"]) == ["broken.JPEG", "n01_0.jpeg"]
    caplog.clear()
    image_cache._OPENED.clear()
    with caplog.at_level(logging.INFO, logger="qkvnas"):
        load_dataset("folder", root, img_size=8, val_fraction=0.5, image_cache=True, cache_dir=tmp_path / "cache")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_changed_source_file_is_rebuilt(photos, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index, source_path in enumerate(_jpegs(photos)[:6]):
        target = folder / f"{index}.JPEG"
        target.write_bytes(Path(source_path).read_bytes())
        paths.append(str(target))
    first = open_cache(image_files("folder", paths, [0, 1, 0, 1, 0, 1], 16, tmp_path / "cache"))
    write_jpeg(Path(paths[2]), (300, 200), seed=7)
    image_cache._OPENED.clear()
    changed = image_files("folder", paths, [0, 1, 0, 1, 0, 1], 16, tmp_path / "cache")
    assert changed.folder == first.folder and changed.fingerprint != first.manifest.fingerprint
    with caplog.at_level(logging.WARNING, logger="qkvnas"):
        rebuilt = open_cache(changed)
    assert "its source changed since it was built" in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(rebuilt.images[2], reference_decode(paths[2], 16))
    assert rebuilt.manifest.fingerprint == changed.fingerprint


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "manifest random bytes", "manifest Infinity",
                                    "labels other"])
def test_a_damaged_cache_file_is_rebuilt_with_one_warning(photos, tmp_path, caplog, damage):
    paths = _jpegs(photos)[:5]
    source = image_files("imagenet", paths, [0, 0, 1, 1, 2], 16, tmp_path)
    folder = open_cache(source).folder
    image_cache._OPENED.clear()
    images, manifest, labels = folder / "images.npy", folder / MANIFEST_FILE, folder / "labels.npy"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "random bytes":
        images.write_bytes(np.random.default_rng(0).bytes(images.stat().st_size))
    elif damage == "manifest random bytes":
        manifest.write_bytes(np.random.default_rng(1).bytes(300))
    elif damage == "manifest Infinity":
        manifest.write_text(manifest.read_text().replace('"seconds": ', '"seconds": Infinity, "x": '))
    else:
        np.save(labels, np.asarray([0, 0, 1, 2, 2]))
    with caplog.at_level(logging.WARNING, logger="qkvnas"):
        cache = open_cache(source)
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and str(folder) in warned[0] and "rebuilding it" in warned[0]
    assert "\n" not in warned[0]
    assert all(np.array_equal(cache.images[row], reference_decode(path, 16)) for row, path in enumerate(paths))


def test_a_disk_without_room_is_refused_before_decoding(photos, tmp_path, monkeypatch):
    class Full:
        free = 1000

    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: Full)
    source = image_files("imagenet", _jpegs(photos)[:8], [0] * 8, 64, tmp_path)
    with pytest.raises(UsageError, match=r"image cache .*: 98,304 bytes of images and .* has 1,000 bytes free; "
                                         "expected a --cache-dir with room for it"):
        open_cache(source)
    assert not source.folder.exists() and not list(tmp_path.glob("*.partial"))


_BUILD = """
import sys, logging
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
sys.path.insert(0, {tests!r})
from trainers.datasets.image_cache import image_files, open_cache
paths = {paths!r}
cache = open_cache(image_files("folder", paths, [index % 3 for index in range(len(paths))], {side}, {root!r}))
print("rows", len(cache.images))
"""


def _build_script(paths: list[str], side: int, root: Path) -> list[str]:
    script = _BUILD.format(tests=str(ROOT / "tests"), paths=paths, side=side, root=str(root))
    return [sys.executable, "-c", script]


def test_two_processes_asking_at_once_make_one_build(photos, tmp_path):
    paths = _jpegs(photos)
    command = _build_script(paths, 32, tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert all(process.returncode == 0 for process in (first, second)), outputs
    assert all(f"rows {len(paths)}" in output for output in outputs)
    builds = sum(output.count("to decode on") for output in outputs)
    assert builds == 1, outputs
    folders = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert len(folders) == 1 and not folders[0].name.endswith(".partial")


def test_a_build_killed_midway_is_never_read_and_resumes(photos, tmp_path, caplog):
    """The last file is a named pipe with no writer: the build blocks there, its earlier chunks done, and is killed
    with SIGKILL. Nothing is read from what it left; the next build resumes from its chunks (the pipe then fed the
    JPEG's bytes) and equals a decode by hand."""
    paths = _jpegs(photos)[:47]
    fifo = tmp_path / "images" / "last.JPEG"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    paths.append(str(fifo))
    source = image_files("folder", paths, [index % 3 for index in range(len(paths))], 16, tmp_path / "cache")
    partial = source.folder.with_name(source.folder.name + ".partial")
    build = subprocess.Popen(_build_script(paths, 16, tmp_path / "cache"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    done = None
    while time.monotonic() < deadline:
        try:
            done = np.load(partial / "done.npy")
            if done.sum() == len(done) - 1:
                break
        except (OSError, ValueError, EOFError):
            pass
        time.sleep(0.05)
    build.send_signal(signal.SIGKILL)
    build.wait()
    assert done is not None and done.sum() == len(done) - 1, done
    assert not source.folder.exists()
    with pytest.raises(FileNotFoundError):
        image_cache._read_cache(source.folder, source)

    jpeg = Path(_jpegs(photos)[47]).read_bytes()
    feeder = threading.Thread(target=lambda: fifo.write_bytes(jpeg))
    feeder.start()
    with caplog.at_level(logging.INFO, logger="qkvnas"):
        cache = open_cache(source)
    feeder.join(timeout=60)
    assert f"resuming the build cut off at {len(done) - 1} of {len(done)} chunks" in caplog.text
    assert not partial.exists()
    expected = [reference_decode(path, 16) for path in _jpegs(photos)[:48]]
    assert all(np.array_equal(cache.images[row], image) for row, image in enumerate(expected))
