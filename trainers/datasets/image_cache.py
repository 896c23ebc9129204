"""The prepared image cache: a dataset's images decoded once, at the size a run trains on, into one memory-mapped
uint8 array that every process on a machine reads from the same pages (one copy in memory, however many trials).

A cache is the folder <root>/<dataset>-<S>px-<identity>/ (root: --cache-dir, by default the user's cache folder,
~/.cache/qkvnas/images, since data folders are often read-only shared storage):

    images.npy      uint8 (N, C, S, S), channels first: row i is the source's image i
    labels.npy      int64 (N,)
    manifest.json   what it was made from and how (`CacheManifest`)

Two kinds of source:
- `ImageFiles`: image files, one image each, decoded by `decode_image` (RESIZE_METHOD): PIL's draft mode
  (a JPEG decoded at 1/2, 1/4 or 1/8 scale while both sides stay at least S, most of the saving), RGB, the shorter
  side resized to S (PIL's bicubic, antialiased), the centre S x S kept. Only the images a run keeps (its classes,
  its training share, its validation images) are cached.
- `PickledRows`: CIFAR-style pickled batches (downsampled ImageNet's train_data_batch_1..10 and val_data): rows of
  C*S*S bytes stored as they are, labels read with them; the pickles go through the restricted unpickler.

`open_cache(source)` opens a cache, building it first where it is missing. One process builds, under the lock
<folder>.lock; the others wait for it (on one machine, or on several sharing a file system with fcntl locks: NFSv4,
Lustre). On a Ray cluster, each machine keeps its own cache in its user cache folder, built by the first process
there that needs it (a search's driver on its machine, the first trial on each other one); a --cache-dir on
shared storage is one cache for every machine, built once by the driver. The build writes <folder>.partial/ and renames it to <folder> once complete, so a build cut off (kill -9)
is never read; the next build resumes from the chunks it finished. Chunks are decoded by a pool of processes, one
per core. Its size is logged before it starts, and a disk without room for it is refused before decoding. A cache
whose source changed (its fingerprint: every source file's path, size and modification time) or whose files are
damaged (a manifest that does not read, an array truncated or of another shape) is rebuilt, with one warning saying
why. Images that cannot be decoded are named once, at the build, and recorded in the manifest: the splits leave
them out. The pixels of a finished cache carry no checksum: bytes changed in place are not detected.

This module imports numpy and PIL, not torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from qkvnas_core.errors import UsageError
from qkvnas_core.files import dataclass_from_json, exclusive_lock, read_json_object, write_json_atomic
from qkvnas_core.log import logger
from qkvnas_core.units import format_bytes, format_duration
from trainers.datasets.safe_pickle import load_pickle
from trainers.holdout import SPLIT_VERSION

log = logger(__name__)

CACHE_FORMAT = 1
RESIZE_METHOD = ("PIL draft mode (JPEG DCT scaling by 1/2, 1/4 or 1/8, both sides kept at least S), RGB, shorter "
                 "side resized to S (bicubic), centre crop S x S")
STORED_METHOD = "rows stored as the files hold them"
IMAGES_FILE, LABELS_FILE, MANIFEST_FILE = "images.npy", "labels.npy", "manifest.json"
BUILD_FILE, DONE_FILE, UNREADABLE_FILE = "build.json", "done.npy", "unreadable.jsonl"
# Pixels one job decodes at most (2,730 images at 64 px, 222 at 224 px): what a kill can cost, and the unit of
# resumption; smaller where that gives every process several chunks.
CHUNK_BYTES = 32 * 2**20
MIN_CHUNK_IMAGES = 16
CHUNKS_PER_PROCESS = 4
# Below this many images a pool's start-up costs more than it saves: decoded in this process.
POOL_THRESHOLD = 256
PROGRESS_EVERY_S = 10.0
# Forked on Linux: the pool starts at once and does not import the caller's script again (spawn would run a script
# without a __main__ guard twice); the children only decode and write, holding no lock a parent's thread may hold.
POOL_START = "fork" if sys.platform == "linux" else "spawn"
# A process unpickling a batch file holds about this many times its size at once.
PICKLE_MEMORY_FACTOR = 3


def default_cache_root() -> Path:
    """~/.cache/qkvnas/images, or under $XDG_CACHE_HOME."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qkvnas" / "images"


