"""Training-free proxies against independent references written from their papers' formulas with plain autograd,
numpy and scipy, on tiny models of each backbone and QKV structure."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from torch.func import functional_call

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.proxies import PROXIES, grad_norm, naswot, snip, synflow, zico
from search_spaces.shape import DataShape

DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
TINY = {
    "xcit-fsne": ArchConfig(embed_dim=16, depth=2, num_heads=2, patch_size=2,
                            qkv={"layers": ("shared", "shared"), "code_size": 4}),
    "vit-sne": ArchConfig(backbone="vit", embed_dim=16, depth=2, num_heads=2, patch_size=2,
                          qkv={"layers": ("separate", "separate")}),
}


@pytest.fixture(params=sorted(TINY))
def model_and_batch(request):
    torch.manual_seed(0)
    model = build_model(TINY[request.param], DIGITS).eval()
    images = torch.randn(12, 1, 8, 8)
    labels = torch.randint(0, 10, (12,))
    return model, images, labels


def loss_gradients(model, images, labels):
    """(parameters, gradients of the cross-entropy) by torch.autograd.grad on a functional call."""
    params = {name: parameter.detach().clone().requires_grad_() for name, parameter in model.named_parameters()}
    loss = F.cross_entropy(functional_call(model, params, (images,)), labels)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [(params[name], grad) for name, grad in zip(params, grads) if grad is not None]


def test_synflow_is_sum_of_abs_theta_times_gradient_of_output_sum(model_and_batch):
    model, images, labels = model_and_batch
    reference = copy.deepcopy(model).double().eval()
    params = {name: parameter.detach().abs().requires_grad_() for name, parameter in reference.named_parameters()}
    output = functional_call(reference, params, (torch.ones(1, 1, 8, 8, dtype=torch.float64),))
    grads = torch.autograd.grad(output.sum(), list(params.values()), allow_unused=True)
    expected = sum(float((p * g).abs().sum().detach()) for p, g in zip(params.values(), grads) if g is not None)
    assert synflow(model, images, labels) == pytest.approx(expected, rel=1e-9)


def test_snip_and_grad_norm_match_autograd(model_and_batch):
    model, images, labels = model_and_batch
    pairs = loss_gradients(model, images, labels)
    assert snip(model, images, labels) == pytest.approx(sum(float((p * g).abs().sum().detach()) for p, g in pairs),
                                                        rel=1e-5)
    assert grad_norm(model, images, labels) == pytest.approx(
        sum(float(torch.sqrt((g.double() ** 2).sum())) for _, g in pairs), rel=1e-5)


def test_naswot_is_log_det_of_units_minus_hamming_distances(model_and_batch):
    model, images, labels = model_and_batch
    codes = []
    hooks = [module.register_forward_hook(lambda m, inputs, out: codes.append((inputs[0] > 0).flatten().numpy()))
             for module in model.modules() if isinstance(module, (torch.nn.ReLU, torch.nn.GELU, torch.nn.SiLU))]
    binary = []
    with torch.no_grad():
        for image in images:
            codes.clear()
            model(image[None])
            binary.append(np.concatenate(codes))
    for hook in hooks:
        hook.remove()
    binary = np.stack(binary)
    units = binary.shape[1]
    kernel = units - cdist(binary, binary, "hamming") * units  # agreements = units - disagreements
    assert naswot(model, images, labels) == pytest.approx(np.linalg.slogdet(kernel)[1], rel=1e-6)


def test_zico_matches_the_papers_formula_over_two_half_batches(model_and_batch):
    model, images, labels = model_and_batch
    layers = [name for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]
    per_half = []
    for half_images, half_labels in zip(images.chunk(2), labels.chunk(2)):
        grads = dict((name, g) for name, g in zip(
            [n for n, _ in model.named_parameters()],
            torch.autograd.grad(F.cross_entropy(model(half_images), half_labels), list(model.parameters()),
                                allow_unused=True)))
        per_half.append({layer: grads.get(f"{layer}.weight") for layer in layers})
    expected = 0.0
    for layer in layers:
        if any(half[layer] is None for half in per_half):
            continue
        stacked = np.stack([half[layer].flatten().numpy() for half in per_half])
        std = np.std(stacked, axis=0)
        nonzero = np.nonzero(std)[0]
        total = np.sum(np.mean(np.abs(stacked), axis=0)[nonzero] / std[nonzero])
        if total != 0:
            expected += np.log(total)
    assert zico(model, images, labels) == pytest.approx(expected, rel=1e-5)


def test_proxies_leave_the_model_unchanged_and_warn_nothing(model_and_batch):
    model, images, labels = model_and_batch
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a search prints a proxy's warnings on every draw it scores
        for proxy in PROXIES.values():
            proxy(model, images, labels)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("space", ["qkv", "lite", "paper"])
def test_every_proxy_scores_draws_of_every_space(space):
    from nas.engine.budget import Budget, feasible_draws
    from search_spaces.spaces import load_space

    torch.manual_seed(0)
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for found in feasible_draws(load_space(space), Budget(400_000, None, DIGITS), count=3, seed=1):
        model = build_model(found.arch, DIGITS)
        for name, proxy in PROXIES.items():
            score = proxy(model, images, labels)
            # naswot is -inf when every image has one activation pattern (timm's SwiGLU starts with its gates at 1)
            assert np.isfinite(score) or (name == "naswot" and score == -np.inf), (found.arch.summary(), name)
