"""Feed-forward choices for timm's `mlp_layer` hook, and the helpers that size them per block.

`mlp` is timm's `Mlp` and `swiglu` timm's `SwiGLU`; `SwiGLUMoE` is mLiT's mixture of SwiGLU experts with
noisy top-k routing (Shazeer et al. 2017).

Auxiliary loss hook: every `SwiGLUMoE` keeps the balance loss of its last forward in `aux_loss` (a scalar
tensor in the graph; zero in eval). The training step adds `auxiliary_loss(model)` to the task loss:

    loss = criterion(model(images), targets)
    aux = auxiliary_loss(model)
    if aux is not None:
        loss = loss + aux
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import nn


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of a (E,) vector: 0 when all entries are equal."""
    if x.numel() == 1:
        return x.new_zeros(())
    return x.float().var() / (x.float().mean() ** 2 + 1e-10)


class SwiGLUMoE(nn.Module):
    """Mixture of SwiGLU experts W2(silu(W_e x) * (V x)): V and W2 shared by the layer, W_e per expert.

    Routing is noisy top-k gating: clean logits x W_g, plus (training only) Gaussian noise of std
    softplus(x W_noise); the gates are a softmax over the top-k logits. Because V and W2 are shared, the
    gate-weighted experts are summed before W2: V x and W2 run once per token, W_e only on its routed tokens.
    A norm_layer (timm's scale_mlp_norm) normalises that mixed hidden state, as in timm's SwiGLU.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: int | None = None,
            out_features: int | None = None,
            act_layer: type[nn.Module] = nn.SiLU,
            norm_layer: type[nn.Module] | None = None,
            bias: bool | tuple[bool, bool] = True,
            drop: float | tuple[float, float] = 0.,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            num_experts: int = 4,
            top_k: int = 2,
            noise: bool = True,
            balance_weight: float = 1e-2,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = to_2tuple(bias)
        drop_probs = to_2tuple(drop)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k}: expected 1 to num_experts={num_experts}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.noise = noise
        self.balance_weight = balance_weight

        # Zero router weights as in Shazeer et al.: no signal, some noise; timm's ViT init leaves them alone.
        self.router = nn.Parameter(torch.zeros(num_experts, in_features, **dd))
        self.router_noise = nn.Parameter(torch.zeros(num_experts, in_features, **dd))
        self.fc1_g = nn.Parameter(torch.empty(num_experts, hidden_features, in_features, **dd))
        self.fc1_g_bias = nn.Parameter(torch.zeros(num_experts, hidden_features, **dd)) if bias[0] else None
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias[0], **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias[1], **dd)
        self.drop2 = nn.Dropout(drop_probs[1])
        # The init timm's ViT gives its Linear layers.
        nn.init.trunc_normal_(self.fc1_g, std=0.02)
        self.aux_loss = torch.zeros((), **dd)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, in) -> gates (M, k) and experts (M, k); sets `aux_loss`, the balance loss of this routing."""
        clean = F.linear(x, self.router)  # (M, E)
        logits = clean
        if self.training and self.noise:
            noise_std = F.softplus(F.linear(x, self.router_noise))  # (M, E)
            logits = clean + torch.randn_like(clean) * noise_std
        top_logits, top_experts = logits.topk(min(self.top_k + 1, self.num_experts), dim=-1)
        gates = top_logits[:, :self.top_k].softmax(dim=-1)  # (M, k)
        top_experts = top_experts[:, :self.top_k]
        if not self.training:
            self.aux_loss = x.new_zeros(())
            return gates, top_experts
        importance = torch.zeros_like(clean).scatter(1, top_experts, gates).sum(dim=0)  # (E,)
        if self.noise and self.top_k < self.num_experts:
            # Smooth load: P(expert in top k) when only its own noise is redrawn, against the other logits' threshold.
            threshold_in = top_logits[:, self.top_k:self.top_k + 1]  # (M, 1): the (k+1)-th logit
            threshold_out = top_logits[:, self.top_k - 1:self.top_k]  # (M, 1): the k-th logit
            threshold = torch.where(logits > threshold_in, threshold_in, threshold_out)
            load = torch.special.ndtr((clean - threshold) / noise_std).sum(dim=0)  # (E,)
        else:
            load = torch.zeros_like(clean).scatter(1, top_experts, 1.).sum(dim=0)  # (E,): tokens per expert
        self.aux_loss = self.balance_weight * (cv_squared(importance) + cv_squared(load))
        return gates, top_experts

    def experts(self, x: torch.Tensor, gates: torch.Tensor, top_experts: torch.Tensor) -> torch.Tensor:
        """sum over routed experts of gate * act(W_e x): (M, in) -> (M, hidden), each expert on its tokens only."""
        routed = top_experts.flatten()  # (M*k,)
        order = routed.argsort()
        counts = routed.bincount(minlength=self.num_experts).tolist()
        mixed = x.new_zeros(x.shape[0], self.fc1_g.shape[1])
        biases = self.fc1_g_bias if self.fc1_g_bias is not None else (None,) * self.num_experts
        for weight, bias, slots in zip(self.fc1_g, biases, order.split(counts)):
            tokens = slots // self.top_k
            hidden = self.act(F.linear(x[tokens], weight, bias))  # (M_e, hidden)
            mixed.index_add_(0, tokens, (hidden * gates.flatten()[slots, None]).type_as(mixed))
        return mixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (M, in)
        gates, top_experts = self.route(x)  # (M, k), (M, k)
        if x.is_meta:
            # No routing decisions on meta: one (M*k, in) x (in, hidden) product has the routed multiply-adds.
            routed = self.act(F.linear(x.repeat_interleave(self.top_k, dim=0), self.fc1_g[0]))  # (M*k, hidden)
            gated = (routed.unflatten(0, (-1, self.top_k)) * gates.unsqueeze(-1)).sum(dim=1)  # (M, hidden)
        elif torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            # An ONNX or torch.export graph cannot hold per-input routing: every expert runs, gates outside top k are 0.
            dense_gates = torch.zeros(x.shape[0], self.num_experts, dtype=gates.dtype).scatter(1, top_experts, gates)
            bias = 0 if self.fc1_g_bias is None else self.fc1_g_bias.unsqueeze(1)
            every = self.act(torch.matmul(x, self.fc1_g.transpose(1, 2)) + bias)  # (E, M, hidden)
            gated = (every * dense_gates.T.unsqueeze(-1)).sum(dim=0)  # (M, hidden)
        else:
            gated = self.experts(x, gates, top_experts)  # (M, hidden)
        x = gated * self.fc1_x(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x.reshape(*shape[:-1], -1)

    def __getstate__(self) -> dict:
        # The last forward's loss is a graph node, which deepcopy (timm's ModelEma) refuses: copies get it detached.
        return {**super().__getstate__(), "aux_loss": self.aux_loss.detach()}

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, noise={self.noise}"


def auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the `aux_loss` of every module that keeps one (the last forward's); None if no module does."""
    losses = [m.aux_loss for m in model.modules() if isinstance(getattr(m, "aux_loss", None), torch.Tensor)]
    return torch.stack(losses).sum() if losses else None


def ffn_hidden_sizes(first: int, last: int, depth: int) -> list[int]:
    """Hidden size per block, linear in depth from `first` to `last`, rounded half up."""
    if depth == 1:
        return [first]
    return [math.floor(first + (last - first) * i / (depth - 1) + 0.5) for i in range(depth)]


def experts_per_block(stages: tuple[int, ...], depth: int) -> list[int]:
    """Experts per block: depth split into len(stages) contiguous stages as evenly as possible (earlier stages
    take the remainder), e.g. (3, 4, 5) over 9 blocks -> [3, 3, 3, 4, 4, 4, 5, 5, 5]."""
    return [stages[i * len(stages) // depth] for i in range(depth)]
