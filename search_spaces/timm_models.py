"""qkvnas's architectures in timm's model registry: importing this module registers two entrypoints that take the
architecture as a model argument, an ArchConfig's JSON object, beside timm's usual img_size, in_chans and
num_classes:

    import timm
    import search_spaces.timm_models  # noqa: F401  registers qkvnas_vit and qkvnas_xcit
    model = timm.create_model("qkvnas_xcit", arch=arch.to_dict(), img_size=8, in_chans=1, num_classes=10)

What names and rebuilds a model (`timm_architecture`, its inverse, the pretrained_cfg) is search_spaces.timm_config,
which build_model uses; this module builds through build_model, so neither imports the other back.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from search_spaces.build import build_model
from search_spaces.timm_compat import set_model_args
from search_spaces.timm_config import VARIANTS, read_timm_architecture


def _build(backbone: str, drop_path_rate: float = 0.0, **model_args: Any) -> nn.Module:
    """The model `timm.create_model(qkvnas_<backbone>, ...)` builds: build_model at the arguments' arch and shape."""
    name = VARIANTS[backbone]
    arch, shape = read_timm_architecture(name, model_args, f"{name} arguments")
    model = build_model(arch, shape, drop_path_rate)
    set_model_args(model, {})  # timm's create_model records this call's own arguments in their place
    return model


def _cfg(first_conv: str) -> dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
            "interpolation": "bicubic", "crop_pct": 0.875, "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": first_conv, "classifier": "head"}


default_cfgs = generate_default_cfgs({"qkvnas_vit": _cfg("patch_embed.proj"),
                                     "qkvnas_xcit": _cfg("patch_embed.proj.0.0")})


@register_model
def qkvnas_vit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A ViT of qkvnas's space: `arch`, an ArchConfig's JSON object with backbone "vit"; img_size, in_chans,
    num_classes, patch_size (replacing the arch's) and drop_path_rate as in timm's models."""
    return build_model_with_cfg(partial(_build, "vit"), "qkvnas_vit", pretrained, **kwargs)


@register_model
def qkvnas_xcit(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """An XCiT of qkvnas's space: `arch`, an ArchConfig's JSON object with backbone "xcit"; img_size, in_chans,
    num_classes, patch_size (replacing the arch's) and drop_path_rate as in timm's models."""
    return build_model_with_cfg(partial(_build, "xcit"), "qkvnas_xcit", pretrained, **kwargs)
