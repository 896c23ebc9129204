"""Which torch device a user's name means: the one device vocabulary of every command (auto, cpu, cuda, cuda:N).

Imports torch only when a name is parsed, so command-line parsers can read the default and the help text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qkvnas_core.errors import UsageError

if TYPE_CHECKING:
    import torch

DEFAULT_DEVICE = "auto"
_NAMED = "cpu, cuda or cuda:N"
DEVICE_HELP = f"{DEFAULT_DEVICE} (default), {_NAMED}"


def parse_device(name: str) -> torch.device:
    """auto (CUDA when visible, else CPU), cpu, cuda or cuda:N -> a device; anything else, a CUDA request on a
    machine without CUDA, or a GPU index it does not have is one UsageError naming the value."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {name!r}: expected auto, {_NAMED}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r}: expected auto, {_NAMED}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r}: no CUDA device is visible here; expected auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"expected cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device
