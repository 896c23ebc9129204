"""Which side waits: today's file path against the image cache, on a generated folder of ImageNet-sized JPEGs.

    python benchmarks/data_path.py                       # 1,320 JPEGs of 500 x 375 at quality 90, 32 and 64 px
    python benchmarks/data_path.py --images 2640 --sizes 64 --json figures.json

Measured, each in one run on the same files (images/s; per core = one process or one loader worker):
- files: today's path for an image folder, FileImageDataset with timm's training transform through a DataLoader,
  one worker and one per core;
- cache (host): a random batch gathered from the memory-mapped cache, ready to send to the device (what a trial's
  host does per step on a GPU machine), one process and one per core;
- cache (CPU device): the same batch cropped, flipped and normalised, as a CPU trial gets it (CachedBatches);
- build: decoding and resizing into the cache, per core, with PIL's reduced-scale JPEG decoding (draft mode, as
  the cache builds) and without it;
- memory: 1, 2 and 4 trial processes each reading the whole cache through batches: the proportional set size
  (PSS) of the cache's pages summed over the processes, and of the processes whole;
- step: a 3M XCiT's training step (forward, backward, AdamW) at the same size, on every core, so the reader sees
  which side waits.
Goals (ratios of this run): the cache's host side at least 20x the file path per core at 64 px; four trials'
memory (the cache's pages) under 1.3x one trial's.

    python benchmarks/data_path.py --device cuda --record OUT/figures.jsonl   # gpu_check.sh's step, 64 px

On a GPU: training batches delivered to the GPU by the file path (a DataLoader worker per core, pinned memory) and
by the cache (gathered on the host and sent a batch at a time, and copied to the GPU whole, as a split that fits
1/32 of its memory is), beside the same XCiT's training step there (bf16 autocast, batch 256), one record for
benchmarks/gpu_summary.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dataset_files import write_photo_folders  # noqa: E402  (the generator the tests use)
from trainers.datasets import image_cache  # noqa: E402
from trainers.datasets.image_cache import decode_image, image_files, open_cache  # noqa: E402

SECONDS = 3.0  # each rate is measured for about this long
BATCH = 128


def cores() -> int:
    return len(os.sched_getaffinity(0))


def rate(work, seconds: float = SECONDS) -> float:
    """Images per second of `work()` (which returns how many images it handled), run for about `seconds`; on CUDA
    the time includes the device finishing what was queued."""
    work()  # warm: first pages, first imports
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    synchronize()
    return done / (time.perf_counter() - started)


def file_path_rate(paths: list[str], labels: list[int], size: int, workers: int,
                   device: torch.device = torch.device("cpu")) -> float:
    """Today's path: the JPEGs through timm's training transform in a DataLoader (pinned and sent, on CUDA)."""
    from search_spaces.shape import DataShape
    from trainers.batches import FileImageDataset, image_transform
    from trainers.datasets.splits import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, FileSplit
    from trainers.recipe import PROXY

    info = DatasetInfo("imagenet", DataShape(size, 3, 1000, 8), IMAGENET_MEAN, IMAGENET_STD)
    dataset = FileImageDataset(FileSplit(paths, labels), image_transform(info, PROXY, train=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                         persistent_workers=True, pin_memory=device.type == "cuda")
    iterator = iter(loader)

    def batch() -> int:
        nonlocal iterator
        try:
            images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            images, _ = next(iterator)
        images.to(device, non_blocking=True)
        return len(images)

    return rate(batch)


def _gather_rate(folder_source, seed: int) -> float:
    cache = open_cache(folder_source)
    generator = np.random.default_rng(seed)
    count = len(cache.images)

    def batch() -> int:
        rows = generator.integers(0, count, BATCH)
        torch.from_numpy(cache.images[rows])
        return BATCH

    return rate(batch)


def cache_host_rate(source, processes: int) -> float:
    """Random batches gathered from the cache by `processes` processes at once, their rates summed."""
    if processes == 1:
        return _gather_rate(source, 0)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.starmap(_gather_rate, [(source, seed) for seed in range(processes)]))


def cache_device_rate(source, size: int, device: torch.device = torch.device("cpu"), batch_size: int = BATCH,
                      resident: bool = False) -> float:
    """CachedBatches: gathered, random-resized-cropped, flipped and normalised on whole batches on `device`; on
    CUDA sent a batch at a time, or, `resident`, copied there whole first."""
    from search_spaces.shape import DataShape
    from trainers import batches as batches_module
    from trainers.batches import make_batches
    from trainers.datasets.splits import IMAGENET_MEAN, IMAGENET_STD, CachedSplit, DatasetInfo
    from trainers.recipe import PROXY

    cache = open_cache(source)
    split = CachedSplit(source, np.arange(len(cache.images)), np.array(cache.labels))
    info = DatasetInfo("imagenet", DataShape(size, 3, 1000, 8), IMAGENET_MEAN, IMAGENET_STD)
    share = batches_module.DEVICE_RESIDENT_SHARE
    batches_module.DEVICE_RESIDENT_SHARE = share if resident else 0.0
    try:
        batches = make_batches(split, info, PROXY, device, batch_size=batch_size, train=True)
    finally:
        batches_module.DEVICE_RESIDENT_SHARE = share
    epoch = 0
    iterator = batches.epoch(epoch)

    def batch() -> int:
        nonlocal iterator, epoch
        try:
            images, _ = next(iterator)
        except StopIteration:
            epoch += 1
            iterator = batches.epoch(epoch)
            images, _ = next(iterator)
        return len(images)

    return rate(batch)


def _decode_without_draft(path: str, size: int) -> np.ndarray:
    """The cache's method without the reduced-scale decode: the whole JPEG decoded, then resized."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    scale = size / min(width, height)
    resized = rgb.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def build_rate(paths: list[str], size: int, draft: bool) -> float:
    """Decoding and resizing, one core."""
    decode = (lambda path: decode_image(path, size)) if draft else (lambda path: _decode_without_draft(path, size))
    position = 0

    def one() -> int:
        nonlocal position
        decode(paths[position % len(paths)])
        position += 1
        return 1

    return rate(one)


