"""Architecture configs: one frozen dataclass per point of the search space.

`ArchConfig` describes a whole model: the backbone, the QKV embedding its blocks use and, on the ViT
backbone, its attention, feed-forward, stem and position encoding. `build.build_model` turns it into a
module. Configs validate themselves, round-trip through JSON (types checked, one line naming the field)
and have a stable short id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from qkvnas_core.errors import UsageError

BACKBONES = ("xcit", "vit")
LAYER_KINDS = ("separate", "shared")
ACTIVATIONS = ("relu", "gelu")
TARGETS = "qkv"
PATCH_SIZES = {"xcit": (16, 8, 4, 2), "vit": (32, 16, 14, 8, 4, 3, 2, 1)}
ATTENTIONS = ("softmax", "performer", "nystrom", "linformer")
FFNS = ("mlp", "swiglu", "moe")
STEMS = ("linear", "conv")
POSITIONS = ("learned", "rope", "none")


@dataclass(frozen=True)
class QKVConfig:
    """How one attention block computes [q | k | v] from its tokens.

    layers: kind of each layer, first to last: `separate` (own weights per target) or `shared`.
    hidden_ratio: width of the inner layers as a multiple of the embedding dim.
    code_size: length m of the trainable codes c_q, c_k, c_v entering the first shared layer.
    members: which of q, k, v use this embedding; the others get a plain linear projection.
    blocks: indices of the backbone blocks that get it; None means every block.
    """

    layers: tuple[str, ...] = ("separate",)
    hidden_ratio: float = 1.0
    activation: str = "relu"
    bias: bool = True
    code_size: int = 0
    members: str = "qkv"
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if len(self.layers) == 1:
            # A single layer has no inner width or activation: fix them so equal models get equal ids.
            object.__setattr__(self, "hidden_ratio", 1.0)
            object.__setattr__(self, "activation", "relu")
        if self.layers == ("separate",):
            # One separate layer is the plain projection whoever uses it: members and blocks change nothing.
            object.__setattr__(self, "members", TARGETS)
            object.__setattr__(self, "blocks", None)
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(sorted(set(int(b) for b in self.blocks))))
        if not 1 <= len(self.layers) <= 3:
            raise UsageError(f"qkv.layers={list(self.layers)}: expected 1 to 3 layers")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise UsageError(f"qkv.layers entry {kind!r}: expected one of {', '.join(LAYER_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"qkv.activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if len(self.layers) > 1 and not self.hidden_ratio > 0:
            raise UsageError(f"qkv.hidden_ratio={self.hidden_ratio}: expected a positive number")
        if self.code_size < 0:
            raise UsageError(f"qkv.code_size={self.code_size}: expected 0 (no codes) or a positive length")
        if self.layers[-1] == "shared" and self.code_size == 0:
            raise UsageError(
                f"qkv.layers={list(self.layers)} ends with a shared layer: it needs code_size > 0, "
                "or q, k and v cannot be told apart")
        if self.code_size > 0 and "shared" not in self.layers:
            raise UsageError(
                f"qkv.code_size={self.code_size} but qkv.layers={list(self.layers)} has no shared layer "
                "for the codes to enter: expected code_size 0")
        if not self.members or any(t not in TARGETS for t in self.members) or len(set(self.members)) != len(self.members):
            raise UsageError(f"qkv.members={self.members!r}: expected a non-empty subset of 'qkv', e.g. 'qkv' or 'qk'")
        object.__setattr__(self, "members", "".join(t for t in TARGETS if t in self.members))
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
            raise UsageError(f"qkv.blocks={list(self.blocks)}: expected non-negative block indices, or null for all")

    @property
    def is_linear(self) -> bool:
        """True when this is the plain linear projection timm's blocks already have."""
        return self.layers == ("separate",)

    def applies_to(self, block_index: int) -> bool:
        return self.blocks is None or block_index in self.blocks

    def hidden_dim(self, dim: int) -> int:
        return max(1, round(self.hidden_ratio * dim))


