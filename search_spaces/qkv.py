"""The QKV embedding family: drop-in replacements for the `qkv` Linear of timm's XCA and ViT Attention.

Every member maps tokens x (B, N, C) to [q | k | v] (B, N, C + 2*C_kv); C_kv = `kv_dim` is C unless
keys and values have fewer heads (grouped-query attention). Inside, the running state is either
*common* (one tensor (M, d) that all targets share, M = B*N) or *per-target* (T, M, d), T = number of
targets using the embedding. Shared work on a common state is done once; the targets' matmuls are
batched into one call: concatenated weights on a common state, a batched matmul on a per-target one.
Only a last layer can have unequal target widths (q at C, k and v at C_kv).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.arch import TARGETS, QKVConfig

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class SeparateLinear(nn.Module):
    """One linear layer per target, all targets in one matmul.

    Equal widths: one (T, out, in) weight, batched on a per-target state. Unequal widths (a last layer under
    grouped-query attention): the targets' weights concatenated into one (sum of widths, in) weight.
    """

    def __init__(
            self,
            in_features: int,
            out_features: int | tuple[int, ...],
            num_targets: int,
            bias: bool = True,
    ) -> None:
        super().__init__()
        widths = (out_features,) * num_targets if isinstance(out_features, int) else tuple(out_features)
        if len(widths) != num_targets:
            raise ValueError(f"out_features={out_features}: expected one width per target ({num_targets})")
        self.in_features = in_features
        self.out_features = out_features
        self.num_targets = num_targets
        self.widths = widths
        self.equal_widths = len(set(widths)) == 1
        shape = (num_targets, widths[0], in_features) if self.equal_widths else (sum(widths), in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(shape[:-1])) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward_common(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in) shared by all targets -> (M, sum of widths): the targets' weights stacked into one matmul."""
        weight = self.weight.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.reshape(-1)
        return F.linear(x, weight, bias)

    def forward_per_target(self, x: torch.Tensor) -> torch.Tensor:
        """(T, M, in) -> (T, M, out) as one batched matmul (equal widths only)."""
        weight_t = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, weight_t)
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight_t)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(T, M, in) -> (M, sum of widths), target after target: how a last layer returns a per-target state."""
        if self.equal_widths:
            return self.forward_per_target(x).transpose(0, 1).flatten(1)
        weights = self.weight.split(self.widths)
        biases = (None,) * self.num_targets if self.bias is None else self.bias.split(self.widths)
        return torch.cat([F.linear(x_t, w, b) for x_t, w, b in zip(x, weights, biases)], dim=-1)


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

    Targets not in `members` get a plain linear projection at their own width. The codes enter the first
    shared layer. q is `dim` wide, k and v `kv_dim` wide (None: `dim`).
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
            kv_dim: int | None = None,
    ) -> None:
        super().__init__()
        config = QKVConfig(layers=tuple(layers), hidden_ratio=hidden_ratio, activation=activation, bias=bias,
                           code_size=code_size, members=members)
        self.dim = dim
        self.kv_dim = kv_dim or dim
        self.members = config.members
        self.num_targets = len(config.members)
        target_widths = {"q": dim, "k": self.kv_dim, "v": self.kv_dim}
        self.widths = tuple(target_widths[t] for t in config.members)
        self.plain_widths = tuple(target_widths[t] for t in TARGETS if t not in config.members)
        hidden = config.hidden_dim(dim)
        widths = [dim] + [hidden] * (len(config.layers) - 1)
        first_shared = config.layers.index("shared") if "shared" in config.layers else -1
        last = len(config.layers) - 1
        self.layers = nn.ModuleList()
        for index, kind in enumerate(config.layers):
            if kind == "separate":
                out_features = self.widths if index == last else widths[index + 1]
                self.layers.append(SeparateLinear(widths[index], out_features, self.num_targets, bias))
            else:
                # A last shared layer is computed at the widest target; narrower k, v keep a row-subset of it.
                out_features = max(self.widths) if index == last else widths[index + 1]
                layer_code_size = config.code_size if index == first_shared else 0
                self.layers.append(SharedLinear(widths[index], out_features, layer_code_size, bias))
        self.act = ACTIVATION_LAYERS[config.activation]()
        self.codes = nn.Parameter(torch.randn(self.num_targets, config.code_size)) if config.code_size else None
        self.plain = nn.Linear(dim, sum(self.plain_widths), bias=bias) if self.plain_widths else None
        if self.plain is not None:
            nn.init.trunc_normal_(self.plain.weight, std=0.02)
            if self.plain.bias is not None:
                nn.init.zeros_(self.plain.bias)

    @classmethod
    def from_config(cls, dim: int, config: QKVConfig, kv_dim: int | None = None) -> QKVEmbedding:
        return cls(dim, config.layers, config.hidden_ratio, config.activation, config.bias, config.code_size,
                   config.members, kv_dim)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, sum of widths), targets in `members` order; a 3-D state is per-target (T, M, d)."""
        state = x
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index:
                state = self.act(state)
            if isinstance(layer, SharedLinear):
                state = layer(state, self.codes)
            elif state.dim() == 2:
                state = layer.forward_common(state)
                if index < last:
                    state = state.unflatten(-1, (self.num_targets, -1)).transpose(0, 1)
            elif index < last:
                state = layer.forward_per_target(state)
            else:
                return layer.forward_tokens(state)
        if state.dim() == 3:
            # A last shared layer: each target keeps its first width_t columns.
            state = torch.cat([state_t[:, :width] for state_t, width in zip(state, self.widths)], dim=-1)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        embedded = self._embed(tokens)
        if self.plain is None:
            return embedded.reshape(*shape[:-1], -1)
        embedded_pieces = iter(embedded.split(self.widths, dim=-1))
        plain_pieces = iter(self.plain(tokens).split(self.plain_widths, dim=-1))
        pieces = [next(embedded_pieces) if t in self.members else next(plain_pieces) for t in TARGETS]
        return torch.cat(pieces, dim=-1).reshape(*shape[:-1], -1)

    def extra_repr(self) -> str:
        kv = f", kv_dim={self.kv_dim}" if self.kv_dim != self.dim else ""
        return f"dim={self.dim}{kv}, members={self.members!r}"