def file_fingerprint(paths: Iterable[str]) -> str:
    """What a change to the source shows in: each file's path, size and modification time (no file is read)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise UsageError(f"{path}: cannot be read ({error.strerror or error}); expected the dataset's file") \
                from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_image(path: str, img_size: int) -> np.ndarray:
    """One image file as the cache stores it, (3, S, S) uint8, by RESIZE_METHOD."""
    with Image.open(path) as image:
        image.draft("RGB", (img_size, img_size))
        rgb = image.convert("RGB")
    width, height = rgb.size
    scale = img_size / min(width, height)
    size = (max(img_size, round(width * scale)), max(img_size, round(height * scale)))
    resized = rgb.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - img_size) // 2, (size[1] - img_size) // 2
    return np.asarray(resized.crop((left, top, left + img_size, top + img_size))).transpose(2, 0, 1)


# --- what a cache is made from ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkDone:
    """A job's report: its rows are written; `unreadable` names the images among them that did not decode."""

    start: int
    stop: int
    unreadable: list[tuple[int, str, str]]  # (row, file, reason)


@dataclass(frozen=True)
class ImageFilesJob:
    """Decode image files into rows start.. of the array at `images_path`."""

    images_path: str
    start: int
    paths: tuple[str, ...]
    img_size: int

    @property
    def stop(self) -> int:
        return self.start + len(self.paths)

    def run(self) -> ChunkDone:
        images = np.load(self.images_path, mmap_mode="r+")
        unreadable = []
        for offset, path in enumerate(self.paths):
            row = self.start + offset
            try:
                images[row] = decode_image(path, self.img_size)
            # a user's file can fail to decode in many ways (PIL raises OSError, ValueError, SyntaxError, ...)
            except Exception as error:  # noqa: BLE001
                images[row] = 0
                unreadable.append((row, path, f"{type(error).__name__}: {' '.join(str(error).split())[:100]}"))
        images.flush()
        return ChunkDone(self.start, self.stop, unreadable)


@dataclass(frozen=True)
class PickledRowsJob:
    """Copy one pickled batch's rows into rows start..stop of the array at `images_path`."""

    images_path: str
    start: int
    stop: int
    path: str
    layout: PickleLayout

    def run(self) -> ChunkDone:
        images, _ = self.layout.read(Path(self.path))
        if len(images) != self.stop - self.start:
            raise UsageError(f"{self.path}: holds {len(images)} images, {self.stop - self.start} when it was indexed; "
                             "expected the file unchanged during the build")
        target = np.load(self.images_path, mmap_mode="r+")
        target[self.start:self.stop] = images
        target.flush()
        return ChunkDone(self.start, self.stop, [])


@dataclass(frozen=True)
class PickleLayout:
    """How a CIFAR-style batch pickle holds its images: a dict with `data_key` (N x C*S*S uint8 rows, channels
    first) and `labels_key` (N labels, counted from `first_label`)."""

    data_key: str
    labels_key: str
    side: int
    in_chans: int
    first_label: int
    num_classes: int
    expected: str  # the layout, for messages

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, C, S, S) uint8, labels counted from 0); a file of another layout is one UsageError."""
        content = load_pickle(path, self.expected)
        if not isinstance(content, dict) or self.data_key not in content or self.labels_key not in content:
            raise UsageError(f"{path}: expected a pickled dict with keys {self.data_key!r} and {self.labels_key!r} "
                             f"({self.expected})")
        data, labels = content[self.data_key], content[self.labels_key]
        row = self.in_chans * self.side * self.side
        try:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{path}: {self.labels_key} holds other than integers ({self.expected})") from None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row \
                or len(data) != len(labels):
            shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise UsageError(f"{path}: expected uint8 {self.data_key} of shape (N, {row}) and N labels, got {shown} "
                             f"and {len(labels)} labels ({self.expected})")
        last = self.first_label + self.num_classes - 1
        if len(labels) and (labels.min() < self.first_label or labels.max() > last):
            raise UsageError(f"{path}: labels {labels.min()}..{labels.max()}; expected {self.first_label}..{last} "
                             f"({self.expected})")
        return data.reshape(-1, self.in_chans, self.side, self.side), labels - self.first_label


@dataclass(frozen=True)
class BuildPlan:
    """A build's labels and its jobs, each filling a range of rows."""

    labels: np.ndarray
    jobs: list[ImageFilesJob | PickledRowsJob]


