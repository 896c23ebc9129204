"""Training images/s: this engine on xcit-n12 against a plain eager timm loop on xcit_nano_12_p16_224.

Both sides train the same architecture (patch 16, 12 blocks, dim 128) with AdamW and cross-entropy on the
same synthetic images, at the same batch on the same device, in one process. They take turns in rounds
(warm-up round first, torch.compile included there) and each side's median round is compared.

- engine: `trainers.engine.train_epoch` over `TensorBatches`, the exact loop `fit` runs: uint8 images on
  the device, crop/flip/normalise on whole batches, bf16 autocast + channels-last + fused AdamW +
  torch.compile on CUDA; fused AdamW and float32 on CPU.
- baseline: `timm.create_model`, `torch.optim.AdamW` defaults, float32, `F.cross_entropy`, batches already
  normalised and resident on the device (no loader cost at all: the strongest plain eager loop).

    python benchmarks/train_throughput.py                      # CPU: 64 px, batch 32
    python benchmarks/train_throughput.py --device cuda        # CUDA: 224 px, batch 256, compiled
    python benchmarks/train_throughput.py --device cuda --compile both --record OUT/figures.jsonl   # gpu_check.sh

`--compile both` times the engine eager, then compiled, each against timm in its own rounds; the first (warm-up)
round of each is timed too, so compiling's cost shows beside its saving. `--record` appends each comparison as a
JSON line for benchmarks/gpu_summary.py.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    parser.add_argument("--img-size", type=int, default=None, help="default 224 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 50 CUDA, 15 CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (default 5)")
    parser.add_argument("--compile", choices=("auto", "on", "off", "both"), default="auto",
                        help="torch.compile the engine's model (auto: on CUDA only; both: eager, then compiled)")
    parser.add_argument("--record", type=Path, default=None, metavar="FILE",
                        help="append each comparison's figures to FILE as a JSON line (gpu_summary.py reads them)")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], None]) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def take_turns(device: torch.device, engine: Callable[[int], None], baseline: Callable[[], None],
                  rounds: int) -> tuple[float, list[float], list[float]]:
    """(the engine's warm-up seconds, its rounds' seconds, the baseline's): a warm-up round each (compile, cudnn's
    autotuning, the allocator), then rounds taking turns, so both sides see the same machine."""
    warmup = timed(device, lambda: engine(0))
    timed(device, baseline)
    engine_seconds, baseline_seconds = [], []
    for round_index in range(rounds):
        engine_seconds.append(timed(device, lambda: engine(round_index + 1)))
        baseline_seconds.append(timed(device, baseline))
    return warmup, engine_seconds, baseline_seconds


def main() -> int:
    import timm

    from gpu_summary import append_record
    from search_spaces.build import build_model
    from search_spaces.model_tools.latency import device_name
    from search_spaces.presets import PRESETS
    from trainers.datasets.registry import load_dataset
    from trainers.batches import TensorBatches
    from trainers.engine import train_epoch
    from trainers.holdout import DEFAULT_VAL_FRACTION
    from trainers.optim import build_training
    from trainers.runtime import configure_threads, distributed, select_device
    from trainers.recipe import get_recipe

    args = parse_args()
    device = select_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (256 if cuda else 32)
    img_size = args.img_size or (224 if cuda else 64)
    steps = args.steps or (50 if cuda else 15)
    modes = {"auto": [cuda], "on": [True], "off": [False], "both": [False, True]}[args.compile]
    configure_threads(device, distributed())
    if cuda:
        torch.backends.cudnn.benchmark = True

    num_classes = 10
    # load_dataset holds a validation share out of the images it draws: draw enough that `steps` full batches remain.
    data = load_dataset("synthetic", synthetic_train=math.ceil(batch_size * (steps + 1) / (1 - DEFAULT_VAL_FRACTION)),
                        synthetic_classes=num_classes, synthetic_img_size=img_size)
    info = data.info
    recipe = get_recipe("proxy", batch_size=batch_size, label_smoothing=0.0, warmup_epochs=0)

    torch.manual_seed(0)
    timm_model = timm.create_model("xcit_nano_12_p16_224", num_classes=num_classes, img_size=img_size).to(device)
    optimizer = torch.optim.AdamW(timm_model.parameters(), lr=recipe.effective_lr, weight_decay=recipe.weight_decay)
    scale = 1.0 / (255.0 * torch.tensor(info.std, device=device).view(1, -1, 1, 1))
    shift = -torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * scale * 255.0
    images = data.train.images.to(device).float() * scale + shift
    labels = data.train.labels.to(device)
    order = torch.randperm(len(labels), device=device)
    baseline_batches = [(images[index], labels[index]) for index in order[:steps * batch_size].split(batch_size)]
    timm_params = sum(p.numel() for p in timm_model.parameters())

    def run_baseline() -> None:
        timm_model.train()
        for batch_images, batch_labels in baseline_batches:
            loss = F.cross_entropy(timm_model(batch_images), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    images_per_round = steps * batch_size
    for compile_engine in modes:
        torch.manual_seed(0)
        engine_model = build_model(PRESETS["xcit-n12"], info.shape)
        batches = TensorBatches(data.train, info, device, batch_size=batch_size, train=True, seed=0,
                                crop_padding=recipe.crop_padding, hflip=recipe.hflip, channels_last=cuda)
        training = build_training(engine_model, recipe, num_classes, device, steps_per_epoch=len(batches),
                                  compile=compile_engine)
        engine_params = sum(p.numel() for p in engine_model.parameters())

        def run_engine(epoch: int) -> None:
            train_epoch(training, batches, epoch, max_steps=steps)

        print(f"device {device}, {img_size} px, batch {batch_size}, {steps} steps x {args.rounds} rounds, "
              f"engine compile {'on' if compile_engine else 'off'}, threads {torch.get_num_threads()}")
        print(f"params: engine xcit-n12 {engine_params:,}, timm xcit_nano_12_p16_224 {timm_params:,}")
        warmup, engine_seconds, baseline_seconds = take_turns(device, run_engine, run_baseline, args.rounds)
        engine_rate = images_per_round / statistics.median(engine_seconds)
        baseline_rate = images_per_round / statistics.median(baseline_seconds)
        print(f"engine   {engine_rate:10.1f} img/s  (rounds: {', '.join(f'{s:.2f}s' for s in engine_seconds)}; "
              f"warm-up {warmup:.1f}s)")
        print(f"timm     {baseline_rate:10.1f} img/s  (rounds: {', '.join(f'{s:.2f}s' for s in baseline_seconds)})")
        print(f"ratio    {engine_rate / baseline_rate:.2f}x engine / timm eager")
        if args.record is not None:
            append_record(args.record, {
                "part": "throughput", "mode": "compiled" if compile_engine else "eager", "device": device_name(device),
                "img_size": img_size, "batch_size": batch_size, "steps": steps, "rounds": args.rounds,
                "engine_img_s": engine_rate, "timm_eager_img_s": baseline_rate, "engine_warmup_s": warmup,
                "engine_params": engine_params, "timm_params": timm_params})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
