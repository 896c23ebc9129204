"""What a built model records for timm, and reading it back: the timm name and arguments that rebuild the model,
and its pretrained_cfg.

`timm_architecture(arch, shape)` names timm's own ViT or XCiT entrypoint with every size argument given when the
architecture is plain timm (its saved folder then loads where qkvnas is not installed), qkvnas_vit or qkvnas_xcit
(search_spaces.timm_models registers them) with the arch otherwise; `read_timm_architecture` is its inverse.
`build_model` attaches both to every model as timm's factory would (`attach_timm_config`), so
`timm.models.save_for_hf(model, folder)` writes a folder that `timm.create_model("local-dir:<folder>",
pretrained=True)` rebuilds.
"""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from qkvnas_core.errors import UsageError
from qkvnas_core.files import check_json_fields, json_value
from search_spaces.arch import ArchConfig, AttentionConfig, FFNConfig, QKVConfig
from search_spaces.shape import DataShape
from search_spaces.timm_compat import set_model_args

VARIANTS = {"vit": "qkvnas_vit", "xcit": "qkvnas_xcit"}
# timm's own entrypoints for plain architectures: every size argument is given, so the name only picks the class.
TIMM_BASES = {"vit": "vit_tiny_patch16_224", "xcit": "xcit_nano_12_p16_224"}
TIMM_XCIT_PATCHES = (16, 8)  # the patches of timm's ConvPatchEmbed; qkvnas builds 4 and 2 with its own stem
# What timm's data arguments are, in a model's arguments and in config.json's model_args.
DATA_ARGS = {"img_size": int | tuple[int, int], "in_chans": int, "num_classes": int, "global_pool": str | None}
QKVNAS_ARGS = {"arch": dict, "patch_size": int | None, **DATA_ARGS}
VIT_ARGS = {"patch_size": int, "embed_dim": int, "depth": int, "num_heads": int, "mlp_ratio": float, "qkv_bias": bool,
            **DATA_ARGS}
PLAIN_ARGS = {"vit": VIT_ARGS, "xcit": {**VIT_ARGS, "eta": float, "tokens_norm": bool}}


def is_plain_timm(arch: ArchConfig) -> bool:
    """True when timm's own VisionTransformer or Xcit is `arch`, tensor for tensor: the linear QKV projection and,
    on ViT, softmax attention with a key/value head per head, timm's Mlp at one width, the linear patch stem and
    learned positions; on XCiT a patch size timm's stem has."""
    if not arch.qkv.is_linear:
        return False
    if arch.backbone == "xcit":
        return arch.patch_size in TIMM_XCIT_PATCHES
    return (arch.attention == AttentionConfig() and arch.ffn == FFNConfig() and arch.stem == "linear"
            and arch.pos == "learned")


def timm_architecture(arch: ArchConfig, shape: DataShape) -> tuple[str, dict[str, Any]]:
    """(timm model name, its JSON arguments) that build `arch` for data of `shape` through timm.create_model."""
    data = {"img_size": shape.img_size, "in_chans": shape.in_chans, "num_classes": shape.num_classes}
    if not is_plain_timm(arch):
        return VARIANTS[arch.backbone], {"arch": arch.to_dict(), **data}
    sizes = {"patch_size": arch.patch_size, "embed_dim": arch.embed_dim, "depth": arch.depth,
             "num_heads": arch.num_heads, "mlp_ratio": arch.mlp_ratio, "qkv_bias": arch.qkv.bias}
    if arch.backbone == "xcit":
        sizes.update(eta=arch.layer_scale, tokens_norm=arch.tokens_norm)
    return TIMM_BASES[arch.backbone], {**data, **sizes}


