"""Feed-forward choices: the SwiGLU mixture of experts, its balance loss and hook, and the sizing helpers."""
import copy

import pytest
import torch
from timm.layers import SwiGLU
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.ffn import SwiGLUMoE, auxiliary_loss, experts_per_block, ffn_hidden_sizes

IN, HIDDEN = 8, 12


def routed_moe(**kwargs) -> SwiGLUMoE:
    """A MoE whose router is not the zero init, so tokens spread over the experts."""
    torch.manual_seed(0)
    module = SwiGLUMoE(IN, HIDDEN, **kwargs)
    nn.init.normal_(module.router, std=1.0)
    return module


def test_shape_and_gradients_reach_routed_experts_shared_layers_and_router():
    module = routed_moe(num_experts=8, top_k=2).train()
    route, routed = module.route, []

    def recording_route(tokens):
        gates, experts = route(tokens)
        routed.append(experts)
        return gates, experts

    module.route = recording_route
    x = torch.randn(2, 1, IN)  # 2 tokens, 4 routed slots: some of the 8 experts get none
    out = module(x)
    assert out.shape == (2, 1, IN)
    assert module.aux_loss.requires_grad
    (out.square().sum() + module.aux_loss).backward()
    selected = set(routed[0].flatten().tolist())
    assert len(selected) < 8
    for expert in range(8):
        assert (module.fc1_g.grad[expert].abs().sum() > 0) == (expert in selected), expert
    for name in ("fc1_x.weight", "fc1_x.bias", "fc2.weight", "fc2.bias", "router", "router_noise", "fc1_g_bias"):
        assert module.get_parameter(name).grad.abs().sum() > 0, name


def test_unrouted_experts_get_no_gradient():
    module = SwiGLUMoE(IN, HIDDEN, num_experts=4, top_k=1, noise=False).eval()
    with torch.no_grad():
        module.router[0] = 1.0  # every token of positive sum goes to expert 0
    module(torch.rand(3, 4, IN)).sum().backward()
    assert module.fc1_g.grad[0].abs().sum() > 0
    assert module.fc1_g.grad[1:].abs().sum() == 0


def test_one_expert_equals_timm_swiglu_with_the_same_weights():
    torch.manual_seed(0)
    swiglu = SwiGLU(IN, HIDDEN, out_features=5)
    module = SwiGLUMoE(IN, HIDDEN, out_features=5, num_experts=1, top_k=1, noise=False)
    with torch.no_grad():
        module.fc1_g.copy_(swiglu.fc1_g.weight.unsqueeze(0))
        module.fc1_g_bias.copy_(swiglu.fc1_g.bias.unsqueeze(0))
    module.fc1_x.load_state_dict(swiglu.fc1_x.state_dict())
    module.fc2.load_state_dict(swiglu.fc2.state_dict())
    x = torch.randn(2, 7, IN)
    torch.testing.assert_close(module.train()(x), swiglu(x))
    assert module.aux_loss == 0


def test_routed_output_equals_dense_mixture_of_experts():
    """sum_e g_e W2(act(W_e x) * V x) over the top-k experts, computed expert by expert for every token."""
    module = routed_moe(num_experts=4, top_k=2).eval()
    x = torch.randn(10, IN)
    gates, experts = module.route(x)
    expected = []
    for token in range(10):
        out = 0
        for gate, expert in zip(gates[token], experts[token]):
            hidden = nn.functional.silu(x[token] @ module.fc1_g[expert].T + module.fc1_g_bias[expert])
            out = out + gate * module.fc2(hidden * module.fc1_x(x[token]))
        expected.append(out)
    torch.testing.assert_close(module(x), torch.stack(expected))


def balance_loss(tokens: torch.Tensor, noise: bool) -> float:
    """Two experts, top 1: the sign of a token's first feature picks the expert; the second feature is 1."""
    module = SwiGLUMoE(2, 4, num_experts=2, top_k=1, noise=noise).train()
    with torch.no_grad():
        module.router.copy_(torch.tensor([[10., 0.], [-10., 0.]]))
        module.router_noise.copy_(torch.tensor([[0., -20.], [0., -20.]]))  # noise std softplus(-20): next to none
    module(tokens)
    return module.aux_loss.item()


