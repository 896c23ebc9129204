"""The QKV embedding family: shapes, gradients, the linear case, codes, members, batching."""
import pytest
import torch
from torch import nn

from search_spaces.arch import QKVConfig
from qkvnas_core.errors import UsageError
from search_spaces.qkv import QKVEmbedding, SeparateLinear, SharedLinear

DIM = 16
STRUCTURES = {
    "linear": dict(layers=("separate",)),
    "SNE": dict(layers=("separate", "separate")),
    "P-SNE": dict(layers=("shared", "separate")),
    "F-SNE": dict(layers=("shared", "shared"), code_size=4),
    "three-mixed": dict(layers=("shared", "separate", "shared"), code_size=3, hidden_ratio=0.5, activation="gelu"),
    "separate-then-shared": dict(layers=("separate", "shared"), code_size=2),
    "members-qk": dict(layers=("shared", "separate"), members="qk"),
    "members-v-no-bias": dict(layers=("separate", "separate"), members="v", bias=False),
}


@pytest.mark.parametrize("name", STRUCTURES)
def test_shape_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, **STRUCTURES[name])
    x = torch.randn(2, 5, DIM, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 5, 3 * DIM)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, param in module.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, f"{param_name} got no gradient"


def test_one_separate_layer_with_bias_equals_nn_linear_exactly():
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("separate",), bias=True)
    linear = nn.Linear(DIM, 3 * DIM)
    with torch.no_grad():
        linear.weight.copy_(module.layers[0].weight.reshape(3 * DIM, DIM))
        linear.bias.copy_(module.layers[0].bias.reshape(3 * DIM))
    x = torch.randn(3, 7, DIM)
    assert torch.equal(module(x), linear(x))
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in linear.parameters())


def test_separate_layers_match_three_independent_mlps():
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("separate", "separate"), hidden_ratio=2.0, activation="gelu")
    x = torch.randn(2, 4, DIM)
    first, second = module.layers
    expected = []
    for t in range(3):
        hidden = nn.functional.gelu(x @ first.weight[t].T + first.bias[t])
        expected.append(hidden @ second.weight[t].T + second.bias[t])
    torch.testing.assert_close(module(x), torch.cat(expected, dim=-1))


def test_fsne_matches_concatenated_code_formulation():
    """W1 [x; c_t] computed as W1x x + W1c c_t must equal the concatenation the paper writes."""
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("shared", "shared"), code_size=4, hidden_ratio=1.5)
    x = torch.randn(2, 3, DIM)
    first, second = module.layers
    w1 = torch.cat([first.weight, first.code_weight], dim=1)
    expected = []
    for t in range(3):
        code = module.codes[t].expand(2, 3, -1)
        hidden = torch.relu(torch.cat([x, code], dim=-1) @ w1.T + first.bias)
        expected.append(hidden @ second.weight.T + second.bias)
    torch.testing.assert_close(module(x), torch.cat(expected, dim=-1))


def test_codes_make_q_k_v_differ_when_every_layer_is_shared():
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("shared", "shared"), code_size=8)
    q, k, v = module(torch.randn(2, 5, DIM)).chunk(3, dim=-1)
    assert not torch.allclose(q, k) and not torch.allclose(k, v) and not torch.allclose(q, v)
    with torch.no_grad():
        module.codes.copy_(module.codes[0].expand_as(module.codes))
    q, k, v = module(torch.randn(2, 5, DIM)).chunk(3, dim=-1)
    assert torch.equal(q, k) and torch.equal(k, v)


def test_shared_last_layer_without_codes_is_refused():
    with pytest.raises(UsageError, match="code_size"):
        QKVConfig(layers=("shared", "shared"))
    with pytest.raises(UsageError, match="no shared layer"):
        QKVConfig(layers=("separate", "separate"), code_size=4)


def test_non_members_get_a_plain_projection_in_their_slot():
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("separate", "separate"), members="qv")
    x = torch.randn(2, 3, DIM)
    out = module(x)
    plain_k = module.plain(x)
    torch.testing.assert_close(out[..., DIM:2 * DIM], plain_k)
    assert module.layers[0].weight.shape[0] == 2


def test_shared_work_runs_once_per_forward():
    """A shared first layer multiplies the tokens once, not once per target."""
    module = QKVEmbedding(DIM, layers=("shared", "shared"), code_size=4)
    calls = []
    original = torch.nn.functional.linear

    def counting_linear(inp, weight, bias=None):
        calls.append((tuple(inp.shape), tuple(weight.shape)))
        return original(inp, weight, bias)

    torch.nn.functional.linear = counting_linear
    try:
        module(torch.randn(2, 5, DIM))
    finally:
        torch.nn.functional.linear = original
    token_products = [c for c in calls if c[0] == (10, DIM) and c[1] == (DIM, DIM)]
    assert len(token_products) == 1


def test_layer_modules_batch_all_targets():
    torch.manual_seed(0)
    separate = SeparateLinear(DIM, 8, num_targets=3)
    x = torch.randn(3, 4, DIM)
    per_target = separate.forward_per_target(x)
    for t in range(3):
        torch.testing.assert_close(per_target[t], x[t] @ separate.weight[t].T + separate.bias[t])
    shared = SharedLinear(DIM, 8, code_size=2)
    codes = torch.randn(3, 2)
    out = shared(x[0], codes)
    assert out.shape == (3, 4, 8)
    torch.testing.assert_close(out[1], x[0] @ shared.weight.T + codes[1] @ shared.code_weight.T + shared.bias)


