"""The QKV embedding family: drop-in replacements for the `qkv` Linear of timm's XCA and ViT Attention.

Every member maps tokens x (B, N, C) to [q | k | v] (B, N, 3C). Inside, the running state is either
*common* (one tensor (M, d) that all targets share, M = B*N) or *per-target* (T, M, d), T = number of
targets using the embedding. Shared work on a common state is done once; the targets' matmuls are
batched into one call: concatenated weights on a common state, a batched matmul on a per-target one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.arch import TARGETS, QKVConfig

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class SeparateLinear(nn.Module):
    """One linear layer per target, held as one (T, out, in) weight so all targets run in one matmul."""

    def __init__(self, in_features: int, out_features: int, num_targets: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.num_targets = num_targets
        self.weight = nn.Parameter(torch.empty(num_targets, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_targets, out_features)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward_common(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in) shared by all targets -> (M, T*out): the targets' weights stacked into one matmul."""
        weight = self.weight.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.reshape(-1)
        return F.linear(x, weight, bias)

    def forward_per_target(self, x: torch.Tensor) -> torch.Tensor:
        """(T, M, in) -> (T, M, out) as one batched matmul."""
        weight_t = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, weight_t)
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight_t)


class SharedLinear(nn.Module):
    """One linear layer used by every target; with codes, W [x; c_t] = W_x x + W_c c_t, W_x x computed once."""

    def __init__(self, in_features: int, out_features: int, code_size: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.code_weight = nn.Parameter(torch.empty(out_features, code_size)) if code_size else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.code_weight is not None:
            nn.init.trunc_normal_(self.code_weight, std=0.02)

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """Common (M, in) or per-target (T, M, in) -> the same layout, or per-target when codes enter here."""
        if self.code_weight is None:
            return F.linear(x, self.weight, self.bias)
        tokens = F.linear(x, self.weight)
        code_bias = F.linear(codes, self.code_weight, self.bias).unsqueeze(1)
        return (tokens.unsqueeze(0) if tokens.dim() == 2 else tokens) + code_bias


class QKVEmbedding(nn.Module):
    """[q | k | v] from tokens through 1 to 3 separate or shared layers, with optional trainable codes.

    Targets not in `members` get a plain linear projection. The codes enter the first shared layer.
    """

    def __init__(
            self,
            dim: int,
            layers: tuple[str, ...] = ("separate",),
            hidden_ratio: float = 1.0,
            activation: str = "relu",
            bias: bool = True,
            code_size: int = 0,
            members: str = TARGETS,
    ) -> None:
        super().__init__()
        config = QKVConfig(layers=tuple(layers), hidden_ratio=hidden_ratio, activation=activation, bias=bias,
                           code_size=code_size, members=members)
        self.dim = dim
        self.members = config.members
        self.num_targets = len(config.members)
        hidden = config.hidden_dim(dim)
        widths = [dim] + [hidden] * (len(config.layers) - 1) + [dim]
        first_shared = config.layers.index("shared") if "shared" in config.layers else -1
        self.layers = nn.ModuleList()
        for index, kind in enumerate(config.layers):
            if kind == "separate":
                self.layers.append(SeparateLinear(widths[index], widths[index + 1], self.num_targets, bias))
            else:
                layer_code_size = config.code_size if index == first_shared else 0
                self.layers.append(SharedLinear(widths[index], widths[index + 1], layer_code_size, bias))
        self.act = ACTIVATION_LAYERS[config.activation]()
        self.codes = nn.Parameter(torch.randn(self.num_targets, config.code_size)) if config.code_size else None
        plain_targets = len(TARGETS) - self.num_targets
        self.plain = nn.Linear(dim, plain_targets * dim, bias=bias) if plain_targets else None
        if self.plain is not None:
            nn.init.trunc_normal_(self.plain.weight, std=0.02)
            if self.plain.bias is not None:
                nn.init.zeros_(self.plain.bias)

    @classmethod
    def from_config(cls, dim: int, config: QKVConfig) -> QKVEmbedding:
        return cls(dim, config.layers, config.hidden_ratio, config.activation, config.bias, config.code_size,
                   config.members)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, T*C), targets in `members` order; a 3-D state is per-target (T, M, d)."""
        state = x
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index:
                state = self.act(state)
            if isinstance(layer, SharedLinear):
                state = layer(state, self.codes)
            elif state.dim() == 3:
                state = layer.forward_per_target(state)
            else:
                state = layer.forward_common(state)
                if index < last:
                    state = state.unflatten(-1, (self.num_targets, -1)).transpose(0, 1)
        if state.dim() == 3:
            state = state.transpose(0, 1).flatten(1)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        embedded = self._embed(tokens)
        if self.plain is None:
            return embedded.reshape(*shape[:-1], -1)
        plain = self.plain(tokens)
        pieces = []
        embedded_index = plain_index = 0
        for target in TARGETS:
            if target in self.members:
                pieces.append(embedded[:, embedded_index * self.dim:(embedded_index + 1) * self.dim])
                embedded_index += 1
            else:
                pieces.append(plain[:, plain_index * self.dim:(plain_index + 1) * self.dim])
                plain_index += 1
        return torch.cat(pieces, dim=-1).reshape(*shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, members={self.members!r}"
