"""Inference speed of a built model: latency at batch 1 and throughput at a large batch."""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from search_spaces.model_tools.device import parse_device
from search_spaces.shape import DataShape


def device_name(device: torch.device) -> str:
    """What the timings were taken on, for the tables that store them."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def _median_seconds(model: nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time of one forward pass, after `warmup` passes (allocator, kernel choice, caches)."""
    synchronize = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(images)
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images)
        # CUDA kernels run asynchronously: wait for them, or only the launch is timed.
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latency(model: nn.Module, shape: DataShape, device: str | torch.device = "cpu",
                    batch_sizes: Sequence[int] = (1, 64), warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Time inference in eval mode: latency_ms at batch_sizes[0], throughput (images/s) at batch_sizes[-1].

    Each is the median of `repeats` timed passes after `warmup` untimed ones, on random images of `shape`.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes={list(batch_sizes)}: expected one or more positive batch sizes")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup}, repeats={repeats}: expected warmup >= 0 and repeats >= 1")
    device = parse_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    seconds = {}
    with torch.inference_mode():
        for batch_size in dict.fromkeys((batch_sizes[0], batch_sizes[-1])):
            images = torch.randn(batch_size, shape.in_chans, shape.img_size, shape.img_size, device=device)
            seconds[batch_size] = _median_seconds(model, images, warmup, repeats)
    return {
        "latency_ms": seconds[batch_sizes[0]] * 1000.0,
        "throughput": batch_sizes[-1] / seconds[batch_sizes[-1]],
    }
