"""ArchConfig -> timm backbone (XCiT or ViT) with the QKV embedding swapped into its attention blocks."""
from __future__ import annotations

import math
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.xcit import Xcit, conv3x3
from torch import nn

from search_spaces.arch import ArchConfig
from core.errors import UsageError
from search_spaces.qkv import QKVEmbedding


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


def _check_image(arch: ArchConfig, img_size: int) -> None:
    if img_size < arch.patch_size or img_size % arch.patch_size:
        raise UsageError(
            f"img_size={img_size} with patch_size={arch.patch_size}: expected an image size that is a multiple "
            f"of the patch size (pick a patch size that fits the images, e.g. 2 for 8 px digits, 4 for 32 px)")


def _build_xcit(arch: ArchConfig, num_classes: int, img_size: int, in_chans: int, drop_path_rate: float) -> Xcit:
    timm_patch = arch.patch_size if arch.patch_size in (16, 8) else 8
    model = Xcit(
        img_size=img_size if arch.patch_size in (16, 8) else timm_patch,
        patch_size=timm_patch,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv.bias,
        eta=arch.layer_scale,
        tokens_norm=arch.tokens_norm,
        drop_path_rate=drop_path_rate,
    )
    if arch.patch_size not in (16, 8):
        model.patch_embed = SmallConvPatchEmbed(arch.patch_size, in_chans, arch.embed_dim)
    return model


def _build_vit(arch: ArchConfig, num_classes: int, img_size: int, in_chans: int,
               drop_path_rate: float) -> VisionTransformer:
    return VisionTransformer(
        img_size=img_size,
        patch_size=arch.patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=arch.qkv.bias,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path_rate,
    )


def build_model(arch: ArchConfig, num_classes: int, img_size: int, in_chans: int = 3,
                drop_path_rate: float = 0.0) -> nn.Module:
    """Build the timm backbone `arch` names and give the chosen blocks its QKV embedding.

    drop_path_rate: stochastic depth, timm's rule per backbone (XCiT: the same rate in every block; ViT: rising
    linearly to the rate in the last block).
    """
    if num_classes < 1:
        raise UsageError(f"num_classes={num_classes}: expected a positive integer")
    _check_image(arch, img_size)
    builders = {"xcit": _build_xcit, "vit": _build_vit}
    model = builders[arch.backbone](arch, num_classes, img_size, in_chans, drop_path_rate)
    if not arch.qkv.is_linear:
        for index, block in enumerate(model.blocks):
            if arch.qkv.applies_to(index):
                block.attn.qkv = QKVEmbedding.from_config(arch.embed_dim, arch.qkv)
    return model


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
    if not arch.qkv.is_linear or arch.qkv.blocks is not None or not arch.qkv.bias or arch.mlp_ratio != 4.0:
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
