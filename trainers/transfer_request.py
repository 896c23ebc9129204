"""What `nas transfer` asks for, each field its flag (qkvnas_core.settings): light, so that the command's parser
is built without torch (trainers/transfer.py runs the request)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.settings import setting
from search_spaces.model_tools.device import DEFAULT_DEVICE
from trainers.holdout import DEFAULT_SPLIT_SEED, TRANSFER_VAL_FRACTION
from trainers.recipe import TRANSFER

PAPER_DATASETS = ("cifar10", "cifar100", "stanford_cars", "stl10")


@dataclass(frozen=True)
class TransferRequest:
    """What `nas transfer` asks for: checkpoints (winners, baselines), transfer sets, recipe, where to run."""

    checkpoints: tuple[str, ...] = ()
    baseline: tuple[str, ...] = setting((), metavar="CHECKPOINT", group="models", repeat=True,
                                        help="a checkpoint fine-tuned as the others")
    datasets: str = setting(",".join(PAPER_DATASETS), metavar="NAME,NAME", group="data",
                            help="transfer sets (the paper's four)")
    data_dir: tuple[str, ...] = setting(
        (), metavar="DIR|NAME=DIR", group="data", repeat=True,
        help="a root holding each dataset's own folder (cifar-10-batches-py/, cifar-100-python/, stl10_binary/, "
             "stanford_cars/: torchvision's root), and/or NAME=DIR for one dataset (repeatable)")
    download: bool = setting(False, group="data", help="every missing dataset that can be (torchvision)")
    val_fraction: float = setting(TRANSFER_VAL_FRACTION, group="data", help="of each training set")
    split_seed: int = setting(DEFAULT_SPLIT_SEED, group="data", help="")
    recipe: str = setting(TRANSFER.name, group="recipe", help="")
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = setting(0, group="running", help="of the new head's initialisation")
    out: str | None = setting(None, group="running", help="", default_text="the first checkpoint's run folder")
    resume: bool = setting(False, group="running", help="interrupted fine-tunes continue, finished ones are skipped")
    device: str = setting(DEFAULT_DEVICE, group="running", help="")
    compile: bool = setting(False, group="running", help="")

    def __post_init__(self) -> None:
        if not self.checkpoints and not self.baseline:
            raise UsageError("nothing to fine-tune: expected CHECKPOINT arguments or --baseline CHECKPOINT")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed}: expected a non-negative integer")