@dataclass(frozen=True)
class CacheSource:
    """What a cache is made from and where it lives; plain data that crosses to Ray's workers, so a process that
    finds the cache missing (another machine of a cluster) builds its own.

    files: what is read (image files, or batch files); fingerprint: theirs as this run found them
    (`file_fingerprint`); identity: what the cache holds (the files in order, the size, the method), which names
    its folder; method: how the pixels are made from the files."""

    dataset: str
    img_size: int
    in_chans: int
    root: str | None  # None: each process's own user cache folder (on a cluster, each machine builds its own)
    files: tuple[str, ...]
    fingerprint: str
    identity: str
    method: str

    @property
    def folder(self) -> Path:
        return Path(self.root or default_cache_root()) / f"{self.dataset}-{self.img_size}px-{self.identity[:16]}"

    @property
    def kind(self) -> str:
        return type(self).__name__

    def plan(self, images_path: Path, workers: int) -> BuildPlan:
        raise NotImplementedError


def _identity(*parts: object) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, *parts]).encode())
    return digest.hexdigest()


def _root(root: str | os.PathLike | None) -> str | None:
    return None if root is None else str(Path(root).expanduser().resolve())


@dataclass(frozen=True)
class ImageFiles(CacheSource):
    """Image files (one image each) with their labels: decoded by `decode_image` at img_size."""

    labels: tuple[int, ...] = ()

    def plan(self, images_path: Path, workers: int) -> BuildPlan:
        count, image_bytes = len(self.files), self.in_chans * self.img_size ** 2
        per_job = max(MIN_CHUNK_IMAGES, min(CHUNK_BYTES // image_bytes,
                                            -(-count // max(1, workers * CHUNKS_PER_PROCESS))))
        jobs = [ImageFilesJob(str(images_path), start, self.files[start:start + per_job], self.img_size)
                for start in range(0, count, per_job)]
        return BuildPlan(np.asarray(self.labels, dtype=np.int64), jobs)


def image_files(dataset: str, paths: list[str], labels: list[int], img_size: int,
                root: str | os.PathLike | None = None) -> ImageFiles:
    """The source of a cache of these image files at img_size (the files are stat'ed, not read)."""
    files = tuple(os.path.abspath(path) for path in paths)
    labels = tuple(int(label) for label in labels)
    return ImageFiles(dataset, img_size, 3, _root(root), files, file_fingerprint(files),
                      _identity("ImageFiles", img_size, RESIZE_METHOD, files, labels), RESIZE_METHOD, labels)


@dataclass(frozen=True)
class PickledRows(CacheSource):
    """CIFAR-style batch pickles, every row of each in order, labels read from them."""

    layout: PickleLayout | None = None

    def plan(self, images_path: Path, workers: int) -> BuildPlan:
        # The files hold their labels beside the pixels: each is read once to count and label its rows.
        log.info(f"image cache: indexing {len(self.files)} batch files of {self.dataset}")
        labels, jobs, start = [], [], 0
        for path in self.files:
            _, file_labels = self.layout.read(Path(path))
            labels.append(file_labels)
            jobs.append(PickledRowsJob(str(images_path), start, start + len(file_labels), path, self.layout))
            start += len(file_labels)
        return BuildPlan(np.concatenate(labels) if labels else np.zeros(0, np.int64), jobs)


def pickled_rows(dataset: str, batch_files: list[Path], layout: PickleLayout,
                 root: str | os.PathLike | None = None) -> PickledRows:
    files = tuple(os.path.abspath(path) for path in batch_files)
    return PickledRows(dataset, layout.side, layout.in_chans, _root(root), files, file_fingerprint(files),
                       _identity("PickledRows", dataclasses.asdict(layout), files), STORED_METHOD, layout)


# --- the cache as stored ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnreadableImage:
    row: int
    file: str
    reason: str


@dataclass(frozen=True)
class CacheManifest:
    """manifest.json: what a finished cache holds and what it was made from."""

    format: int
    identity: str  # what the cache holds: the source's files in order, the size, the method
    fingerprint: str  # the source files' paths, sizes and modification times when it was built
    dataset: str
    source: str  # ImageFiles or PickledRows
    source_files: int
    count: int
    img_size: int
    in_chans: int
    method: str
    split_version: int
    qkvnas: str
    created: str
    seconds: float
    unreadable: list[UnreadableImage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count < 0 or self.img_size < 1 or self.in_chans not in (1, 3) or self.source_files < 0:
            raise UsageError(f"count={self.count}, img_size={self.img_size}, in_chans={self.in_chans}: expected a "
                             "count from 0, a size from 1 px and 1 or 3 channels")
        if any(not 0 <= image.row < self.count for image in self.unreadable):
            raise UsageError(f"unreadable: expected rows 0..{self.count - 1}")


@dataclass
class ImageCache:
    """A finished cache, mapped read-only in this process."""

    folder: Path
    manifest: CacheManifest
    images: np.ndarray  # uint8 memmap (N, C, S, S)
    labels: np.ndarray  # int64 (N,)

    @property
    def unreadable_rows(self) -> np.ndarray:
        return np.asarray(sorted(image.row for image in self.manifest.unreadable), dtype=np.int64)


class CacheProblem(Exception):
    """Why a cache folder cannot be used as it is (damaged, stale, or holding other images)."""


def _read_cache(folder: Path, source: CacheSource) -> ImageCache:
    """The finished cache in `folder`, or CacheProblem saying what is wrong with it (FileNotFoundError: none)."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(manifest_path)
    try:
        manifest = dataclass_from_json(CacheManifest, read_json_object(manifest_path, "an image cache's manifest"))
    except UsageError as error:
        raise CacheProblem(f"{manifest_path} is damaged ({error})") from None
    if manifest.format != CACHE_FORMAT or manifest.identity != source.identity:
        raise CacheProblem(f"{manifest_path} describes another cache (format {manifest.format}, identity "
                           f"{manifest.identity[:16]})")
    if manifest.fingerprint != source.fingerprint:
        raise CacheProblem(f"its source changed since it was built (a file of {source.dataset} was added, removed, "
                           "resized or modified)")
    shape = (manifest.count, source.in_chans, source.img_size, source.img_size)
    images = _load_array(folder / IMAGES_FILE, mmap_mode="r")
    labels = _load_array(folder / LABELS_FILE)
    if images.dtype != np.uint8 or images.shape != shape:
        raise CacheProblem(f"{folder / IMAGES_FILE} is damaged: {images.dtype} {images.shape}, expected uint8 {shape}")
    if labels.dtype != np.int64 or labels.shape != (manifest.count,) or (len(labels) and labels.min() < 0):
        raise CacheProblem(f"{folder / LABELS_FILE} is damaged: {labels.dtype} {labels.shape}, expected "
                           f"{manifest.count} labels from 0")
    if isinstance(source, ImageFiles) and not np.array_equal(labels, np.asarray(source.labels, dtype=np.int64)):
        raise CacheProblem(f"{folder / LABELS_FILE} is damaged: other labels than the source's")
    return ImageCache(folder, manifest, images, labels)


def _load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise CacheProblem(f"{path} is damaged ({' '.join(str(error).split())[:100]})") from None


# The caches this process has mapped, by folder and fingerprint: a trial's train and validation batches share one.
_OPENED: dict[tuple[Path, str], ImageCache] = {}


def open_cache(source: CacheSource) -> ImageCache:
    """The cache of `source`, mapped read-only; built (or rebuilt, where stale or damaged) first, by this
    process or by another one that holds the lock, which this one waits for."""
    folder = source.folder
    opened = _OPENED.get((folder, source.fingerprint))
    if opened is not None:
        return opened
    try:
        cache = _read_cache(folder, source)
    except (FileNotFoundError, CacheProblem):
        cache = _build_locked(source)
    _OPENED[folder, source.fingerprint] = cache
    return cache


def _build_locked(source: CacheSource) -> ImageCache:
    folder = source.folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"image cache folder {folder.parent}: cannot be created ({error.strerror or error}); "
                         "expected a writable --cache-dir") from None

    def waiting(holder: str) -> None:
        log.info(f"image cache {folder}: waiting for process {holder}, which is building it")

    with exclusive_lock(folder.with_name(folder.name + ".lock"), f"image cache {folder}", on_wait=waiting):
        try:
            return _read_cache(folder, source)  # built while this process waited
        except FileNotFoundError:
            pass
        except CacheProblem as problem:
            log.warning(f"image cache {folder}: {problem}; rebuilding it")
        _build(source, folder)
        try:
            return _read_cache(folder, source)
        except CacheProblem as problem:
            raise UsageError(f"image cache {folder}: {problem} just after it was built; expected a file system "
                             "that keeps what is written (or another --cache-dir)") from None


# --- building ------------------------------------------------------------------------------------------------------


@dataclass
class _Partial:
    """A build in progress in <folder>.partial/: its plan (build.json), which jobs are done and the images found
    unreadable so far."""

    folder: Path
    jobs: list[ImageFilesJob | PickledRowsJob]
    done: np.ndarray  # bool memmap, one per job
    unreadable: dict[int, tuple[str, str]]
    count: int

    def record(self, index: int, report: ChunkDone) -> None:
        if report.unreadable:
            with open(self.folder / UNREADABLE_FILE, "a") as lines:
                lines.writelines(json.dumps(list(entry)) + "\n" for entry in report.unreadable)
                lines.flush()
            self.unreadable.update({row: (file, reason) for row, file, reason in report.unreadable})
        self.done[index] = True
        self.done.flush()


def _build_record(source: CacheSource, count: int, jobs: list) -> dict:
    return {"format": CACHE_FORMAT, "identity": source.identity, "fingerprint": source.fingerprint, "count": count,
            "jobs": [[job.start, job.stop] for job in jobs]}


def _resumed_partial(partial: Path, source: CacheSource) -> _Partial | None:
    """The build cut off in `partial`, when it is this source's and readable; None otherwise."""
    try:
        record = read_json_object(partial / BUILD_FILE, "a cache build's plan")
        labels = np.load(partial / LABELS_FILE, allow_pickle=False)
        done = np.load(partial / DONE_FILE, mmap_mode="r+")
        np.load(partial / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError, EOFError, UsageError):
        return None
    ranges = record.get("jobs")
    same = (record.get("format") == CACHE_FORMAT and record.get("identity") == source.identity
            and record.get("fingerprint") == source.fingerprint and record.get("count") == len(labels)
            and isinstance(ranges, list) and len(done) == len(ranges))
    if not same:
        return None
    images_path = str(partial / IMAGES_FILE)
    try:
        if isinstance(source, ImageFiles):
            jobs = [ImageFilesJob(images_path, int(start), source.files[int(start):int(stop)], source.img_size)
                    for start, stop in ranges]
        else:
            jobs = [PickledRowsJob(images_path, int(start), int(stop), path, source.layout)
                    for (start, stop), path in zip(ranges, source.files, strict=True)]
    except (ValueError, TypeError):
        return None
    unreadable = {}
    if (partial / UNREADABLE_FILE).is_file():
        for line in (partial / UNREADABLE_FILE).read_text().splitlines():
            try:
                row, file, reason = json.loads(line)
                unreadable[int(row)] = (str(file), str(reason))
            except (ValueError, TypeError):
                continue  # a line cut off by the kill: its chunk is not marked done, so it is decoded again
    return _Partial(partial, jobs, done, unreadable, len(labels))


def _new_partial(partial: Path, source: CacheSource, workers: int) -> _Partial:
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    images_path = partial / IMAGES_FILE
    plan = source.plan(images_path, workers)
    count = len(plan.labels)
    _check_room(source, partial, count * source.in_chans * source.img_size ** 2)
    np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8,
                              shape=(count, source.in_chans, source.img_size, source.img_size)).flush()
    np.save(partial / LABELS_FILE, plan.labels)
    np.save(partial / DONE_FILE, np.zeros(len(plan.jobs), dtype=bool))
    write_json_atomic(partial / BUILD_FILE, _build_record(source, count, plan.jobs))
    return _Partial(partial, plan.jobs, np.load(partial / DONE_FILE, mmap_mode="r+"), {}, count)


def _check_room(source: CacheSource, partial: Path, needed: int) -> None:
    free = shutil.disk_usage(partial).free
    if free < needed:
        shutil.rmtree(partial, ignore_errors=True)
        raise UsageError(f"image cache {source.folder}: {format_bytes(needed)} of images and {source.folder.parent} has "
                         f"{format_bytes(free)} free; expected a --cache-dir with room for it")


def _workers(jobs: int, memory_per_job: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if memory_per_job:
        import psutil

        cores = min(cores, max(1, psutil.virtual_memory().available // memory_per_job))
    return max(1, min(cores, jobs))


def _build(source: CacheSource, folder: Path) -> None:
    started = time.monotonic()
    partial = folder.with_name(folder.name + ".partial")
    cores = _workers(10**9, 0)
    state = _resumed_partial(partial, source) if partial.is_dir() else None
    if state is None:
        state = _new_partial(partial, source, cores)
    else:
        log.info(f"image cache {folder}: resuming the build cut off at {int(state.done.sum())} of "
                 f"{len(state.jobs)} chunks")
    left = [index for index, done in enumerate(state.done) if not done]
    image_bytes = source.in_chans * source.img_size ** 2
    rows_left = sum(state.jobs[index].stop - state.jobs[index].start for index in left)
    memory = (max((os.path.getsize(job.path) for job in state.jobs if isinstance(job, PickledRowsJob)), default=0)
              * PICKLE_MEMORY_FACTOR)
    workers = _workers(len(left), memory) if rows_left >= POOL_THRESHOLD or memory else 1
    log.info(f"image cache: {state.count:,} images of {source.dataset} at {source.img_size} px, "
             f"{format_bytes(state.count * image_bytes)}, into {folder} ({format_bytes(shutil.disk_usage(partial).free)}"
             f" free); {rows_left:,} to decode on {workers} process{'es' if workers > 1 else ''}")
    meter = _Meter(source.dataset, rows_left)
    if workers == 1:
        for index in left:
            state.record(index, state.jobs[index].run())
            meter.advance(state.jobs[index].stop - state.jobs[index].start)
    else:
        Image.init()  # every format plugin imported before the fork, so no child imports one
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(POOL_START)) as pool:
            futures = {pool.submit(state.jobs[index].run): index for index in left}
            for future in as_completed(futures):
                index = futures[future]
                state.record(index, future.result())
                meter.advance(state.jobs[index].stop - state.jobs[index].start)
    _finish(source, folder, state, time.monotonic() - started)


def _finish(source: CacheSource, folder: Path, state: _Partial, seconds: float) -> None:
    """The manifest, the files on disk, then the folder moved into place (an older cache moved aside first)."""
    unreadable = [UnreadableImage(row, *state.unreadable[row]) for row in sorted(state.unreadable)]
    manifest = CacheManifest(
        format=CACHE_FORMAT, identity=source.identity, fingerprint=source.fingerprint, dataset=source.dataset,
        source=source.kind, source_files=len(source.files), count=state.count, img_size=source.img_size,
        in_chans=source.in_chans, method=source.method, split_version=SPLIT_VERSION, qkvnas=version("qkvnas"),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(seconds, 1), unreadable=unreadable)
    with open(state.folder / IMAGES_FILE, "rb") as images:
        os.fsync(images.fileno())
    for leftover in (BUILD_FILE, DONE_FILE, UNREADABLE_FILE):
        (state.folder / leftover).unlink(missing_ok=True)
    write_json_atomic(state.folder / MANIFEST_FILE, dataclasses.asdict(manifest))
    stale = folder.with_name(f"{folder.name}.stale-{os.getpid()}")
    if folder.exists():
        os.rename(folder, stale)
    os.rename(state.folder, folder)
    shutil.rmtree(stale, ignore_errors=True)
    log.info(f"image cache {folder}: {state.count:,} images in {format_duration(seconds)}")
    if unreadable:
        named = "; ".join(f"{image.file} ({image.reason})" for image in unreadable[:5])
        more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        log.warning(f"image cache {folder}: {len(unreadable)} of {state.count:,} images could not be decoded and are "
                    f"left out of every split (listed in {folder / MANIFEST_FILE}): {named}{more}")


@dataclass
class _Meter:
    """The build's progress as log lines, at most one every PROGRESS_EVERY_S: a bar, the rate and the time left."""

    dataset: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    say: Callable[[str], None] = log.info

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        filled = round(20 * self.done / max(self.total, 1))
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        self.say(f"image cache [{'#' * filled}{'.' * (20 - filled)}] {self.done:,}/{self.total:,} images of "
                 f"{self.dataset}, {rate:,.0f} images/s, {format_duration(left)} left")
