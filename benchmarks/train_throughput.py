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
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    parser.add_argument("--img-size", type=int, default=None, help="default 224 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 50 CUDA, 15 CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (default 5)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the engine's model (auto: on CUDA only)")
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


def main() -> int:
    import timm

    from search_spaces.build import build_model
    from search_spaces.presets import PRESETS
    from trainers.data import load_dataset
    from trainers.batches import TensorBatches
    from trainers.engine import train_epoch
    from trainers.optim import build_training
    from trainers.runtime import configure_threads, distributed, select_device
    from trainers.recipe import get_recipe

    args = parse_args()
    device = select_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (256 if cuda else 32)
    img_size = args.img_size or (224 if cuda else 64)
    steps = args.steps or (50 if cuda else 15)
    compile_engine = args.compile == "on" or (args.compile == "auto" and cuda)
    configure_threads(device, distributed())
    if cuda:
        torch.backends.cudnn.benchmark = True

    num_classes = 10
    data = load_dataset("synthetic", synthetic_train=batch_size * steps, synthetic_classes=num_classes,
                        synthetic_img_size=img_size)
    info = data.info
    recipe = get_recipe("proxy", batch_size=batch_size, label_smoothing=0.0, warmup_epochs=0)

    torch.manual_seed(0)
    engine_model = build_model(PRESETS["xcit-n12"], info.shape)
    batches = TensorBatches(data.train, info, device, batch_size=batch_size, train=True, seed=0,
                            crop_padding=recipe.crop_padding, hflip=recipe.hflip, channels_last=cuda)
    training = build_training(engine_model, recipe, num_classes, device, steps_per_epoch=len(batches),
                              compile=compile_engine)

    torch.manual_seed(0)
    timm_model = timm.create_model("xcit_nano_12_p16_224", num_classes=num_classes, img_size=img_size).to(device)
    optimizer = torch.optim.AdamW(timm_model.parameters(), lr=recipe.effective_lr, weight_decay=recipe.weight_decay)
    scale = 1.0 / (255.0 * torch.tensor(info.std, device=device).view(1, -1, 1, 1))
    shift = -torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * scale * 255.0
    images = data.train.images.to(device).float() * scale + shift
    labels = data.train.labels.to(device)
    order = torch.randperm(len(labels), device=device)
    baseline_batches = [(images[index], labels[index]) for index in order[:steps * batch_size].split(batch_size)]

    engine_params = sum(p.numel() for p in engine_model.parameters())
    timm_params = sum(p.numel() for p in timm_model.parameters())

    def run_engine(epoch: int) -> None:
        train_epoch(training, batches, epoch, max_steps=steps)

    def run_baseline() -> None:
        timm_model.train()
        for batch_images, batch_labels in baseline_batches:
            loss = F.cross_entropy(timm_model(batch_images), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    print(f"device {device}, {img_size} px, batch {batch_size}, {steps} steps x {args.rounds} rounds, "
          f"engine compile {'on' if compile_engine else 'off'}, threads {torch.get_num_threads()}")
    print(f"params: engine xcit-n12 {engine_params:,}, timm xcit_nano_12_p16_224 {timm_params:,}")
    timed(device, lambda: run_engine(0))
    timed(device, run_baseline)
    engine_seconds, baseline_seconds = [], []
    for round_index in range(args.rounds):
        engine_seconds.append(timed(device, lambda: run_engine(round_index + 1)))
        baseline_seconds.append(timed(device, run_baseline))
    images_per_round = steps * batch_size
    engine_rate = images_per_round / statistics.median(engine_seconds)
    baseline_rate = images_per_round / statistics.median(baseline_seconds)
    print(f"engine   {engine_rate:10.1f} img/s  (rounds: {', '.join(f'{s:.2f}s' for s in engine_seconds)})")
    print(f"timm     {baseline_rate:10.1f} img/s  (rounds: {', '.join(f'{s:.2f}s' for s in baseline_seconds)})")
    print(f"ratio    {engine_rate / baseline_rate:.2f}x engine / timm eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
