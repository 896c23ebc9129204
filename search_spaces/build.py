"""ArchConfig -> timm backbone: XCiT with the QKV embedding in its XCA blocks, or ViT built through timm's
`embed_layer`, `block_fn`, `attn_layer` and `mlp_layer` hooks with the chosen stem, position encoding,
attention (any QKV structure inside), feed-forward and stochastic depth."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from timm.layers import Mlp, PatchEmbed, SwiGLU, to_2tuple
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.xcit import Xcit, conv3x3
from torch import nn

from qkvnas_core.errors import UsageError
from search_spaces.arch import VIT_FIELDS, ArchConfig
from search_spaces.attention import (LinformerAttention, NystromAttention, PerformerAttention, QKVAttention,
                                     SoftmaxAttention, attention_class)
from search_spaces.ffn import SwiGLUMoE, experts_per_block, ffn_hidden_sizes
from search_spaces.qkv import QKVEmbedding
from search_spaces.shape import DataShape
from search_spaces.timm_config import attach_timm_config

ATTENTION_CLASSES: dict[str, type[QKVAttention]] = {
    "softmax": SoftmaxAttention, "performer": PerformerAttention, "nystrom": NystromAttention,
    "linformer": LinformerAttention}


class SmallConvPatchEmbed(nn.Module):
    """XCiT's convolutional patch embedding for patch sizes 4 and 2 (small images): log2(p) stride-2 convs.

    Same layout as timm's ConvPatchEmbed (3x3 conv + BatchNorm, GELU between), widths doubling to embed_dim.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.patch_size = patch_size
        num_convs = int(math.log2(patch_size))
        widths = [in_chans] + [embed_dim // 2 ** (num_convs - 1 - i) for i in range(num_convs)]
        modules: list[nn.Module] = []
        for index in range(num_convs):
            if index:
                modules.append(act_layer())
            modules.append(conv3x3(widths[index], widths[index + 1], 2))
        self.proj = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (height, width)


class ConvStem(nn.Module):
    """ViX's convolutional patch embedding for timm's `embed_layer` hook: three 3x3 convolutions
    in_chans -> 32 -> 64 -> embed_dim, stride 1, padding 1, no norm or activation between them.

    ViX uses it at patch 1 (a token per pixel). For larger patches the last convolution takes the patch as
    kernel and stride instead (our generalisation, not ViX's).
    """

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            embed_dim: int = 768,
            bias: bool = True,
            dynamic_img_pad: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        last = dict(kernel_size=3, padding=1) if patch_size == 1 else dict(kernel_size=patch_size, stride=patch_size)
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, 32, kernel_size=3, padding=1, bias=bias, **dd),
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=bias, **dd),
            nn.Conv2d(64, embed_dim, bias=bias, **last, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


def _check_image(arch: ArchConfig, img_size: int) -> None:
    if img_size < arch.patch_size or img_size % arch.patch_size:
        raise UsageError(
            f"img_size={img_size} with patch_size={arch.patch_size}: expected an image size that is a multiple "
            f"of the patch size (pick a patch size that fits the images, e.g. 2 for 8 px digits, 4 for 32 px)")


def _backbone_kwargs(arch: ArchConfig, shape: DataShape, drop_path_rate: float) -> dict:
    """What timm's Xcit and VisionTransformer both take, under the same names."""
    return dict(in_chans=shape.in_chans, num_classes=shape.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
                num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=arch.qkv.bias,
                drop_path_rate=drop_path_rate)


def _build_xcit(arch: ArchConfig, shape: DataShape, drop_path_rate: float) -> Xcit:
    timm_patch = arch.patch_size if arch.patch_size in (16, 8) else 8
    model = Xcit(
        img_size=shape.img_size if arch.patch_size in (16, 8) else timm_patch,
        patch_size=timm_patch,
        **_backbone_kwargs(arch, shape, drop_path_rate),
        eta=arch.layer_scale,
        tokens_norm=arch.tokens_norm,
    )
    if arch.patch_size not in (16, 8):
        model.patch_embed = SmallConvPatchEmbed(arch.patch_size, shape.in_chans, arch.embed_dim)
    return model


def _vit_block_fn(arch: ArchConfig, grid: int) -> Callable[..., Block]:
    """timm's `block_fn` hook: block i gets its attention (with the QKV embedding where arch.qkv applies) and
    its feed-forward width and experts (mLiT: width linear in depth, experts growing by stage)."""
    dim, tokens = arch.embed_dim, grid * grid + 1
    attention = arch.attention
    attention_options = {"kv_heads": attention.kv_heads, "rope_grid": (grid, grid) if arch.pos == "rope" else None,
                         **{"performer": {"num_features": attention.num_features},
                            "nystrom": {"num_landmarks": attention.num_landmarks,
                                        "pinv_iterations": attention.pinv_iterations,
                                        "residual_kernel": attention.residual_kernel},
                            "linformer": {"seq_len": tokens, "proj_len": attention.proj_len}}.get(attention.kind, {})}
    ffn = arch.ffn
    first = int(dim * arch.mlp_ratio)
    hidden = ffn_hidden_sizes(first, first if ffn.last_ratio is None else int(dim * ffn.last_ratio), arch.depth)
    experts = experts_per_block(ffn.experts, arch.depth)

    def mlp_layer(index: int) -> Callable[..., nn.Module]:
        def make(**kwargs) -> nn.Module:
            kwargs["hidden_features"] = hidden[index]
            if ffn.kind == "mlp":
                return Mlp(**kwargs)
            kwargs["act_layer"] = nn.SiLU  # timm's Block hands every mlp_layer its GELU; SwiGLU gates with SiLU
            if ffn.kind == "swiglu":
                return SwiGLU(**kwargs)
            return SwiGLUMoE(**kwargs, num_experts=experts[index], top_k=ffn.top_k,
                             balance_weight=ffn.balance_weight)
        return make

    def block(*, depth: int, **kwargs) -> Block:
        qkv = arch.qkv if arch.qkv.applies_to(depth) else None
        kwargs.update(mlp_layer=mlp_layer(depth), attn_layer=attention_class(
            ATTENTION_CLASSES[attention.kind], qkv=qkv, **attention_options))
        return Block(depth=depth, **kwargs)

    return block


def _build_vit(arch: ArchConfig, shape: DataShape, drop_path_rate: float) -> VisionTransformer:
    grid = shape.grid(arch.patch_size)
    tokens = grid * grid + 1
    if arch.attention.kind == "linformer" and arch.attention.proj_len > tokens:
        raise UsageError(f"attention.proj_len={arch.attention.proj_len} but {shape.img_size} px images at patch "
                         f"{arch.patch_size} give {tokens} tokens: expected a projected length of at most {tokens}")
    return VisionTransformer(
        img_size=shape.img_size,
        patch_size=arch.patch_size,
        **_backbone_kwargs(arch, shape, drop_path_rate),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        embed_layer=ConvStem if arch.stem == "conv" else PatchEmbed,
        pos_embed="learn" if arch.pos == "learned" else "none",
        block_fn=_vit_block_fn(arch, grid),
    )


def build_model(arch: ArchConfig, shape: DataShape, drop_path_rate: float = 0.0) -> nn.Module:
    """Build the timm backbone `arch` names, for images and labels of `shape`, and give the chosen blocks its
    QKV embedding. (`shape.patch_size` is the data's suggestion; the model's patch is `arch.patch_size`.) The
    model carries timm's `pretrained_cfg` and rebuild arguments (search_spaces/timm_config.py), so timm's
    `save_for_hf` saves it.

    drop_path_rate: stochastic depth, timm's rule per backbone (XCiT: the same rate in every block; ViT: rising
    linearly to the rate in the last block).
    """
    _check_image(arch, shape.img_size)
    builders = {"xcit": _build_xcit, "vit": _build_vit}
    model = builders[arch.backbone](arch, shape, drop_path_rate)
    if arch.backbone == "xcit" and not arch.qkv.is_linear:
        # timm's XCiT has no attention hook: its XCA blocks get the embedding as their `qkv` after construction.
        for index, block in enumerate(model.blocks):
            if arch.qkv.applies_to(index):
                block.attn.qkv = QKVEmbedding.from_config(arch.embed_dim, arch.qkv)
    return attach_timm_config(model, arch, shape)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load a state_dict strictly; weights that do not fit are one UsageError naming `source` and the mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = [f"{name} {tuple(weights[name].shape)} vs model {tuple(expected[name].shape)}"
                for name in sorted(set(expected) & set(weights)) if weights[name].shape != expected[name].shape]

    def listed(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = [f"{label} ({listed(names)})" for label, names in (
        (f"missing {len(missing)} tensors", missing), (f"{len(unexpected)} unexpected", unexpected),
        (f"{len(reshaped)} of another shape", reshaped)) if names]
    if parts:
        raise UsageError(f"{source} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(weights)
    return model


def qkv_modules(model: nn.Module) -> list[QKVEmbedding]:
    """The QKV embeddings a built model holds, in block order."""
    return [m for m in model.modules() if isinstance(m, QKVEmbedding)]


def timm_reference_name(arch: ArchConfig) -> str | None:
    """The timm model name `arch` reproduces exactly at 224 px, when there is one."""
    vit_parts_default = all(getattr(arch, name) == getattr(ArchConfig(), name) for name in VIT_FIELDS)
    if (not arch.qkv.is_linear or arch.qkv.blocks is not None or not arch.qkv.bias or arch.mlp_ratio != 4.0
            or not vit_parts_default):
        return None
    known = {
        ("xcit", 128, 12, 4, 16, 1.0, False): "xcit_nano_12_p16_224",
        ("xcit", 128, 12, 4, 8, 1.0, False): "xcit_nano_12_p8_224",
        ("xcit", 192, 12, 4, 16, 1.0, True): "xcit_tiny_12_p16_224",
        ("xcit", 192, 12, 4, 8, 1.0, True): "xcit_tiny_12_p8_224",
        ("vit", 192, 12, 3, 16, 1.0, False): "vit_tiny_patch16_224",
    }
    key = (arch.backbone, arch.embed_dim, arch.depth, arch.num_heads, arch.patch_size, arch.layer_scale,
           arch.tokens_norm)
    return known.get(key)