@dataclass(frozen=True)
class AttentionConfig:
    """How a ViT block attends (search_spaces/attention.py).

    kind: softmax (exact, as timm's Attention), performer (FAVOR+ random features), nystrom (landmarks),
        linformer (keys and values projected along the sequence; needs a fixed token count).
    kv_heads: key/value heads, fewer than num_heads for grouped-query attention; None: one per query head.
    num_features: performer's random features; None: int(head_dim * ln(head_dim)) as ViX.
    num_landmarks, pinv_iterations, residual_kernel: nystrom's (ViX: 64, 6, 33).
    proj_len: linformer's projected sequence length (ViX: 64).
    Fields another kind does not use keep their defaults, so equal models get equal ids.
    """

    kind: str = "softmax"
    kv_heads: int | None = None
    num_features: int | None = None
    num_landmarks: int = 64
    pinv_iterations: int = 6
    residual_kernel: int = 33
    proj_len: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ATTENTIONS:
            raise UsageError(f"attention.kind={self.kind!r}: expected one of {', '.join(ATTENTIONS)}")
        unused = {"performer": ("num_landmarks", "pinv_iterations", "residual_kernel", "proj_len"),
                  "nystrom": ("num_features", "proj_len"), "linformer": ("num_features", "num_landmarks",
                                                                         "pinv_iterations", "residual_kernel")}
        for name in unused.get(self.kind, ("num_features", "num_landmarks", "pinv_iterations", "residual_kernel",
                                           "proj_len")):
            object.__setattr__(self, name, _default_of(AttentionConfig, name))
        for name in ("kv_heads", "num_features", "num_landmarks", "pinv_iterations", "residual_kernel", "proj_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"attention.{name}={value}: expected a positive integer")
        if self.residual_kernel % 2 == 0:
            raise UsageError(f"attention.residual_kernel={self.residual_kernel}: expected an odd kernel size")


@dataclass(frozen=True)
class FFNConfig:
    """The feed-forward layer of a ViT block (search_spaces/ffn.py).

    kind: mlp (timm's Mlp, GELU), swiglu (timm's SwiGLU), moe (mLiT: SwiGLU experts sharing V and W2, noisy
        top-k routing with a balance loss).
    last_ratio: hidden width of the last block as a multiple of embed_dim; the width goes linearly with
        depth from mlp_ratio (first block) to it (mLiT shrinks it). None: mlp_ratio in every block.
    experts: moe: experts per stage; the blocks are split into len(experts) contiguous stages.
    top_k: moe: experts each token is routed to. balance_weight: moe: weight of each balance loss.
    """

    kind: str = "mlp"
    last_ratio: float | None = None
    experts: tuple[int, ...] = (3, 4, 5)
    top_k: int = 2
    balance_weight: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", tuple(self.experts))
        if self.kind not in FFNS:
            raise UsageError(f"ffn.kind={self.kind!r}: expected one of {', '.join(FFNS)}")
        if self.kind != "moe":
            for name in ("experts", "top_k", "balance_weight"):
                object.__setattr__(self, name, _default_of(FFNConfig, name))
        if self.last_ratio is not None and not self.last_ratio > 0:
            raise UsageError(f"ffn.last_ratio={self.last_ratio}: expected a positive number, or null")
        if not self.experts or min(self.experts) < 1:
            raise UsageError(f"ffn.experts={list(self.experts)}: expected one or more positive expert counts")
        if not 1 <= self.top_k <= min(self.experts):
            raise UsageError(f"ffn.top_k={self.top_k} with experts {list(self.experts)}: expected 1 to "
                             f"{min(self.experts)} (no stage may have fewer experts than a token is routed to)")
        if not self.balance_weight >= 0:
            raise UsageError(f"ffn.balance_weight={self.balance_weight}: expected a non-negative number")


def _default_of(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclass(frozen=True)
class ArchConfig:
    """A whole model: a timm backbone (`xcit` or `vit`) plus the QKV embedding its blocks use.

    layer_scale and tokens_norm are XCiT's `eta` and `tokens_norm` (timm's names differ per size).
    On the ViT backbone also: stem (`linear` patch embedding, or `conv`: ViX's three 3x3 convolutions),
    pos (`learned` position embedding, `rope`: 2-D axial rotary embedding of q and k, `none`), attention and
    ffn. XCiT keeps their defaults: it has its own convolutional stem, Fourier encoding and XCA attention.
    """

    backbone: str = "xcit"
    embed_dim: int = 128
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 16
    layer_scale: float = 1.0
    tokens_norm: bool = False
    qkv: QKVConfig = field(default_factory=QKVConfig)
    stem: str = "linear"
    pos: str = "learned"
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)

    def __post_init__(self) -> None:
        for name, config in (("qkv", QKVConfig), ("attention", AttentionConfig), ("ffn", FFNConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, config(**getattr(self, name)))
        if self.backbone not in BACKBONES:
            raise UsageError(f"backbone={self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        for name in ("embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name}={value!r}: expected a positive integer")
        if self.embed_dim % self.num_heads:
            raise UsageError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}: "
                "expected embed_dim to be a multiple of num_heads")
        if self.backbone == "xcit" and self.embed_dim % 8:
            raise UsageError(
                f"embed_dim={self.embed_dim}: XCiT's convolutional patch embedding needs a multiple of 8")
        if not self.mlp_ratio > 0:
            raise UsageError(f"mlp_ratio={self.mlp_ratio}: expected a positive number")
        if self.patch_size not in PATCH_SIZES[self.backbone]:
            sizes = ", ".join(str(p) for p in PATCH_SIZES[self.backbone])
            raise UsageError(f"patch_size={self.patch_size} for {self.backbone}: expected one of {sizes}")
        if self.qkv.blocks is not None and max(self.qkv.blocks) >= self.depth:
            raise UsageError(
                f"qkv.blocks={list(self.qkv.blocks)} but depth={self.depth}: expected indices below {self.depth}")
        if self.stem not in STEMS:
            raise UsageError(f"stem={self.stem!r}: expected one of {', '.join(STEMS)}")
        if self.pos not in POSITIONS:
            raise UsageError(f"pos={self.pos!r}: expected one of {', '.join(POSITIONS)}")
        if self.backbone == "xcit":
            for name in VIT_FIELDS:
                if getattr(self, name) != _default_of_field(name):
                    raise UsageError(f"{name}={getattr(self, name)!r} needs backbone vit: XCiT has its own stem, "
                                     "Fourier position encoding, XCA attention and MLP")
        kv_heads = self.attention.kv_heads
        if kv_heads is not None and (kv_heads > self.num_heads or self.num_heads % kv_heads):
            raise UsageError(f"attention.kv_heads={kv_heads} with num_heads={self.num_heads}: expected a divisor "
                             "of num_heads (grouped-query attention shares each kv head among a group)")
        if self.pos == "rope" and (self.embed_dim // self.num_heads) % 4:
            raise UsageError(f"pos='rope' with head dim {self.embed_dim // self.num_heads}: 2-D rotary embedding "
                             "needs a head dim divisible by 4")
        if self.ffn.kind == "moe" and len(self.ffn.experts) > self.depth:
            raise UsageError(f"ffn.experts={list(self.ffn.experts)} has {len(self.ffn.experts)} stages but "
                             f"depth={self.depth}: expected at most one stage per block")

    def replace(self, **changes: Any) -> ArchConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """An ArchConfig from parsed JSON: unknown fields and values of the wrong type are one UsageError."""
        return _from_json_object(cls, data, "architecture")

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"architecture JSON is malformed ({error.msg} at line {error.lineno}): "
                             "expected a JSON object of ArchConfig fields") from None
        return cls.from_dict(data)

    @property
    def arch_id(self) -> str:
        """Stable short id: the same content always gives the same id, across runs and machines.

        The ViT-only fields added later enter it only when set, so earlier ids (runs, checkpoints) stay valid.
        """
        data = self.to_dict()
        for name in VIT_FIELDS:
            if getattr(self, name) == _default_of_field(name):
                del data[name]
        digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.backbone}-{digest}"

    @property
    def structure(self) -> str:
        return structure_name(self.qkv)

    def summary(self) -> str:
        q = self.qkv
        blocks = "all" if q.blocks is None else ",".join(str(b) for b in q.blocks)
        qkv = f"{self.structure}[{'-'.join(q.layers)}"
        if len(q.layers) > 1:
            qkv += f" h{q.hidden_ratio:g} {q.activation}"
        if q.code_size:
            qkv += f" m{q.code_size}"
        qkv += f" {q.members} blocks={blocks}]"
        text = (f"{self.backbone} d{self.embed_dim} L{self.depth} H{self.num_heads} "
                f"mlp{self.mlp_ratio:g} p{self.patch_size} qkv={qkv}")
        if self.backbone == "vit":
            attention = self.attention.kind
            if self.attention.kv_heads is not None:
                attention += f"/kv{self.attention.kv_heads}"
            ffn = self.ffn.kind
            if self.ffn.last_ratio is not None:
                ffn += f" {self.mlp_ratio:g}->{self.ffn.last_ratio:g}"
            if self.ffn.kind == "moe":
                ffn += f" e{'/'.join(str(e) for e in self.ffn.experts)} top{self.ffn.top_k}"
            text += f" attn={attention} ffn={ffn} stem={self.stem} pos={self.pos}"
        return text

    def flat(self) -> dict[str, Any]:
        """One flat row of plain values, as results tables store an architecture."""
        q = self.qkv
        return {
            "backbone": self.backbone, "embed_dim": self.embed_dim, "depth": self.depth,
            "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio, "patch_size": self.patch_size,
            "layer_scale": self.layer_scale, "tokens_norm": self.tokens_norm,
            "qkv_layers": "-".join(q.layers), "qkv_hidden_ratio": q.hidden_ratio,
            "qkv_activation": q.activation, "qkv_bias": q.bias, "qkv_code_size": q.code_size,
            "qkv_members": q.members,
            "qkv_blocks": "all" if q.blocks is None else ",".join(str(b) for b in q.blocks),
            "attention": self.attention.kind, "kv_heads": self.attention.kv_heads or self.num_heads,
            "ffn": self.ffn.kind, "ffn_last_ratio": self.ffn.last_ratio,
            "ffn_experts": "/".join(str(e) for e in self.ffn.experts) if self.ffn.kind == "moe" else None,
            "stem": self.stem, "pos": self.pos,
        }