def read_timm_architecture(name: str, model_args: Any, path: str = "model_args") -> tuple[ArchConfig, DataShape]:
    """The architecture and data shape a timm model name and its arguments build (`timm_architecture`'s
    inverse). Another name, an unknown or missing argument, a value of the wrong JSON type or out of range is
    one UsageError naming it under `path`."""
    backbone = next((key for key, variant in VARIANTS.items() if variant == name), None)
    plain = next((key for key, base in TIMM_BASES.items() if base == name), None)
    if backbone is None and plain is None:
        names = ", ".join([*VARIANTS.values(), *TIMM_BASES.values()])
        raise UsageError(f"architecture={name!r}: expected one of {names} (what `nas export` writes)")
    hints = QKVNAS_ARGS if backbone else PLAIN_ARGS[plain]
    check_json_fields(model_args, hints, path)
    unknown = sorted(set(model_args) - set(hints))
    if unknown:
        raise UsageError(f"{path} has unknown fields {unknown}: expected only {', '.join(hints)}")
    args = {key: json_value(model_args.get(key), hint, f"{path}.{key}") for key, hint in hints.items()}
    if args["global_pool"] not in (None, "token"):
        raise UsageError(f"{path}.global_pool={args['global_pool']!r}: expected 'token' (the models classify their "
                         "class token)")
    img_size = args["img_size"]
    if isinstance(img_size, tuple):
        if img_size[0] != img_size[1]:
            raise UsageError(f"{path}.img_size={list(img_size)}: expected square images (one size, or two equal)")
        img_size = img_size[0]
    arch = _read_arch(args["arch"], backbone, name, path) if backbone else None
    try:
        if arch is None:
            arch = _plain_arch(plain, args)
        elif args["patch_size"] is not None:
            arch = arch.replace(patch_size=args["patch_size"])
        shape = DataShape(img_size=img_size, in_chans=args["in_chans"], num_classes=args["num_classes"],
                          patch_size=arch.patch_size)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None
    return arch, shape


def _read_arch(data: dict[str, Any], backbone: str, name: str, path: str) -> ArchConfig:
    try:
        arch = ArchConfig.from_dict(data)
    except UsageError as error:
        raise UsageError(f"{path}.arch: {error}") from None
    if arch.backbone != backbone:
        raise UsageError(f"{path}.arch.backbone={arch.backbone!r} but the model is {name}: expected {backbone!r}, "
                         f"or the model {VARIANTS[arch.backbone]}")
    return arch


def _plain_arch(backbone: str, args: dict[str, Any]) -> ArchConfig:
    if backbone == "xcit" and args["patch_size"] not in TIMM_XCIT_PATCHES:
        raise UsageError(f"patch_size={args['patch_size']} for timm's XCiT: expected 16 or 8 (qkvnas_xcit builds "
                         "patches 4 and 2)")
    xcit = {"layer_scale": args["eta"], "tokens_norm": args["tokens_norm"]} if backbone == "xcit" else {}
    return ArchConfig(backbone=backbone, embed_dim=args["embed_dim"], depth=args["depth"], num_heads=args["num_heads"],
                      mlp_ratio=args["mlp_ratio"], patch_size=args["patch_size"], qkv=QKVConfig(bias=args["qkv_bias"]),
                      **xcit)


def timm_pretrained_cfg(arch: ArchConfig, shape: DataShape, *, mean: tuple[float, ...] | None = None,
                        std: tuple[float, ...] | None = None, dataset: str | None = None,
                        label_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """timm's pretrained_cfg of a model of `arch` for data of `shape`: the architecture that rebuilds it, its
    input size, classes and first convolution; mean and std, the data's where known, else timm's ImageNet defaults
    (averaged over the channels when there are not three, as timm adapts them); the dataset as `tag`, timm's name
    for what the weights were trained on (its PretrainedCfg has no dataset field and refuses unknown ones)."""
    channels = shape.in_chans

    def per_channel(imagenet: tuple[float, ...]) -> tuple[float, ...]:
        return imagenet if channels == 3 else (sum(imagenet) / 3,) * channels

    first_conv = {"xcit": "patch_embed.proj.0.0", "vit": "patch_embed.proj.0" if arch.stem == "conv"
                  else "patch_embed.proj"}[arch.backbone]
    cfg = {"architecture": timm_architecture(arch, shape)[0], "tag": dataset,
           "input_size": (channels, shape.img_size, shape.img_size), "fixed_input_size": True,
           "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
           "mean": tuple(mean) if mean is not None else per_channel(IMAGENET_DEFAULT_MEAN),
           "std": tuple(std) if std is not None else per_channel(IMAGENET_DEFAULT_STD),
           "num_classes": shape.num_classes, "label_names": None if label_names is None else tuple(label_names),
           "pool_size": None, "first_conv": first_conv, "classifier": "head"}
    return {key: value for key, value in cfg.items() if value is not None or key == "pool_size"}


def attach_timm_config(model: nn.Module, arch: ArchConfig, shape: DataShape) -> nn.Module:
    """`model` given what timm's factory gives its models: `pretrained_cfg` (alias `default_cfg`) and the
    arguments `save_for_hf` records to rebuild it."""
    model.pretrained_cfg = model.default_cfg = timm_pretrained_cfg(arch, shape)
    set_model_args(model, timm_architecture(arch, shape)[1])
    return model