def _read_whole(source, ready, done) -> None:
    """A trial's reads: every row of the cache, through random batches, then wait to be measured. Spawned, as Ray's
    workers are separate processes (a fork would share the parent's pages and hang torch's OpenMP pool)."""
    cache = open_cache(source)
    order = np.random.default_rng(os.getpid()).permutation(len(cache.images))
    for start in range(0, len(order), BATCH):
        torch.from_numpy(cache.images[order[start:start + BATCH]]).float().sum()
    ready.set()
    done.wait()


def memory(source, processes: int) -> dict[str, float]:
    """(MB) the cache's pages and the processes whole, PSS summed over `processes` readers."""
    context = multiprocessing.get_context("spawn")
    done = context.Event()
    readers = []
    for _ in range(processes):
        ready = context.Event()
        reader = context.Process(target=_read_whole, args=(source, ready, done))
        reader.start()
        readers.append((reader, ready))
    for _, ready in readers:
        ready.wait()
    cache_file = str(source.folder / "images.npy")
    cache_pss = total_pss = 0
    for reader, _ in readers:
        process = psutil.Process(reader.pid)
        cache_pss += sum(mapped.pss for mapped in process.memory_maps() if mapped.path == cache_file)
        total_pss += process.memory_full_info().pss
    done.set()
    for reader, _ in readers:
        reader.join()
    return {"cache_mb": cache_pss / 1e6, "total_mb": total_pss / 1e6}


def step_rate(size: int, device: torch.device = torch.device("cpu"), batch_size: int = 64) -> float:
    """A 3M XCiT (xcit-n12, patch fitted to the size) trained on random batches: forward, backward, AdamW (bf16
    autocast on CUDA, as the engine trains there)."""
    from search_spaces.build import build_model
    from search_spaces.presets import fit_patch_size, load_arch, patch_size_for
    from search_spaces.shape import DataShape

    arch = fit_patch_size(load_arch("xcit-n12"), size, patch_size_for(size))
    shape = DataShape(size, 3, 1000, arch.patch_size)
    model = build_model(arch, shape).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return len(images)

    return rate(step)


def measure_gpu(folder: Path, size: int, cache_dir: Path) -> dict:
    """The file path and the cache delivering training batches to the GPU, beside the model's step there."""
    device = torch.device("cuda")
    torch.zeros(1, device=device)  # CUDA initialised before any rate is timed
    paths, labels = listing(folder)
    source = image_files("imagenet", paths, labels, size, cache_dir)
    started = time.perf_counter()
    open_cache(source)
    return {
        "part": "data_path", "device": torch.cuda.get_device_name(device), "size": size, "images": len(paths),
        "cores": cores(), "build_all_cores_s": time.perf_counter() - started,
        "build_all_cores_img_s": len(paths) / (time.perf_counter() - started),
        "files_to_gpu_all_cores": file_path_rate(paths, labels, size, cores(), device),
        "cache_to_gpu_streamed": cache_device_rate(source, size, device, batch_size=256),
        "cache_to_gpu_resident": cache_device_rate(source, size, device, batch_size=256, resident=True),
        "step_gpu": step_rate(size, device, batch_size=256),
    }


