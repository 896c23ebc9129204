"""Architecture configs: one frozen dataclass per point of the search space.

`ArchConfig` describes a whole model: the backbone, the QKV embedding its blocks use and, on the ViT
backbone, its attention, feed-forward, stem and position encoding. `build.build_model` turns it into a
module. Configs validate themselves, round-trip through JSON (types checked, one line naming the field)
and have a stable short id.

Architecture JSON holds the fields that apply (a softmax attention has no `num_landmarks`, an `mlp` FFN no
`experts`, XCiT no `attention`); a reader fills the rest with their defaults, which `__post_init__` holds them
at, so a round trip gives an equal config. A file may record the data shape the architecture was searched or
trained for under `data_shape` (`read_arch_document` returns it; `ArchConfig.from_dict` accepts and checks it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.files import dataclass_from_json, parse_json
from search_spaces.shape import DataShape

BACKBONES = ("xcit", "vit")
LAYER_KINDS = ("separate", "shared")
ACTIVATIONS = ("relu", "gelu")
TARGETS = "qkv"
PATCH_SIZES = {"xcit": (16, 8, 4, 2), "vit": (32, 16, 14, 8, 4, 3, 2, 1)}
ATTENTIONS = ("softmax", "performer", "nystrom", "linformer")
FFNS = ("mlp", "swiglu", "moe")
STEMS = ("linear", "conv")
POSITIONS = ("learned", "rope", "none")
# Upper limits far beyond any model a machine holds: with DataShape's they keep every tensor of a model and of its
# forward pass below 2**63 elements, and a count on the meta device quick. Whether a model fits in memory is
# the memory check's question (search_spaces/model_tools/memory.py).
MAX_WIDTH = 2**20  # embed_dim, code_size and the attention's sizes
MAX_DEPTH = 1024  # blocks, heads, experts per stage, Nystrom's pseudo-inverse iterations
MAX_RATIO = 64.0  # mlp_ratio, hidden_ratio, last_ratio
# The key under which an architecture JSON object records the data shape it was made for.
SHAPE_FIELD = "data_shape"


def check_int(name: str, value: Any, lowest: int = 1, highest: int = MAX_WIDTH) -> None:
    """One UsageError naming `name` unless `value` is an integer from `lowest` to `highest`."""
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise UsageError(f"{name}={value!r}: expected an integer from {lowest} to {highest}")


def check_ratio(name: str, value: Any, highest: float = MAX_RATIO) -> None:
    """One UsageError naming `name` unless `value` is a finite number above 0, at most `highest`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= highest:
        raise UsageError(f"{name}={value!r}: expected a number above 0, at most {highest:g}")


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
            for block in self.blocks:
                check_int("qkv.blocks entry", block, 0, MAX_DEPTH - 1)
            object.__setattr__(self, "blocks", tuple(sorted(set(self.blocks))))
        if not 1 <= len(self.layers) <= 3:
            raise UsageError(f"qkv.layers={list(self.layers)}: expected 1 to 3 layers")
        for kind in self.layers:
            if kind not in LAYER_KINDS:
                raise UsageError(f"qkv.layers entry {kind!r}: expected one of {', '.join(LAYER_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"qkv.activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if len(self.layers) > 1:
            check_ratio("qkv.hidden_ratio", self.hidden_ratio)
        check_int("qkv.code_size", self.code_size, 0)
        if not isinstance(self.bias, bool):
            raise UsageError(f"qkv.bias={self.bias!r}: expected true or false")
        if self.layers[-1] == "shared" and self.code_size == 0:
            raise UsageError(
                f"qkv.layers={list(self.layers)} ends with a shared layer: it needs code_size > 0, "
                "or q, k and v cannot be told apart")
        if self.code_size > 0 and "shared" not in self.layers:
            raise UsageError(
                f"qkv.code_size={self.code_size} but qkv.layers={list(self.layers)} has no shared layer "
                "for the codes to enter: expected code_size 0")
        if (not isinstance(self.members, str) or not self.members or any(t not in TARGETS for t in self.members)
                or len(set(self.members)) != len(self.members)):
            raise UsageError(f"qkv.members={self.members!r}: expected a non-empty subset of 'qkv', e.g. 'qkv' or 'qk'")
        object.__setattr__(self, "members", "".join(t for t in TARGETS if t in self.members))
        if self.blocks == ():
            raise UsageError("qkv.blocks=[]: expected one or more block indices, or null for all")

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """Fields this embedding does not read (held at their defaults): one layer's inner width and activation,
        the plain projection's members and blocks, code_size without a shared layer."""
        unused = ("hidden_ratio", "activation") if len(self.layers) == 1 else ()
        if self.is_linear:
            unused += ("members", "blocks")
        return unused + (("code_size",) if "shared" not in self.layers else ())

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
        for name in self.unused_fields:
            object.__setattr__(self, name, _default_of(AttentionConfig, name))
        for name in ("kv_heads", "num_features", "num_landmarks", "residual_kernel", "proj_len"):
            if getattr(self, name) is not None:
                check_int(f"attention.{name}", getattr(self, name))
        check_int("attention.pinv_iterations", self.pinv_iterations, 1, MAX_DEPTH)
        if self.residual_kernel % 2 == 0:
            raise UsageError(f"attention.residual_kernel={self.residual_kernel}: expected an odd kernel size")

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """The other kinds' own options: this kind does not read them (build.py's attention options)."""
        return tuple(name for kind, names in ATTENTION_OPTIONS.items() if kind != self.kind for name in names)


# The options each attention kind reads beside kv_heads (search_spaces/build.py hands it exactly these).
ATTENTION_OPTIONS = {"softmax": (), "performer": ("num_features",),
                     "nystrom": ("num_landmarks", "pinv_iterations", "residual_kernel"), "linformer": ("proj_len",)}


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
        for name in self.unused_fields:
            object.__setattr__(self, name, _default_of(FFNConfig, name))
        if self.last_ratio is not None:
            check_ratio("ffn.last_ratio", self.last_ratio)
        if not 1 <= len(self.experts) <= MAX_DEPTH:
            raise UsageError(f"ffn.experts={list(self.experts)[:8]}: expected 1 to {MAX_DEPTH} expert counts")
        for count in self.experts:
            check_int("ffn.experts entry", count, 1, MAX_DEPTH)
        check_int("ffn.top_k", self.top_k, 1, MAX_DEPTH)
        if not self.top_k <= min(self.experts):
            raise UsageError(f"ffn.top_k={self.top_k} with experts {list(self.experts)}: expected 1 to "
                             f"{min(self.experts)} (no stage may have fewer experts than a token is routed to)")
        if (isinstance(self.balance_weight, bool) or not isinstance(self.balance_weight, (int, float))
                or not 0 <= self.balance_weight <= MAX_RATIO):
            raise UsageError(f"ffn.balance_weight={self.balance_weight!r}: expected a number from 0 to {MAX_RATIO:g}")

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """The mixture of experts' options, unused by the other kinds."""
        return () if self.kind == "moe" else ("experts", "top_k", "balance_weight")


def _default_of(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclass(frozen=True)
class ArchConfig:
    """A whole model: a timm backbone (`xcit` or `vit`) plus the QKV embedding its blocks use.

    layer_scale and tokens_norm are XCiT's `eta` and `tokens_norm` (timm's names differ per size).
    On the ViT backbone also: stem (`linear` patch embedding, or `conv`: ViX's three 3x3 convolutions),
    pos (`learned` position embedding, `rope`: 2-D axial rotary embedding of q and k, `none`), attention and
    ffn. XCiT keeps their defaults: it has its own convolutional stem, Fourier encoding and XCA attention; ViT
    keeps layer_scale's and tokens_norm's.
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
        check_int("embed_dim", self.embed_dim)
        check_int("depth", self.depth, 1, MAX_DEPTH)
        check_int("num_heads", self.num_heads, 1, MAX_DEPTH)
        if self.embed_dim % self.num_heads:
            raise UsageError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}: "
                "expected embed_dim to be a multiple of num_heads")
        if self.backbone == "xcit" and self.embed_dim % 8:
            raise UsageError(
                f"embed_dim={self.embed_dim} with backbone xcit: XCiT's convolutional patch embedding needs a "
                "multiple of 8")
        check_ratio("mlp_ratio", self.mlp_ratio)
        if self.mlp_ratio * self.embed_dim < 1:
            raise UsageError(f"mlp_ratio={self.mlp_ratio!r} with embed_dim={self.embed_dim}: expected a hidden width "
                             "(their product) of at least 1")
        if (isinstance(self.layer_scale, bool) or not isinstance(self.layer_scale, (int, float))
                or not math.isfinite(self.layer_scale)):
            raise UsageError(f"layer_scale={self.layer_scale!r}: expected a finite number")
        if not isinstance(self.tokens_norm, bool):
            raise UsageError(f"tokens_norm={self.tokens_norm!r}: expected true or false")
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
        else:
            for name in XCIT_FIELDS:
                if getattr(self, name) != _default_of_field(name):
                    raise UsageError(f"{name}={getattr(self, name)!r} needs backbone xcit: it is XCiT's "
                                     f"{'eta' if name == 'layer_scale' else name}, which timm's ViT does not have")
        kv_heads = self.attention.kv_heads
        if kv_heads is not None and (kv_heads > self.num_heads or self.num_heads % kv_heads):
            raise UsageError(f"attention.kv_heads={kv_heads} with num_heads={self.num_heads}: expected a divisor "
                             "of num_heads (grouped-query attention shares each kv head among a group)")
        head_dim = self.embed_dim // self.num_heads
        head_dim_text = f"head dim {head_dim} (embed_dim={self.embed_dim} / num_heads={self.num_heads})"
        if self.attention.kind == "performer" and self.attention.num_features is None and head_dim < 2:
            raise UsageError(f"attention.kind='performer' with {head_dim_text}: its default feature count, "
                             "head_dim x ln(head_dim), is 0; expected a head dim of at least 2, or "
                             "attention.num_features")
        if self.pos == "rope" and head_dim % 4:
            raise UsageError(f"pos='rope' with {head_dim_text}: 2-D rotary embedding needs a head dim divisible "
                             "by 4")
        if self.ffn.kind == "moe" and len(self.ffn.experts) > self.depth:
            raise UsageError(f"ffn.experts={list(self.ffn.experts)} has {len(self.ffn.experts)} stages but "
                             f"depth={self.depth}: expected at most one stage per block")

    def replace(self, **changes: Any) -> ArchConfig:
        return dataclasses.replace(self, **changes)

    def _all_fields(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def unused_fields(self) -> tuple[str, ...]:
        """The other backbone's fields (held at their defaults)."""
        return VIT_FIELDS if self.backbone == "xcit" else XCIT_FIELDS

    def to_dict(self, shape: DataShape | None = None) -> dict[str, Any]:
        """The JSON object of this architecture: the fields that apply (nested ones too), and under `data_shape`
        the data shape it was made for, when given."""
        data = self._all_fields()
        for name in self.unused_fields:
            del data[name]
        for name in ("qkv", "attention", "ffn"):
            for unused in getattr(self, name).unused_fields if name in data else ():
                del data[name][unused]
        if shape is not None:
            data[SHAPE_FIELD] = dataclasses.asdict(shape)
        return data

    def to_json(self, indent: int | None = None, shape: DataShape | None = None) -> str:
        return json.dumps(self.to_dict(shape), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """An ArchConfig from parsed JSON (a recorded data shape is checked, then left out): an unknown field, a
        value of the wrong type or out of range is one UsageError naming the field; absent fields take their
        defaults."""
        return read_arch_document(data)[0]

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "architecture JSON") -> ArchConfig:
        """An ArchConfig from JSON text (`where` names it in errors: a file, a table cell)."""
        return read_arch_json(text, where)[0]

    @property
    def arch_id(self) -> str:
        """Stable short id: the same content always gives the same id, across runs and machines.

        It hashes every field (those that do not apply at their defaults), not the shorter JSON `to_dict`
        writes; the ViT-only fields added later enter it only when set, so earlier ids (runs, checkpoints) stay
        valid. The data shape never enters it.
        """
        data = self._all_fields()
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
# Fields of the XCiT backbone only (ViT keeps their defaults).
XCIT_FIELDS = ("layer_scale", "tokens_norm")


def read_arch_document(data: Any) -> tuple[ArchConfig, DataShape | None]:
    """The architecture a parsed JSON object holds, and the data shape it records under `data_shape` (None
    when it records none). Anything wrong is one UsageError naming the field."""
    shape = None
    if isinstance(data, dict):
        recorded = data.get(SHAPE_FIELD)
        data = {name: value for name, value in data.items() if name != SHAPE_FIELD}
        if recorded is not None:
            try:
                shape = dataclass_from_json(DataShape, recorded, SHAPE_FIELD)
            except UsageError as error:  # DataShape's own range checks name the field without the prefix
                message = str(error)
                raise UsageError(message if message.startswith(SHAPE_FIELD) else f"{SHAPE_FIELD}.{message}") from None
    return dataclass_from_json(ArchConfig, data), shape


def read_arch_json(text: str | bytes, where: str = "architecture JSON") -> tuple[ArchConfig, DataShape | None]:
    """`read_arch_document` of JSON text; errors name `where` (a file, a table cell)."""
    data = parse_json(text, where, "a JSON object of ArchConfig fields")
    try:
        return read_arch_document(data)
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


def _default_of_field(name: str) -> Any:
    arch_field = next(f for f in dataclasses.fields(ArchConfig) if f.name == name)
    return arch_field.default_factory() if arch_field.default_factory is not dataclasses.MISSING else arch_field.default


def structure_name(qkv: QKVConfig) -> str:
    """The paper's name for a QKV structure where it has one (linear, SNE, P-SNE, F-SNE), else its layer kinds."""
    names = {
        ("separate",): "linear",
        ("separate", "separate"): "SNE",
        ("shared", "separate"): "P-SNE",
        ("shared", "shared"): "F-SNE",
    }
    return names.get(qkv.layers, "/".join("sh" if k == "shared" else "sep" for k in qkv.layers))
