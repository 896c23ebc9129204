"""Random learnable images of any size (a class pattern plus noise): for benchmarks, no files needed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qkvnas_core.errors import UsageError
from trainers.datasets.splits import SourceData, SourceRequest, TensorSplit, dataset_info

NOISE = 0.25
IMAGES_PER_CHUNK = 4096  # images held as float at once: ~0.2 GB at 64 px


def _split(patterns: torch.Tensor, count: int, seed: int) -> TensorSplit:
    """`count` images, classes balanced: each is its class's pattern plus Gaussian pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(patterns))[torch.randperm(count, generator=generator)]
    images = torch.empty((count, *patterns.shape[1:]), dtype=torch.uint8)
    for chunk in torch.arange(count).split(IMAGES_PER_CHUNK):
        noise = torch.randn((len(chunk), *patterns.shape[1:]), generator=generator) * NOISE
        images[chunk] = ((patterns[labels[chunk]] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorSplit(images, labels)


def read_synthetic(request: SourceRequest) -> SourceData:
    num_classes, size, count = request.synthetic_classes, request.synthetic_img_size, request.synthetic_train
    if num_classes < 2 or size < 2 or count < 2 * num_classes:
        raise UsageError(f"synthetic_classes={num_classes}, synthetic_img_size={size}, synthetic_train={count}: "
                         f"expected at least 2 classes, 2 px, and 2 training images per class")
    # low-frequency patterns (a 4x4 grid upsampled) survive the crops and resizes of augmentation
    grid = min(4, size)
    coarse = torch.rand((num_classes, 3, grid, grid), generator=torch.Generator().manual_seed(0))
    patterns = 0.2 + 0.6 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    info = dataset_info("synthetic", num_classes, size, 3, (0.5,) * 3, (0.26,) * 3,
                        tuple(f"class_{label}" for label in range(num_classes)))
    return SourceData(info, _split(patterns, count, seed=1), _split(patterns, max(num_classes, count // 5), seed=2))
