"""The shape of the data a model is built for: one frozen object the dataset info, the budget, the spaces, the
builders and the cost functions all take, instead of loose ints in varying orders."""
from __future__ import annotations

from dataclasses import dataclass

from qkvnas_core.errors import UsageError


# Upper limits far beyond any data: with ArchConfig's they keep a model's tensors below 2**63 elements.
LIMITS = {"img_size": 4096, "in_chans": 2**16, "num_classes": 2**24, "patch_size": 4096}


@dataclass(frozen=True)
class DataShape:
    """Square images of `img_size` px with `in_chans` channels, labelled with `num_classes` classes.

    patch_size: the patch a model should use at this image size (a grid of about 4 to 14 tokens a side); a
    search space builds its architectures with it, an explicit `--patch-size` replaces it.
    """

    img_size: int
    in_chans: int
    num_classes: int
    patch_size: int = 16

    def __post_init__(self) -> None:
        for name, highest in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name}={value!r}: expected a positive integer")
            if value > highest:
                raise UsageError(f"{name}={value}: expected at most {highest}")

    def grid(self, patch_size: int | None = None) -> int:
        """Tokens per side at `patch_size` (the shape's own by default)."""
        return self.img_size // (patch_size or self.patch_size)

    def patch_tokens(self, patch_size: int | None = None) -> int:
        """Patch tokens of one image (a class token, where the backbone has one, comes on top)."""
        return self.grid(patch_size) ** 2


IMAGENET = DataShape(img_size=224, in_chans=3, num_classes=1000, patch_size=16)
