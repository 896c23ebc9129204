"""Where and how a training runs: the device, CPU threads, seeds, and this process's place in torch.distributed.

Distributed: when torch.distributed is initialised (torchrun; see `init_distributed`) BatchNorm statistics
cover the global batch through `sync_batchnorm` (torch's SyncBatchNorm on CUDA, `CrossRankBatchNorm2d` on
CPU, where SyncBatchNorm does not run).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from qkvnas_core.log import logger
from search_spaces.model_tools.device import DEFAULT_DEVICE, parse_device


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torch.distributed job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def distributed() -> Distributed:
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                       int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


class MainRankOnly(logging.Filter):
    """Passes a record on rank 0 only: every torchrun rank runs the same code, and one of them speaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return distributed().is_main


def main_rank_logger(name: str) -> logging.Logger:
    """`logger(name)` for code every torchrun rank runs: its records are made on rank 0 only."""
    log = logger(name)
    if not any(isinstance(each, MainRankOnly) for each in log.filters):
        log.addFilter(MainRankOnly())
    return log


def init_distributed(device: str = DEFAULT_DEVICE) -> Distributed:
    """Join the job torchrun describes in the environment: nccl on CUDA, gloo on CPU. A no-op without torchrun,
    but for the device, checked first (a bad one is one UsageError before anything is read or written)."""
    use_cuda = parse_device(device).type == "cuda"
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or (dist.is_available() and dist.is_initialized()):
        return distributed()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return distributed()


def select_device(name: str | torch.device | None = None) -> torch.device:
    """The device this process trains on: `name` as `parse_device` reads it (None: auto), a bare CUDA meaning this
    rank's GPU under torchrun."""
    device = name if isinstance(name, torch.device) else parse_device(DEFAULT_DEVICE if name is None else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", distributed().local_rank if distributed().active else 0)
    return device


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads slow small matmuls down)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text(), topology.joinpath("core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def configure_threads(device: torch.device, world: Distributed) -> None:
    """CPU: at most one intra-op thread per physical core, shared among this machine's ranks.

    Only ever lowers the count, so a smaller one set by the caller (a search trial's share) or by
    OMP_NUM_THREADS stays.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), physical_cores() // world.local_world_size)))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): call before building a model for reproducible weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random stream of one epoch: resuming at an epoch boundary replays it exactly."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)



class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(sum) whose gradient is the all_reduce(sum) of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, for gloo/CPU where SyncBatchNorm is CUDA-only.

    Sums and squared sums are all-reduced with autograd-aware collectives, so the gradients are those of
    one BatchNorm over the whole batch (as SyncBatchNorm's are).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        channels = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), x.new_full((1,), x.numel() / channels)])
        total = _SumAcrossRanks.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels:2 * channels] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Give BatchNorm layers global-batch statistics: torch's SyncBatchNorm on CUDA, CrossRankBatchNorm2d on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats and child.momentum:
                replacement = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum).to(device)
                replacement.load_state_dict(child.state_dict())
                setattr(parent, name, replacement)
    return model

