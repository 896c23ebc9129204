"""Named architectures: the timm baselines, the paper's three QKV structures on XCiT-N12, ViX's CIFAR-10 models
and mLiT's smallest size (Tan, "How lightweight can a vision transformer be", arXiv 2407.17783), each with the
data shape it was published at."""
from __future__ import annotations

from dataclasses import replace

from search_spaces.arch import ArchConfig, AttentionConfig, FFNConfig, QKVConfig, read_arch_document
from search_spaces.shape import IMAGENET, DataShape
from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object, user_path

XCIT_N12 = ArchConfig(backbone="xcit", embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0, patch_size=16)
# ViX's CIFAR-10 models: a token per pixel of 32 px images, dim 128, depth 4, 4 heads of 32, MLP 256, no qkv bias.
VIX = ArchConfig(backbone="vit", embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=1,
                 qkv=QKVConfig(bias=False))

PRESETS: dict[str, ArchConfig] = {
    "xcit-n12": XCIT_N12,
    "xcit-t12": ArchConfig(backbone="xcit", embed_dim=192, depth=12, num_heads=4, mlp_ratio=4.0, patch_size=16,
                           tokens_norm=True),
    "deit-tiny": ArchConfig(backbone="vit", embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, patch_size=16),
    "xcit-n12-sne": XCIT_N12.replace(qkv=QKVConfig(layers=("separate", "separate"), activation="relu")),
    "xcit-n12-psne": XCIT_N12.replace(qkv=QKVConfig(layers=("shared", "separate"), activation="relu")),
    "xcit-n12-fsne": XCIT_N12.replace(qkv=QKVConfig(layers=("shared", "shared"), activation="relu", code_size=8)),
    "vix-vit": VIX,
    "vix-nystrom": VIX.replace(attention=AttentionConfig(kind="nystrom")),
    "vix-performer": VIX.replace(attention=AttentionConfig(kind="performer"), qkv=QKVConfig(bias=True)),
    "vix-linformer": VIX.replace(attention=AttentionConfig(kind="linformer", kv_heads=1)),
    "vix-vit-conv": VIX.replace(stem="conv"),
    "mlit-xxs": ArchConfig(backbone="vit", embed_dim=108, depth=9, num_heads=6, mlp_ratio=0.75, patch_size=3,
                           attention=AttentionConfig(kv_heads=3),
                           ffn=FFNConfig(kind="moe", last_ratio=0.25, experts=(3, 4, 5), top_k=2)),
}

# The data shape a preset was published at, where that is not ImageNet's; patch_size is the preset's own.
PRESET_SHAPES: dict[str, DataShape] = {
    **{name: DataShape(img_size=32, in_chans=3, num_classes=10, patch_size=1)
       for name in ("vix-vit", "vix-nystrom", "vix-performer", "vix-linformer", "vix-vit-conv")},
    "mlit-xxs": DataShape(img_size=36, in_chans=3, num_classes=100, patch_size=3),
}


def shape_of(spec: str, img_size: int | None = None, num_classes: int | None = None,
             in_chans: int | None = None) -> DataShape:
    """The shape to count `spec` at: the values given, else the preset's own (ImageNet's for arch files and
    ImageNet presets)."""
    given = {"img_size": img_size, "num_classes": num_classes, "in_chans": in_chans}
    return replace(PRESET_SHAPES.get(spec, IMAGENET), **{name: value for name, value in given.items()
                                                         if value is not None})


PRESET_NOTES: dict[str, str] = {
    "xcit-n12": "timm xcit_nano_12_p16_224",
    "xcit-t12": "timm xcit_tiny_12_p16_224",
    "deit-tiny": "timm vit_tiny_patch16_224 (= deit_tiny_patch16_224)",
    "xcit-n12-sne": "paper: separate non-linear embeddings (2 ReLU layers per target)",
    "xcit-n12-psne": "paper: first layer shared by Q, K, V, second separate",
    "xcit-n12-fsne": "paper: both layers shared, codes of size 8 select Q, K or V",
    "vix-vit": "ViX CIFAR-10 ViT: patch 1, dim 128, depth 4, 4 heads, MLP 256",
    "vix-nystrom": "ViX Nystromformer: 64 landmarks, 6 pinv iterations, residual conv 33",
    "vix-performer": "ViX Performer: FAVOR+, 110 random features, qkv bias",
    "vix-linformer": "ViX Linformer: k=64, one kv head (ViX's values equal keys: see model-space.md)",
    "vix-vit-conv": "ViX ViT with the 3-conv stem (3->32->64->128)",
    "mlit-xxs": "mLiT XXS: GQA 6/3, SwiGLU MoE 3/4/5 experts, hidden 81->27, patch 3 at 36 px",
}


def get_preset(name: str) -> ArchConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)} or a path to arch.json") from None


# Fewest tokens per side a preset's own patch size may leave before the dataset's patch size is used instead.
MIN_TOKEN_GRID = 7


def load_arch(spec: str) -> ArchConfig:
    """A preset name, or the path of an arch JSON file (as `nas search` writes them). A file that is not one
    (unreadable, not UTF-8, not strict JSON, a field of the wrong type or out of range) is one UsageError naming
    the file and the field."""
    return load_arch_and_shape(spec)[0]


def load_arch_and_shape(spec: str) -> tuple[ArchConfig, DataShape | None]:
    """`load_arch`, with the data shape the architecture was made for: a preset's published one, the one an arch
    JSON file records (`data_shape`), or None where a file records none."""
    if spec in PRESETS:
        return PRESETS[spec], PRESET_SHAPES.get(spec, IMAGENET)
    path = user_path(spec, "architecture file")
    if spec.endswith(".json") or path.exists():
        if not path.is_file():
            raise UsageError(f"architecture file {spec}: not found; expected a preset ({', '.join(PRESETS)}) "
                             "or an existing arch.json")
        data = read_json_object(path, "a JSON object of ArchConfig fields")
        try:
            return read_arch_document(data)
        except UsageError as error:
            raise UsageError(f"architecture file {spec}: {error}") from None
    return get_preset(spec), None


def patch_size_for(img_size: int) -> int:
    """The patch size images of a side take: 2 for 8 px, 4 for 32 px, 8 for 64-96 px, 16 for 160 px and up (a token
    grid of about 4 to 14 per side)."""
    if img_size < 16:
        return 2
    if img_size < 64:
        return 4
    if img_size < 160:
        return 8
    return 16


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
