"""Architecture configs: one frozen dataclass per point of the search space.

`ArchConfig` describes a whole model (backbone and QKV embedding); `build.build_model` turns it into
a module. Configs validate themselves, round-trip through JSON and have a stable short id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from core.errors import UsageError

BACKBONES = ("xcit", "vit")
LAYER_KINDS = ("separate", "shared")
ACTIVATIONS = ("relu", "gelu")
TARGETS = "qkv"
PATCH_SIZES = {"xcit": (16, 8, 4, 2), "vit": (32, 16, 14, 8, 4, 2, 1)}


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
class ArchConfig:
    """A whole model: a timm backbone (`xcit` or `vit`) plus the QKV embedding its blocks use.

    layer_scale and tokens_norm are XCiT's `eta` and `tokens_norm` (timm's names differ per size).
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

    def __post_init__(self) -> None:
        if isinstance(self.qkv, dict):
            object.__setattr__(self, "qkv", QKVConfig(**self.qkv))
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

    def replace(self, **changes: Any) -> ArchConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["qkv"]["layers"] = list(self.qkv.layers)
        data["qkv"]["blocks"] = None if self.qkv.blocks is None else list(self.qkv.blocks)
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        if not isinstance(data, dict):
            raise UsageError(f"architecture: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"architecture has unknown fields {unknown}: expected only {sorted(known)}")
        qkv = data.get("qkv", {})
        if not isinstance(qkv, dict):
            raise UsageError(f"architecture field qkv: expected a JSON object, got {type(qkv).__name__}")
        qkv_known = {f.name for f in dataclasses.fields(QKVConfig)}
        qkv_unknown = sorted(set(qkv) - qkv_known)
        if qkv_unknown:
            raise UsageError(f"architecture qkv has unknown fields {qkv_unknown}: expected only {sorted(qkv_known)}")
        try:
            return cls(**{**data, "qkv": QKVConfig(**qkv)})
        except TypeError as error:
            raise UsageError(f"architecture: {error}") from None

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
        """Stable short id: the same content always gives the same id, across runs and machines."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:8]
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
        return (f"{self.backbone} d{self.embed_dim} L{self.depth} H{self.num_heads} "
                f"mlp{self.mlp_ratio:g} p{self.patch_size} qkv={qkv}")

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
        }


def structure_name(qkv: QKVConfig) -> str:
    """The paper's name for a QKV structure where it has one (linear, SNE, P-SNE, F-SNE), else its layer kinds."""
    names = {
        ("separate",): "linear",
        ("separate", "separate"): "SNE",
        ("shared", "separate"): "P-SNE",
        ("shared", "shared"): "F-SNE",
    }
    return names.get(qkv.layers, "/".join("sh" if k == "shared" else "sep" for k in qkv.layers))
