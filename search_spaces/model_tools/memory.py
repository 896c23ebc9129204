"""Whether a model fits in memory, decided before it is built: its parameters are counted on the meta device.

A model is built on the CPU and then moved to its device; training holds its weights, their gradients and
AdamW's two moments there (4 copies), inference the weights alone. Activations come on top and depend on the
batch: a model refused here can never run, one admitted may still need a smaller batch.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from qkvnas_core.errors import UsageError
from qkvnas_core.units import format_bytes
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_params
from search_spaces.shape import DataShape

BYTES_PER_PARAM = 4  # float32 weights, gradients and optimizer moments
TRAINING_COPIES = 4  # weights, gradients, AdamW's exp_avg and exp_avg_sq
INFERENCE_COPIES = 1


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device`: CUDA's free memory, or the RAM the kernel can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        # MemAvailable counts the page cache the kernel would drop; free pages alone undercount it by far.
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(arch: ArchConfig, shape: DataShape, device: torch.device, copies: int) -> int:
    """The parameter count of `arch` at `shape`, or one UsageError naming the model's size when `copies` of its
    parameters do not fit in `device`'s available memory (and one copy in RAM, where every model is built)."""
    params = count_params(arch, shape)
    places = [(device, copies)] + ([(torch.device("cpu"), INFERENCE_COPIES)] if device.type != "cpu" else [])
    for place, place_copies in places:
        needed = params * place_copies * BYTES_PER_PARAM
        available = available_memory(place)
        if needed > available:
            what = "weights" if place_copies == INFERENCE_COPIES else "weights, gradients and AdamW state"
            raise UsageError(f"model {arch.arch_id} ({arch.summary()}) has {params:,} parameters: its {what} need "
                             f"{format_bytes(needed)} but {place} has {format_bytes(available)} available; expected a "
                             "smaller model")
    return params
