"""Named architectures: the timm baselines and the paper's three QKV structures on XCiT-N12."""
from __future__ import annotations

from search_spaces.arch import ArchConfig, QKVConfig
from search_spaces.errors import UsageError

XCIT_N12 = ArchConfig(backbone="xcit", embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0, patch_size=16)

PRESETS: dict[str, ArchConfig] = {
    "xcit-n12": XCIT_N12,
    "xcit-t12": ArchConfig(backbone="xcit", embed_dim=192, depth=12, num_heads=4, mlp_ratio=4.0, patch_size=16,
                           tokens_norm=True),
    "deit-tiny": ArchConfig(backbone="vit", embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, patch_size=16),
    "xcit-n12-sne": XCIT_N12.replace(qkv=QKVConfig(layers=("separate", "separate"), activation="relu")),
    "xcit-n12-psne": XCIT_N12.replace(qkv=QKVConfig(layers=("shared", "separate"), activation="relu")),
    "xcit-n12-fsne": XCIT_N12.replace(qkv=QKVConfig(layers=("shared", "shared"), activation="relu", code_size=8)),
}

PRESET_NOTES: dict[str, str] = {
    "xcit-n12": "timm xcit_nano_12_p16_224",
    "xcit-t12": "timm xcit_tiny_12_p16_224",
    "deit-tiny": "timm vit_tiny_patch16_224 (= deit_tiny_patch16_224)",
    "xcit-n12-sne": "paper: separate non-linear embeddings (2 ReLU layers per target)",
    "xcit-n12-psne": "paper: first layer shared by Q, K, V, second separate",
    "xcit-n12-fsne": "paper: both layers shared, codes of size 8 select Q, K or V",
}


def get_preset(name: str) -> ArchConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)} or a path to arch.json") from None
