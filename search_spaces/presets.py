"""Named architectures: the timm baselines and the paper's three QKV structures on XCiT-N12."""
from __future__ import annotations

from pathlib import Path

from search_spaces.arch import ArchConfig, QKVConfig
from core.errors import UsageError

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


# Fewest tokens per side a preset's own patch size may leave before the dataset's patch size is used instead.
MIN_TOKEN_GRID = 7


def load_arch(spec: str) -> ArchConfig:
    """A preset name, or the path of an arch JSON file (as `nas search` writes them)."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if spec.endswith(".json") or path.exists():
        if not path.is_file():
            raise UsageError(f"architecture file {spec}: not found; expected a preset ({', '.join(PRESETS)}) "
                             "or an existing arch.json")
        try:
            return ArchConfig.from_json(path.read_text())
        except UsageError as error:
            raise UsageError(f"{spec}: {error}") from None
    return get_preset(spec)


def fit_patch_size(arch: ArchConfig, img_size: int, dataset_patch_size: int, patch_size: int | None = None) -> ArchConfig:
    """Give `arch` the patch size its images need: an explicit one, else the dataset's when the arch's does not fit.

    Presets are written for 224 px ImageNet (patch 16); on 8 px digits that would leave no token, so a
    preset meets a small dataset through the patch size the dataset declares (2 for 8 px, 4 for 32 px).
    """
    if patch_size is not None:
        return arch.replace(patch_size=patch_size)
    if img_size % arch.patch_size == 0 and img_size // arch.patch_size >= MIN_TOKEN_GRID:
        return arch
    return arch.replace(patch_size=dataset_patch_size)
