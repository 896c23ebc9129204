"""Attention modules for timm's ViT `attn_layer` hook: softmax, Performer, Nystrom and Linformer.

Each is built as `attn_layer(dim, num_heads=..., qkv_bias=..., qk_norm=..., scale_norm=..., proj_bias=...,
attn_drop=..., proj_drop=..., norm_layer=..., device=..., dtype=...)` and called as
`attn(x, attn_mask=None, is_causal=False)`, like `timm.layers.Attention`. Keyword-only extras, common to all:

    kv_heads           grouped-query attention: key/value heads (None: num_heads); query head h reads kv head
                       h // (num_heads / kv_heads), as `F.scaled_dot_product_attention(enable_gqa=True)` does
    qkv                a `QKVConfig` for `self.qkv` (None or the linear config: one nn.Linear with qkv_bias)
    rope_grid          (H, W) patch grid: 2-D axial rotary embedding of the patch tokens' q and k
    num_prefix_tokens  leading tokens (class token) that rope leaves untouched

Every module keeps timm's `qkv` attribute contract: `self.qkv(x)` returns [q | k | v] (B, N, C + 2*C_kv),
so any QKV structure works with any attention. The three linear-time attentions follow the code ViX used
(performer-pytorch, nystrom-attention, linformer) and reject masks, which they have no exact form for.

timm's `_create_attn` checks `issubclass(attn_layer, ...)`, so the hook takes a class, not a functools.partial:
bind the keyword-only extras with `attention_class`, e.g.
`VisionTransformer(attn_layer=attention_class(NystromAttention, kv_heads=2, num_landmarks=64))`.
"""
from __future__ import annotations

import math
from functools import partialmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat
from torch import nn

from search_spaces.arch import QKVConfig
from search_spaces.qkv import QKVEmbedding


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]: timm's `rot` (interleaved rope), but flattening instead
    of reshaping to x.shape, which the ONNX tracer would freeze at the export batch size."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def expand_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, H_kv, N, d) -> (B, H, N, d): each kv head repeated for its group (what enable_gqa does unseen)."""
    return x.repeat_interleave(num_heads // int(x.shape[1]), dim=1)


def group_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, H, i, j) @ (B, H_kv, j, k) -> (B, H, i, k): the query heads of a group share their kv head."""
    return (a.unflatten(1, (b.shape[1], -1)) @ b.unsqueeze(2)).flatten(1, 2)


class QKVAttention(nn.Module):
    """The plumbing every attention here shares: qkv, heads, qk norm, rope, output norm and projection.

    Subclasses implement `attend(q, k, v, attn_mask, is_causal)` on q (B, H, N, d), k and v (B, H_kv, N, d).
    """

    supports_mask: ClassVar[bool] = False
    supports_attn_drop: ClassVar[bool] = True

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: type[nn.Module] | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            kv_heads: int | None = None,
            qkv: QKVConfig | None = None,
            rope_grid: tuple[int, int] | None = None,
            num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        name = type(self).__name__
        kv_heads = kv_heads or num_heads
        if dim % num_heads:
            raise ValueError(f"{name}: dim={dim} is not divisible by num_heads={num_heads}")
        if num_heads % kv_heads:
            raise ValueError(f"{name}: num_heads={num_heads} is not a multiple of kv_heads={kv_heads}")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError(f"{name}: qk_norm or scale_norm needs a norm_layer")
        if rope_grid is not None and (dim // num_heads) % 4:
            raise ValueError(f"{name}: 2-D rope needs a head dim divisible by 4, got {dim // num_heads}")
        if attn_drop and not self.supports_attn_drop:
            raise ValueError(f"{name}: attn_drop={attn_drop} but it forms no attention matrix to drop: expected 0")
        self.dim = dim
        self.num_heads = num_heads
        self.kv_heads = kv_heads
        self.head_dim = dim // num_heads
        self.kv_dim = kv_heads * self.head_dim
        self.num_prefix_tokens = num_prefix_tokens

        if qkv is None or qkv.is_linear:
            self.qkv = nn.Linear(dim, dim + 2 * self.kv_dim, bias=qkv_bias, **dd)
        else:
            self.qkv = QKVEmbedding.from_config(dim, qkv, kv_dim=self.kv_dim).to(**dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        # The sin/cos table is a non-persistent buffer: rebuilt from rope_grid, never saved.
        self.rope = None if rope_grid is None else RotaryEmbeddingCat(
            self.head_dim, in_pixels=False, feat_shape=list(rope_grid), device=device)
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, C) -> q (B, H, N, d), k and v (B, H_kv, N, d); q and k normed, then rotated if rope is on."""
        q, k, v = self.qkv(x).split((self.dim, self.kv_dim, self.kv_dim), dim=-1)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, N, d)
        k = k.unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)  # (B, H_kv, N, d)
        v = v.unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)  # (B, H_kv, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self._rotate(q), self._rotate(k)
        return q, k, v

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of the patch tokens; the prefix (class) tokens pass unchanged."""
        rope = self.rope.get_embed()  # (H*W, 2d)
        prefix, patches = x[:, :, :self.num_prefix_tokens], x[:, :, self.num_prefix_tokens:]
        if patches.shape[2] != rope.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: rope_grid={tuple(self.rope.feat_shape)} has {rope.shape[0]} positions but got "
                f"{patches.shape[2]} patch tokens ({x.shape[2]} tokens, num_prefix_tokens={self.num_prefix_tokens})")
        sin, cos = rope.chunk(2, dim=-1)
        return torch.cat([prefix, patches * cos + rotate_pairs(patches) * sin], dim=2)

    def attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            attn_mask: torch.Tensor | None,
            is_causal: bool,
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: torch.Tensor | None = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        if (attn_mask is not None or is_causal) and not self.supports_mask:
            raise ValueError(f"{type(self).__name__} takes no attn_mask or is_causal: it has no exact masked form")
        B, N, C = x.shape
        q, k, v = self.split_qkv(x)
        x = self.attend(q, k, v, attn_mask, is_causal)  # (B, H, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, kv_heads={self.kv_heads}"


class SoftmaxAttention(QKVAttention):
    """Exact softmax attention through `F.scaled_dot_product_attention`: timm's Attention when kv_heads == num_heads."""

    supports_mask = True

    def attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            attn_mask: torch.Tensor | None,
            is_causal: bool,
    ) -> torch.Tensor:
        grouped = self.kv_heads != self.num_heads
        if grouped and torch.onnx.is_in_onnx_export():
            # The ONNX exporter cannot convert enable_gqa: the groups' kv heads are repeated instead.
            k, v, grouped = expand_kv(k, self.num_heads), expand_kv(v, self.num_heads), False
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.,
            is_causal=is_causal,
            enable_gqa=grouped,
        )


