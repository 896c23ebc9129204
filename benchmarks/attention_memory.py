"""Peak memory and time of one attention forward: softmax vs Performer vs Nystrom vs Linformer (ViX settings).

    python benchmarks/attention_memory.py                                  # CPU, 256 / 1,024 / 4,096 tokens
    python benchmarks/attention_memory.py --device cuda --grad             # a training forward on a GPU
    python benchmarks/attention_memory.py --tokens 256,1024 --softmax-backend math

ViX settings: dim 128, 4 heads of 32, Nystrom 64 landmarks, Linformer projected length 64, Performer's
default int(32 ln 32) = 110 features (and qkv bias, as in ViX). No rope, batch 1 unless told.

Peak memory is what one forward allocates above what was resident before it (weights, input), output
included. CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before.
CPU: the CPU allocator's allocation (+) and free (-) records that torch.profiler(profile_memory=True) keeps,
summed in time order; the peak is the largest running total. `--grad` keeps the autograd graph (what a
training step holds after its forward); without it the forward runs under no_grad. Times are medians of
`--repeats` forwards after three warm-up ones, taken without the profiler. Ratios are against softmax at the same
token count in the same run. Softmax goes through F.scaled_dot_product_attention, whose fused kernels do not
store the N x N matrix; `--softmax-backend math` forces the plain matmul-softmax-matmul that ViX's ViT ran.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import time
from collections.abc import Callable

# The profiler's tracing library logs every start and stop on stderr; only its errors matter here.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from search_spaces.attention import LinformerAttention, NystromAttention, PerformerAttention, SoftmaxAttention  # noqa: E402

KINDS = ("softmax", "performer", "nystrom", "linformer")
MIB = 2 ** 20


def build(kind: str, dim: int, heads: int, tokens: int, device: torch.device) -> nn.Module:
    if kind == "softmax":
        return SoftmaxAttention(dim, num_heads=heads, device=device)
    if kind == "performer":
        return PerformerAttention(dim, num_heads=heads, qkv_bias=True, device=device)
    if kind == "nystrom":
        return NystromAttention(dim, num_heads=heads, num_landmarks=64, device=device)
    return LinformerAttention(dim, num_heads=heads, seq_len=tokens, proj_len=64, device=device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(forward: Callable[[], object], device: torch.device) -> int:
    """Bytes one call allocates at its peak above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward()
    records = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                     if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU)
    return max(itertools.accumulate(nbytes for _, nbytes in records), default=0)


def median_ms(forward: Callable[[], object], device: torch.device, repeats: int) -> float:
    for _ in range(3):
        forward()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        forward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(kind: str, tokens: int, args: argparse.Namespace, device: torch.device) -> tuple[int, float]:
    torch.manual_seed(0)
    module = build(kind, args.dim, args.heads, tokens, device)
    x = torch.randn(args.batch, tokens, args.dim, device=device, requires_grad=args.grad)

    def forward() -> None:
        backend = sdpa_kernel(SDPBackend.MATH) if args.softmax_backend == "math" else contextlib.nullcontext()
        with backend, torch.set_grad_enabled(args.grad):
            module(x)

    return peak_bytes(forward, device), median_ms(forward, device, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tokens", default="256,1024,4096", help="comma-separated token counts")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--grad", action="store_true", help="keep the autograd graph (a training forward)")
    parser.add_argument("--softmax-backend", choices=("default", "math"), default="default")
    args = parser.parse_args()
    device = torch.device(args.device)
    token_counts = [int(t) for t in args.tokens.split(",")]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"attention forward on {where}: dim {args.dim}, {args.heads} heads, batch {args.batch}, "
          f"{'with' if args.grad else 'no'} grad, softmax SDPA backend {args.softmax_backend}, "
          f"median of {args.repeats}\n")
    print("| tokens | attention | peak MiB | vs softmax | median ms | vs softmax |")
    print("|---:|---|---:|---:|---:|---:|")
    for tokens in token_counts:
        results = {kind: measure(kind, tokens, args, device) for kind in KINDS}
        base_bytes, base_ms = results["softmax"]
        for kind, (nbytes, ms) in results.items():
            print(f"| {tokens:,} | {kind} | {nbytes / MIB:.2f} | {nbytes / base_bytes:.2f}x | {ms:.2f} | "
                  f"{ms / base_ms:.2f}x |")


if __name__ == "__main__":
    main()