@pytest.mark.parametrize("noise", [False, True])
def test_balance_loss_is_zero_when_balanced_and_large_when_collapsed(noise):
    torch.manual_seed(0)
    balanced = torch.tensor([[1., 1.], [-1., 1.]]).repeat(8, 1)
    collapsed = torch.tensor([[1., 1.]]).repeat(16, 1)
    assert balance_loss(balanced, noise) < 1e-6
    # All 16 tokens on one of two experts: CV^2 = var([16, 0]) / 8^2 = 2 for importance and for load.
    assert balance_loss(collapsed, noise) == pytest.approx(1e-2 * (2 + 2), rel=1e-4)


def test_auxiliary_loss_sums_every_moe_layer_and_is_none_without_one():
    model = nn.Sequential(routed_moe(), nn.GELU(), routed_moe()).train()
    model(torch.randn(4, 3, IN))
    total = auxiliary_loss(model)
    assert total is not None and total.requires_grad
    torch.testing.assert_close(total, model[0].aux_loss + model[2].aux_loss)
    assert auxiliary_loss(nn.Sequential(nn.Linear(2, 2), SwiGLU(2, 4))) is None
    model.eval()(torch.randn(4, 3, IN))
    assert auxiliary_loss(model) == 0


def test_eval_is_deterministic_and_training_is_noisy():
    module = routed_moe(num_experts=4, top_k=2)
    nn.init.normal_(module.router_noise, std=1.0)
    x = torch.randn(16, IN)
    module.eval()
    assert torch.equal(module(x), module(x))
    module.train()
    assert not torch.equal(module(x), module(x))


def test_deepcopy_after_a_training_forward():
    module = routed_moe().train()
    module(torch.randn(4, IN))
    copied = copy.deepcopy(module)
    assert not copied.aux_loss.requires_grad and copied.aux_loss == module.aux_loss.detach()


def test_plugs_into_timm_vision_transformer_as_mlp_layer():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=2, num_classes=3,
                              mlp_layer=SwiGLUMoE, act_layer=nn.SiLU)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    assert auxiliary_loss(model).requires_grad


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_meta_build_and_flops_match_the_top_k_formula(top_k):
    tokens, out, experts = 50, 6, 4
    with torch.device("meta"):
        module = SwiGLUMoE(IN, HIDDEN, out_features=out, num_experts=experts, top_k=top_k).eval()
        x = torch.empty(2, tokens // 2, IN)
    counter = FlopCounterMode(display=False)
    with counter:
        y = module(x)
    assert y.is_meta and y.shape == (2, tokens // 2, out)
    # Router, V, the top_k routed W_e products and W2, 2 FLOPs per multiply-add.
    expected = 2 * tokens * (IN * experts + IN * HIDDEN + top_k * IN * HIDDEN + HIDDEN * out)
    assert counter.get_total_flops() == expected


def test_ffn_hidden_sizes_are_linear_in_depth():
    assert ffn_hidden_sizes(81, 27, 9) == [81, 74, 68, 61, 54, 47, 41, 34, 27]
    assert ffn_hidden_sizes(144, 72, 15)[0] == 144 and ffn_hidden_sizes(144, 72, 15)[-1] == 72
    assert ffn_hidden_sizes(96, 32, 1) == [96]
    assert ffn_hidden_sizes(64, 64, 3) == [64, 64, 64]


def test_experts_per_block_splits_depth_into_even_contiguous_stages():
    assert experts_per_block((3, 4, 5), 9) == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert experts_per_block((3, 4, 5), 12) == [3] * 4 + [4] * 4 + [5] * 4
    assert experts_per_block((3, 4, 5), 10) == [3, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert experts_per_block((2,), 4) == [2, 2, 2, 2]