def listing(folder: Path) -> tuple[list[str], list[int]]:
    train = sorted((folder / "train").rglob("*.JPEG"))
    classes = sorted({path.parent.name for path in train})
    return [str(path) for path in train], [classes.index(path.parent.name) for path in train]


def measure(folder: Path, sizes: list[int], cache_dir: Path) -> list[dict]:
    paths, labels = listing(folder)
    torch.set_num_threads(cores())
    rows = []
    for size in sizes:
        source = image_files("imagenet", paths, labels, size, cache_dir)
        started = time.perf_counter()
        open_cache(source)
        built_s = time.perf_counter() - started
        figures = {
            "size": size, "images": len(paths), "cores": cores(),
            "files_1_worker": file_path_rate(paths, labels, size, 1),
            "files_all_cores": file_path_rate(paths, labels, size, cores()),
            "cache_host_1_process": cache_host_rate(source, 1),
            "cache_host_all_cores": cache_host_rate(source, cores()),
            "cache_cpu_device_1_process": cache_device_rate(source, size),
            "build_per_core_draft": build_rate(paths, size, draft=True),
            "build_per_core_full_decode": build_rate(paths, size, draft=False),
            "build_all_cores_s": built_s,
            "step_all_cores": step_rate(size),
        }
        # the readers' pages alone: this process maps the cache no longer (a page it shared would halve theirs)
        image_cache._OPENED.clear()
        for processes in (1, 2, 4):
            for name, value in memory(source, processes).items():
                figures[f"memory_{processes}_trials_{name}"] = value
        figures["host_vs_files_per_core"] = figures["cache_host_1_process"] / figures["files_1_worker"]
        figures["memory_4_vs_1"] = figures["memory_4_trials_cache_mb"] / figures["memory_1_trials_cache_mb"]
        rows.append(figures)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| images/s at | files, 1 worker | files, all cores | cache host, 1 process | cache host, all cores "
             "| cache on the CPU device, 1 process | build per core, draft | build per core, full decode "
             "| 3M XCiT step, all cores |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['size']} px | {row['files_1_worker']:,.0f} | {row['files_all_cores']:,.0f} | "
                     f"{row['cache_host_1_process']:,.0f} | {row['cache_host_all_cores']:,.0f} | "
                     f"{row['cache_cpu_device_1_process']:,.0f} | {row['build_per_core_draft']:,.0f} | "
                     f"{row['build_per_core_full_decode']:,.0f} | {row['step_all_cores']:,.0f} |")
    lines += ["", "| memory (MB, PSS summed) at | cache pages: 1 trial | 2 trials | 4 trials | 4 vs 1 | "
                  "processes whole: 1 | 2 | 4 | cache host vs files, per core |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['size']} px | {row['memory_1_trials_cache_mb']:.1f} | "
                     f"{row['memory_2_trials_cache_mb']:.1f} | {row['memory_4_trials_cache_mb']:.1f} | "
                     f"**{row['memory_4_vs_1']:.2f}x** | {row['memory_1_trials_total_mb']:.0f} | "
                     f"{row['memory_2_trials_total_mb']:.0f} | {row['memory_4_trials_total_mb']:.0f} | "
                     f"**{row['host_vs_files_per_core']:.0f}x** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1320, help="training JPEGs generated (default 1320)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--sizes", default="32,64", help="comma-separated image sides (default 32,64)")
    parser.add_argument("--folder", type=Path, help="an existing train/<class>/*.JPEG folder instead of generating")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU figures at the largest of --sizes (default cpu)")
    parser.add_argument("--record", type=Path, help="with --device cuda: append the record to this figures.jsonl")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        from gpu_summary import append_record, data_path_line

        with tempfile.TemporaryDirectory() as work:
            folder = args.folder or write_photo_folders(Path(work) / "photos", args.classes,
                                                        args.images // args.classes)
            record = measure_gpu(folder, max(int(size) for size in args.sizes.split(",")), Path(work) / "cache")
        if args.record:
            append_record(args.record, record)
        print(data_path_line([record], {}))
        return 0
    with tempfile.TemporaryDirectory() as work:
        folder = args.folder or write_photo_folders(Path(work) / "photos", args.classes, args.images // args.classes)
        rows = measure(folder, [int(size) for size in args.sizes.split(",")], Path(work) / "cache")
    print(table(rows))
    goals = all(row["host_vs_files_per_core"] >= 20 for row in rows if row["size"] == 64) and all(
        row["memory_4_vs_1"] < 1.3 for row in rows)
    print(f"\ngoals (host >= 20x files per core at 64 px; four trials' cache memory < 1.3x one): "
          f"{'met' if goals else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