def gaussian_orthogonal_random_matrix(
        num_rows: int,
        num_columns: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(num_rows, num_columns): stacked orthogonal blocks, rows rescaled to Gaussian norms (performer-pytorch)."""
    blocks = []
    for start in range(0, num_rows, num_columns):
        q, r = torch.linalg.qr(torch.randn(num_columns, num_columns, device=device, dtype=dtype))
        # Signs fixed by R's diagonal make Q Haar-distributed; without it (as performer-pytorch) FAVOR+ is biased.
        q = q * r.diagonal().sign()
        blocks.append(q.T[:num_rows - start])
    norms = torch.randn(num_rows, num_columns, device=device, dtype=dtype).norm(dim=1)
    return norms.unsqueeze(1) * torch.cat(blocks)


class PerformerAttention(QKVAttention):
    """FAVOR+ (Choromanski et al. 2021) with positive orthogonal random features for the softmax kernel.

    out = D^-1 (phi(q) (phi(k)^T v)): linear in the token count. The projection is drawn once and kept as a
    persistent buffer (a checkpoint reproduces it), never redrawn, as in ViX.
    """

    supports_attn_drop = False
    eps: ClassVar[float] = 1e-4

    def __init__(self, dim: int, num_heads: int = 8, *, num_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.num_features = num_features or int(self.head_dim * math.log(self.head_dim))
        self.register_buffer("projection", gaussian_orthogonal_random_matrix(
            self.num_features, self.head_dim, device=kwargs.get("device"), dtype=kwargs.get("dtype")))

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """(B, h, N, d) -> positive features (B, h, N, m), exp stabilised by the query's row or key's global max."""
        normalizer = self.head_dim ** -0.25
        projected = F.linear(normalizer * x, self.projection.to(x.dtype))  # (B, h, N, m)
        half_sq_norm = x.square().sum(dim=-1, keepdim=True) * (normalizer ** 2 / 2)  # (B, h, N, 1)
        # The max cancels in D^-1 (up to eps): it only keeps exp from overflowing.
        max_dims = -1 if is_query else (-2, -1)
        stabiliser = projected.amax(dim=max_dims, keepdim=True).detach()
        return self.num_features ** -0.5 * (torch.exp(projected - half_sq_norm - stabiliser) + self.eps)

    def attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            attn_mask: torch.Tensor | None,
            is_causal: bool,
    ) -> torch.Tensor:
        q = self.feature_map(q, is_query=True)  # (B, H, N, m)
        k = self.feature_map(k, is_query=False)  # (B, H_kv, N, m)
        context = k.transpose(-2, -1) @ v  # (B, H_kv, m, d)
        k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, H_kv, m, 1)
        return group_matmul(q, context) / group_matmul(q, k_sum)  # (B, H, N, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_features={self.num_features}"


def moore_penrose_iter_pinv(x: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Iterative pseudo-inverse of (..., n, n) (Razavi et al. 2014), initialised as in Nystromformer."""
    abs_x = x.abs()
    z = x.transpose(-2, -1) / (abs_x.sum(dim=-1).max() * abs_x.sum(dim=-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(QKVAttention):
    """Nystromformer (Xiong et al. 2021) as lucidrains' nystrom-attention, which ViX used.

    Landmarks are segment means of q and k over the sequence, padded at the front with zero q, k, v to a
    multiple of the landmark count (not masked, as in that code); a depth-wise convolution over the sequence
    adds a residual of v. At most as many landmarks as tokens: fewer tokens make each token a landmark.
    """

    supports_attn_drop = False

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            *,
            num_landmarks: int = 64,
            pinv_iterations: int = 6,
            residual_kernel: int = 33,
            **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        # Depth-wise over the sequence, one kernel per query head on its group's v. A 1-D convolution over (batch x
        # channel) rows: torch 2.14's oneDNN Conv2d backward corrupts the heap on one-channel inputs of some lengths.
        self.res_conv = nn.Conv1d(
            num_heads, num_heads, residual_kernel, padding=residual_kernel // 2, groups=num_heads, bias=False,
            device=kwargs.get("device"), dtype=kwargs.get("dtype"))

    def attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            attn_mask: torch.Tensor | None,
            is_causal: bool,
    ) -> torch.Tensor:
        n = q.shape[2]
        landmarks = min(self.num_landmarks, n)
        segment = math.ceil(n / landmarks)
        padding = landmarks * segment - n
        q, k, v = (F.pad(t, (0, 0, padding, 0)) for t in (q, k, v))  # (B, h, L*s, d)
        q = q * self.head_dim ** -0.5
        q_landmarks = q.unflatten(2, (landmarks, segment)).mean(dim=3)  # (B, H, L, d)
        k_landmarks = k.unflatten(2, (landmarks, segment)).mean(dim=3)  # (B, H_kv, L, d)
        attn1 = group_matmul(q, k_landmarks.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N', L)
        attn2 = group_matmul(q_landmarks, k_landmarks.transpose(-2, -1)).softmax(dim=-1)  # (B, H, L, L)
        attn3 = group_matmul(q_landmarks, k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, L, N')
        attn2_inv = moore_penrose_iter_pinv(attn2, self.pinv_iterations)
        out = (attn1 @ attn2_inv) @ group_matmul(attn3, v)  # (B, H, N', d)
        rows = expand_kv(v, self.num_heads).permute(0, 3, 1, 2).flatten(0, 1)  # (B*d, H, N')
        residual = self.res_conv(rows).unflatten(0, (v.shape[0], v.shape[3])).permute(0, 2, 3, 1)  # (B, H, N', d)
        return (out + residual)[:, :, padding:]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_landmarks={self.num_landmarks}"


class LinformerAttention(SoftmaxAttention):
    """Linformer (Wang et al. 2020): keys and values projected along the sequence from seq_len to proj_len by
    one shared (seq_len, proj_len) parameter per layer (ViX's share_kv), then softmax attention."""

    supports_mask = False

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            *,
            seq_len: int,
            proj_len: int = 64,
            **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.seq_len = seq_len
        self.proj_len = proj_len
        bound = proj_len ** -0.5
        self.seq_proj = nn.Parameter(torch.empty(seq_len, proj_len, device=kwargs.get("device"),
                                                 dtype=kwargs.get("dtype")).uniform_(-bound, bound))

    def attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            attn_mask: torch.Tensor | None,
            is_causal: bool,
    ) -> torch.Tensor:
        if k.shape[2] != self.seq_len:
            raise ValueError(f"LinformerAttention was built for seq_len={self.seq_len} tokens, got {k.shape[2]}")
        k = self.seq_proj.T @ k  # (B, H_kv, P, d)
        v = self.seq_proj.T @ v  # (B, H_kv, P, d)
        return super().attend(q, k, v, None, False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seq_len={self.seq_len}, proj_len={self.proj_len}"


def attention_class(cls: type[QKVAttention], **options: Any) -> type[QKVAttention]:
    """A subclass of `cls` with keyword-only options bound: what timm's attn_layer hook accepts (a class)."""
    return type(cls.__name__, (cls,), {"__init__": partialmethod(cls.__init__, **options)})
