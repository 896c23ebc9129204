"""Training-free scores of an untrained model on one minibatch ("zero-cost proxies"): higher is meant to predict
higher accuracy after training. Each takes the model as built (it is not changed) and one batch of images and labels.

- naswot: Mellor et al., "Neural Architecture Search without Training", ICML 2021 (arXiv 2006.04647): log|K| of the
  kernel of the images' binary activation codes (unit on or off before each activation), K_ij = units where images
  i and j agree.
- synflow: Tanaka et al., "Pruning neural networks without any data by iteratively conserving synaptic flow",
  NeurIPS 2020 (arXiv 2006.05467), as a NAS proxy by Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
  ICLR 2021 (arXiv 2101.08134): sum |theta * dR/dtheta| with every parameter replaced by its absolute value, an
  all-ones input and R the sum of the outputs, in float64.
- grad_norm: Abdelfattah et al. (above): the sum over parameter tensors of the L2 norm of the loss gradient.
- snip: Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019
  (arXiv 1810.02340), summed over the network as Abdelfattah et al. do: sum |theta * dL/dtheta|.
- zico: Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023
  (arXiv 2301.11300): over the weights of each linear and convolution layer, log of the sum of mean |g| / std(g)
  across sub-batches (the minibatch split in two), summed over layers.

The loss is cross-entropy on the given labels; the model is scored in eval mode (no dropout or drop path), on a copy.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU)
ZICO_SPLITS = 2


def _scoring_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    scored = copy.deepcopy(model).to(dtype).eval()
    scored.zero_grad(set_to_none=True)
    return scored


def _loss_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """A copy of `model` whose .grad hold the cross-entropy gradient on the batch."""
    scored = _scoring_copy(model)
    F.cross_entropy(scored(images), labels).backward()
    return scored


def _per_image(x: torch.Tensor, batch: int) -> torch.Tensor | None:
    """An activation's input as (batch, units): batch-first (B, ...), or stacked ahead of the batch (T, B * N, ...),
    as the QKV embedding holds Q, K and V; None when rows are not images in order (a mixture of experts' routed
    tokens)."""
    if x.dim() >= 2 and x.shape[0] == batch:
        return x.reshape(batch, -1)
    if x.dim() >= 3 and x.shape[1] % batch == 0:
        return x.reshape(x.shape[0], batch, -1).transpose(0, 1).reshape(batch, -1)
    return None


def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """log|K_H| (slogdet) with K_H = c c^T + (1 - c)(1 - c)^T, c the binary codes (pre-activation > 0) of each image
    over every activation layer whose input keeps images apart (`_per_image`). -inf when K_H is singular: at
    initialisation every image shares one pattern (timm's SwiGLU starts its gates' bias at 1, so all are on)."""
    scored = _scoring_copy(model)
    batch = len(images)
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def add_codes(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        units = _per_image(inputs[0].detach(), batch)
        if units is not None:
            codes = (units > 0).to(torch.float64)
            kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [module.register_forward_hook(add_codes) for module in scored.modules()
               if isinstance(module, ACTIVATIONS)]
    try:
        with torch.no_grad():
            scored(images)
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """sum |theta * dR/dtheta| with theta -> |theta|, input all ones (one image of the batch's shape), R = sum of
    the outputs; float64 against overflow in deep models."""
    scored = _scoring_copy(model, torch.float64)
    with torch.no_grad():
        for parameter in scored.parameters():
            parameter.abs_()
    scored(torch.ones((1, *images.shape[1:]), dtype=torch.float64)).sum().backward()
    return _saliency(scored)


def _saliency(scored: nn.Module) -> float:
    """sum |theta * dL/dtheta| over the parameters with a gradient, read outside autograd."""
    with torch.no_grad():
        return float(sum((parameter * parameter.grad).abs().sum() for parameter in scored.parameters()
                         if parameter.grad is not None))


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    scored = _loss_gradients(model, images, labels)
    return float(sum(parameter.grad.norm() for parameter in scored.parameters() if parameter.grad is not None))


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return _saliency(_loss_gradients(model, images, labels))


def zico(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """sum over linear/conv layers of log(sum over weights of mean |g| / std g), mean and std (ddof 0) across the
    sub-batches; weights whose gradient does not vary are left out, as is a layer whose sum is 0."""
    scored = _scoring_copy(model)
    layers = [module for module in scored.modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    gradients: list[list[torch.Tensor]] = [[] for _ in layers]
    for part_images, part_labels in zip(images.chunk(ZICO_SPLITS), labels.chunk(ZICO_SPLITS)):
        scored.zero_grad(set_to_none=True)
        F.cross_entropy(scored(part_images), part_labels).backward()
        for index, layer in enumerate(layers):
            if layer.weight.grad is not None:
                gradients[index].append(layer.weight.grad.detach().flatten().clone())
    score = 0.0
    for per_split in gradients:
        if len(per_split) < 2:
            continue
        stacked = torch.stack(per_split)
        std = stacked.std(dim=0, correction=0)
        varying = std > 0
        total = float((stacked.abs().mean(dim=0)[varying] / std[varying]).sum())
        if total > 0:
            score += math.log(total)
    return score


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "naswot": naswot, "synflow": synflow, "grad_norm": grad_norm, "snip": snip, "zico": zico}
