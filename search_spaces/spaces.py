"""Named search spaces: Optuna define-by-run functions `space(trial, shape) -> ArchConfig`.

A space is ordinary Python: conditional choices are plain `if`s. `trial` is anything with Optuna's
`suggest_*` methods (this module never imports Optuna). `shape` is the data's DataShape: its patch_size is
the one the images need (or the search's --patch-size), and a choice that depends on the image or token
count is offered only where it fits (Linformer lengths and Nystrom landmarks up to the token count, XCiT
only at its patch sizes).
Optuna refuses a categorical whose choices change within a study ("dynamic value space"): a choice list
here may depend on the shape, which a search keeps for its whole study, but never on another parameter's
value (such a choice gets a parameter of its own name, as `pos` and `pos_without_rope`).
A space may carry `initial_points`: parameter dicts the searcher tries first (e.g. the paper's grid).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any, Callable, Protocol

from search_spaces.arch import (ATTENTIONS, BACKBONES, FFNS, PATCH_SIZES, POSITIONS, STEMS, ArchConfig, AttentionConfig,
                                FFNConfig, QKVConfig)
from search_spaces.shape import DataShape
from qkvnas_core.errors import UsageError, UserCodeError


class Trial(Protocol):
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int: ...


Space = Callable[[Trial, DataShape], ArchConfig]

MEMBER_CHOICES = ["qkv", "qk", "qv", "kv", "q", "k", "v"]
# Experts per stage of a mixture-of-experts FFN (mLiT's public re-implementation grows 3, 4, 5).
EXPERT_STAGES = ["3/4/5", "2/3/4", "4"]
BLOCK_CHOICES = ["all", "first_half", "second_half", "alternate"]


def block_subset(choice: str, depth: int) -> tuple[int, ...] | None:
    """Which blocks get the embedding: all, the first or second half, or every other block."""
    half = max(1, depth // 2)
    subsets = {
        "all": None,
        "first_half": tuple(range(half)),
        "second_half": tuple(range(depth - half, depth)),
        "alternate": tuple(range(0, depth, 2)),
    }
    return subsets[choice]


def suggest_qkv(trial: Trial, depth: int) -> QKVConfig:
    """The QKV embedding: 1-3 separate/shared layers, width, activation, codes, members, blocks."""
    num_layers = trial.suggest_int("qkv_num_layers", 1, 3)
    if num_layers == 1:
        return QKVConfig(layers=("separate",))
    layers = tuple(trial.suggest_categorical(f"qkv_layer{i}", ["separate", "shared"]) for i in range(num_layers))
    hidden_ratio = trial.suggest_categorical("qkv_hidden_ratio", [0.5, 1.0, 1.5, 2.0])
    activation = trial.suggest_categorical("qkv_activation", ["relu", "gelu"])
    code_size = 0
    if layers[-1] == "shared":
        code_size = trial.suggest_categorical("qkv_code_size", [4, 8, 16, 32])
    elif "shared" in layers:
        code_size = trial.suggest_categorical("qkv_code_size_optional", [0, 4, 8, 16, 32])
    members = trial.suggest_categorical("qkv_members", MEMBER_CHOICES)
    blocks = block_subset(trial.suggest_categorical("qkv_blocks", BLOCK_CHOICES), depth)
    return QKVConfig(layers=layers, hidden_ratio=hidden_ratio, activation=activation, code_size=code_size,
                     members=members, blocks=blocks)


def vit_tokens(shape: DataShape) -> int:
    """Tokens a ViT block attends over at `shape`: the patch tokens and the class token."""
    return shape.patch_tokens() + 1


def up_to(choices: list[int], limit: int) -> list[int]:
    """`choices` clamped to `limit`: those above it become `limit` itself, so the list is never empty."""
    return sorted({min(choice, limit) for choice in choices})


def backbones_at(patch_size: int) -> list[str]:
    """The backbones that build patches of this size (XCiT's convolutional stem: 16, 8, 4 and 2 only)."""
    fitting = [backbone for backbone in BACKBONES if patch_size in PATCH_SIZES[backbone]]
    if not fitting:
        sizes = ", ".join(str(size) for size in PATCH_SIZES["vit"])
        raise UsageError(f"patch_size={patch_size}: expected one of {sizes}")
    return fitting


def suggest_attention(trial: Trial, num_heads: int, tokens: int, proj_lens: list[int],
                      landmarks: list[int]) -> AttentionConfig:
    """Attention kind and its own knobs, and grouped-query attention: all heads, half of them, or one kv head.

    Linformer lengths and Nystrom landmarks above the `tokens` a block sees become `tokens` (more would
    project up, or repeat landmarks: the same model under another id)."""
    kind = trial.suggest_categorical("attention", list(ATTENTIONS))
    kv_choice = trial.suggest_categorical("kv_heads", ["all", "half", "one"])
    kv_heads = {"all": None, "half": num_heads // 2 if num_heads % 2 == 0 else None, "one": 1}[kv_choice]
    options: dict[str, Any] = {}
    if kind == "nystrom":
        options["num_landmarks"] = trial.suggest_categorical("num_landmarks", up_to(landmarks, tokens))
    elif kind == "linformer":
        options["proj_len"] = trial.suggest_categorical("proj_len", up_to(proj_lens, tokens))
    return AttentionConfig(kind=kind, kv_heads=None if kv_heads == num_heads else kv_heads, **options)


def suggest_ffn(trial: Trial, mlp_ratio: float, tapers: list[float]) -> FFNConfig:
    """mlp, swiglu or a SwiGLU mixture of experts, its width tapering with depth (last block: mlp_ratio x taper)."""
    kind = trial.suggest_categorical("ffn", list(FFNS))
    taper = trial.suggest_categorical("ffn_taper", tapers)
    options: dict[str, Any] = {}
    if kind == "moe":
        options["experts"] = tuple(int(n) for n in trial.suggest_categorical("experts", EXPERT_STAGES).split("/"))
    return FFNConfig(kind=kind, last_ratio=None if taper == 1.0 else mlp_ratio * taper, **options)


def suggest_pos(trial: Trial, head_dim: int) -> str:
    """learned, rope or none; 2-D rope needs a head dim divisible by 4, so other head dims choose without it."""
    if head_dim % 4 == 0:
        return trial.suggest_categorical("pos", list(POSITIONS))
    return trial.suggest_categorical("pos_without_rope", [pos for pos in POSITIONS if pos != "rope"])


def qkv_space(trial: Trial, shape: DataShape) -> ArchConfig:
    """The QKV embedding on XCiT or ViT, with width, depth, heads and MLP ratio; on ViT also the attention
    (softmax, performer, nystrom, linformer; grouped-query), feed-forward (mlp, swiglu, moe), stem, position."""
    patch_size = shape.patch_size
    backbone = trial.suggest_categorical("backbone", backbones_at(patch_size))
    embed_dim = trial.suggest_categorical("embed_dim", [64, 96, 128, 160, 192])
    depth = trial.suggest_int("depth", 4, 12, step=2)
    num_heads = trial.suggest_categorical("num_heads", [2, 4, 8])
    mlp_ratio = trial.suggest_categorical("mlp_ratio", [2.0, 3.0, 4.0])
    qkv = suggest_qkv(trial, depth)
    if backbone == "xcit":
        return ArchConfig(backbone="xcit", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                          mlp_ratio=mlp_ratio, patch_size=patch_size, qkv=qkv)
    attention = suggest_attention(trial, num_heads, vit_tokens(shape), proj_lens=[8, 16, 32, 64],
                                  landmarks=[16, 32, 64])
    ffn = suggest_ffn(trial, mlp_ratio, tapers=[1.0, 0.5])
    stem = trial.suggest_categorical("stem", list(STEMS))
    pos = suggest_pos(trial, embed_dim // num_heads)
    return ArchConfig(backbone="vit", embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                      patch_size=patch_size, qkv=qkv, attention=attention, ffn=ffn, stem=stem, pos=pos)


def lite_space(trial: Trial, shape: DataShape) -> ArchConfig:
    """Sub-1M ViTs for small images (mLiT's regime): narrow heads, shallow-to-medium depth, FFNs that taper
    with depth, mixtures of experts, grouped-query and linear-time attention, every QKV structure."""
    num_heads = trial.suggest_categorical("num_heads", [2, 3, 4, 6, 8])
    head_dim = trial.suggest_categorical("head_dim", [8, 12, 16, 18, 24])
    depth = trial.suggest_int("depth", 4, 12)
    mlp_ratio = trial.suggest_categorical("mlp_ratio", [0.75, 1.0, 2.0, 3.0])
    qkv = suggest_qkv(trial, depth)
    attention = suggest_attention(trial, num_heads, vit_tokens(shape), proj_lens=[4, 8, 16], landmarks=[8, 16])
    ffn = suggest_ffn(trial, mlp_ratio, tapers=[1.0, 0.5, 0.33])
    stem = trial.suggest_categorical("stem", list(STEMS))
    pos = suggest_pos(trial, head_dim)
    return ArchConfig(backbone="vit", embed_dim=num_heads * head_dim, depth=depth, num_heads=num_heads,
                      mlp_ratio=mlp_ratio, patch_size=shape.patch_size, qkv=qkv, attention=attention,
                      ffn=ffn, stem=stem, pos=pos)


PAPER_STRUCTURES = {
    "linear": ("separate",),
    "SNE": ("separate", "separate"),
    "P-SNE": ("shared", "separate"),
    "F-SNE": ("shared", "shared"),
}
PAPER_CODE_SIZES = [4, 8, 16, 32]


def paper_space(trial: Trial, shape: DataShape) -> ArchConfig:
    """XCiT-N12 fixed; only the paper's structures (linear, SNE, P-SNE, F-SNE with codes 4/8/16/32)."""
    structure = trial.suggest_categorical("structure", list(PAPER_STRUCTURES))
    layers = PAPER_STRUCTURES[structure]
    code_size = trial.suggest_categorical("code_size", PAPER_CODE_SIZES) if layers[-1] == "shared" else 0
    qkv = QKVConfig(layers=layers, activation="relu", code_size=code_size)
    return ArchConfig(backbone="xcit", embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0,
                      patch_size=shape.patch_size, qkv=qkv)


paper_space.initial_points = (  # type: ignore[attr-defined]
    [{"structure": name} for name in ("linear", "SNE", "P-SNE")]
    + [{"structure": "F-SNE", "code_size": size} for size in PAPER_CODE_SIZES])

SPACES: dict[str, Space] = {"qkv": qkv_space, "paper": paper_space, "lite": lite_space}


def load_space(spec: str) -> Space:
    """A named space, or `path/to/file.py:function` for a user's own."""
    if spec in SPACES:
        return SPACES[spec]
    if ":" not in spec:
        raise UsageError(f"unknown space {spec!r}: expected one of {', '.join(SPACES)} or path/to/file.py:function")
    path_text, function_name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"space file {path_text}: not found; expected path/to/file.py:function")
    # Read as Python source whatever its suffix: a file that is not Python fails to load, one line.
    loader = importlib.machinery.SourceFileLoader(f"user_space_{path.stem}", str(path))
    module_spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # a user's file: any error it raises is theirs to read
        raise UserCodeError(f"space file {path_text} failed to load ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:200]})") from error
    space = getattr(module, function_name, None)
    if not callable(space):
        raise UsageError(f"space file {path_text} has no function {function_name!r}: expected def "
                         f"{function_name}(trial, shape) -> ArchConfig")
    return space


def draw(space: Space, trial: Trial, shape: DataShape) -> ArchConfig:
    """One point of `space` at `shape`; a space returning anything but an ArchConfig is the user's error, named
    clearly."""
    arch = space(trial, shape)
    if not isinstance(arch, ArchConfig):
        raise UsageError(f"space {getattr(space, '__name__', space)!r} returned {type(arch).__name__}: "
                         "expected an ArchConfig")
    return arch
