"""timm's private API this project reaches, in one place: each wrapper names what it reaches and why no public API
does. tests/test_nas/test_compat.py checks them against the installed timm and names the version they were written for."""
from __future__ import annotations

from typing import Any

from torch import nn


def set_model_args(model: nn.Module, model_args: dict[str, Any]) -> None:
    """`model_args` as the arguments that rebuild `model`, which timm's public get_model_args reads and save_for_hf
    writes: timm's factory keeps them in the private `model._model_args` and offers no public setter."""
    model._model_args = dict(model_args)