# Fields of the ViT backbone only (XCiT keeps their defaults); they enter the arch id only when set.
VIT_FIELDS = ("stem", "pos", "attention", "ffn")


def _default_of_field(name: str) -> Any:
    arch_field = next(f for f in dataclasses.fields(ArchConfig) if f.name == name)
    return arch_field.default_factory() if arch_field.default_factory is not dataclasses.MISSING else arch_field.default


def _type_text(hint: Any) -> str:
    """How a JSON value of this annotation is described in an error: 'an integer', 'a list of integers or null'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_text(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _from_json_object(cls: type, data: Any, where: str) -> Any:
    """A config dataclass from a JSON object, its nested configs too; unknown fields and values of the wrong
    JSON type are one UsageError naming the field (`where` is the path to it, e.g. 'architecture qkv')."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where} has unknown fields {unknown}: expected only {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _from_json_object(hint, value, f"{where} {name}")
        elif not _matches(value, hint):
            path = where.split(" ", 1)[1] + "." + name if " " in where else name
            raise UsageError(f"{path}={json.dumps(value)}: expected {_type_text(hint)}")
        else:
            values[name] = value
    return cls(**values)


def structure_name(qkv: QKVConfig) -> str:
    """The paper's name for a QKV structure where it has one (linear, SNE, P-SNE, F-SNE), else its layer kinds."""
    names = {
        ("separate",): "linear",
        ("separate", "separate"): "SNE",
        ("shared", "separate"): "P-SNE",
        ("shared", "shared"): "F-SNE",
    }
    return names.get(qkv.layers, "/".join("sh" if k == "shared" else "sep" for k in qkv.layers))
