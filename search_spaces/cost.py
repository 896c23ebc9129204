"""What a model costs, from its ArchConfig alone: exact parameter count and FLOPs.

Parameters are counted on the meta device (no memory, well under 0.2 s per model). FLOPs are what
torch.utils.flop_counter counts for one image: 2 per multiply-add of matmuls, convolutions and attention.
Papers on ViTs usually print multiply-adds under the name FLOPs: that is `flops / 2` (`macs`).
Counting FLOPs runs the model on the meta device, several times the cost of building it; building alone already
refuses what cannot run at a shape (build.py checks the image and token counts), so a search that needs no FLOPs
builds its draws without running them (nas.engine.budget.Budget.measure).
"""
from __future__ import annotations

import functools

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.shape import IMAGENET, DataShape


class SkipMetaWrites(TorchFunctionMode):
    """In-place writes (weight init) to meta tensors have no values to write: skip their slow decompositions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            # torch.nn.init's functions pass their tensor by keyword (kaiming_uniform_(tensor=...)).
            target = args[0] if args else next(iter(kwargs.values()), None)
            if getattr(target, "is_meta", False):
                return target
        return func(*args, **kwargs)


def meta_model(arch: ArchConfig, shape: DataShape) -> torch.nn.Module:
    """The model with every tensor on the meta device: shapes only, built in a few milliseconds."""
    with torch.device("meta"), SkipMetaWrites():
        return build_model(arch, shape)


# Searches and feasibility checks draw the same architectures again and again: each is counted once.
@functools.lru_cache(maxsize=4096)
def count_params(arch: ArchConfig, shape: DataShape = IMAGENET) -> int:
    return sum(p.numel() for p in meta_model(arch, shape).parameters())


@functools.lru_cache(maxsize=4096)
def count_flops(arch: ArchConfig, shape: DataShape = IMAGENET) -> int:
    """FLOPs of one forward pass on one image, counted on meta tensors (shapes only, no arithmetic)."""
    model = meta_model(arch, shape).eval()
    image = torch.empty(1, shape.in_chans, shape.img_size, shape.img_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return int(counter.get_total_flops())


def check_buildable(arch: ArchConfig, shape: DataShape) -> None:
    """Build `arch` for `shape` and run one image through it on the meta device, before any trial trains it.

    What cannot be built at this shape (a patch that does not tile the image, a Linformer projecting to more
    tokens than the images give) is a UsageError saying why. The pass is the FLOPs count's, cached: checking
    and then counting runs the model once.
    """
    count_flops(arch, shape)