KV_DIM = DIM // 2
HIDDEN = 24


@pytest.mark.parametrize("name", STRUCTURES)
def test_grouped_query_widths_shape_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, **STRUCTURES[name], kv_dim=KV_DIM)
    x = torch.randn(2, 5, DIM, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 5, DIM + 2 * KV_DIM)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, param in module.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, f"{param_name} got no gradient"


def test_kv_dim_equal_to_dim_is_the_default_layout():
    torch.manual_seed(0)
    default = QKVEmbedding(DIM, layers=("shared", "separate"), hidden_ratio=1.5)
    torch.manual_seed(0)
    explicit = QKVEmbedding.from_config(DIM, QKVConfig(layers=("shared", "separate"), hidden_ratio=1.5), kv_dim=DIM)
    shapes = [{key: value.shape for key, value in m.state_dict().items()} for m in (default, explicit)]
    assert shapes[0] == shapes[1]
    x = torch.randn(2, 3, DIM)
    assert torch.equal(default(x), explicit(x))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_with_kv_dim():
    """Exact counts, W = C + 2*C_kv the output width, h the hidden width, m the code size."""
    c, kv, h, m = DIM, KV_DIM, HIDDEN, 4
    out = c + 2 * kv
    ratio = h / c
    assert parameter_count(QKVEmbedding(c, layers=("separate",), kv_dim=kv)) == c * out + out
    assert parameter_count(QKVEmbedding(c, layers=("separate",), bias=False, kv_dim=kv)) == c * out
    sne = QKVEmbedding(c, layers=("separate", "separate"), hidden_ratio=ratio, kv_dim=kv)
    assert parameter_count(sne) == 3 * (c * h + h) + (h * out + out)
    psne = QKVEmbedding(c, layers=("shared", "separate"), hidden_ratio=ratio, kv_dim=kv)
    assert parameter_count(psne) == (c * h + h) + (h * out + out)
    # F-SNE's last layer is computed at width C for every target, so C_kv does not change its count.
    fsne = QKVEmbedding(c, layers=("shared", "shared"), hidden_ratio=ratio, code_size=m, kv_dim=kv)
    assert parameter_count(fsne) == (c * h + m * h + h) + (h * c + c) + 3 * m
    qv = QKVEmbedding(c, layers=("separate", "separate"), hidden_ratio=ratio, members="qv", kv_dim=kv)
    assert parameter_count(qv) == 2 * (c * h + h) + (h * (c + kv) + c + kv) + (c * kv + kv)


def test_last_shared_layer_gives_k_and_v_a_row_subset_of_the_full_width_layer():
    torch.manual_seed(0)
    narrow = QKVEmbedding(DIM, layers=("shared", "shared"), code_size=4, kv_dim=KV_DIM)
    wide = QKVEmbedding(DIM, layers=("shared", "shared"), code_size=4)
    wide.load_state_dict(narrow.state_dict())
    x = torch.randn(2, 3, DIM)
    q, k, v = narrow(x).split((DIM, KV_DIM, KV_DIM), dim=-1)
    q_wide, k_wide, v_wide = wide(x).chunk(3, dim=-1)
    torch.testing.assert_close(q, q_wide)
    torch.testing.assert_close(k, k_wide[..., :KV_DIM])
    torch.testing.assert_close(v, v_wide[..., :KV_DIM])


@pytest.mark.parametrize("layers", [("separate",), ("shared", "separate"), ("separate", "separate")])
def test_separate_last_layer_with_unequal_widths_matches_independent_projections(layers):
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=layers, hidden_ratio=1.5, activation="gelu", kv_dim=KV_DIM)
    x = torch.randn(2, 4, DIM)
    last = module.layers[-1]
    assert last.weight.shape == (DIM + 2 * KV_DIM, last.in_features)
    if layers == ("separate",):
        hidden = [x] * 3
    elif layers[0] == "shared":
        hidden = [nn.functional.gelu(module.layers[0](x, None))] * 3
    else:
        first = module.layers[0]
        hidden = [nn.functional.gelu(x @ first.weight[t].T + first.bias[t]) for t in range(3)]
    weights = last.weight.split((DIM, KV_DIM, KV_DIM))
    biases = last.bias.split((DIM, KV_DIM, KV_DIM))
    expected = torch.cat([h @ w.T + b for h, w, b in zip(hidden, weights, biases)], dim=-1)
    torch.testing.assert_close(module(x), expected)


def test_plain_targets_project_at_their_own_width():
    torch.manual_seed(0)
    module = QKVEmbedding(DIM, layers=("separate", "separate"), members="qv", kv_dim=KV_DIM)
    x = torch.randn(2, 3, DIM)
    assert module.plain.weight.shape == (KV_DIM, DIM)
    torch.testing.assert_close(module(x)[..., DIM:DIM + KV_DIM], module.plain(x))
