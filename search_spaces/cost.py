"""What a model costs, from its ArchConfig alone: exact parameter count and FLOPs.

Parameters are counted on the meta device (no memory, well under 0.2 s per model). FLOPs are what
torch.utils.flop_counter counts for one image: 2 per multiply-add of matmuls, convolutions and attention.
Papers on ViTs usually print multiply-adds under the name FLOPs: that is `flops / 2` (`macs`).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model


def count_params(arch: ArchConfig, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3) -> int:
    with torch.device("meta"):
        model = build_model(arch, num_classes, img_size, in_chans)
    return sum(p.numel() for p in model.parameters())


def count_flops(arch: ArchConfig, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3) -> int:
    """FLOPs of one forward pass on one image, counted on meta tensors (shapes only, no arithmetic)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, img_size, in_chans).eval()
        image = torch.empty(1, in_chans, img_size, img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return int(counter.get_total_flops())
