"""How a share of a labelled set is held out: the validation defaults, the range each fraction setting takes (one
check, used by every reader of it), the version of the rule, and the seeded, stratified sample (scikit-learn's)
every split of `trainers.datasets` is drawn with.

Imports neither numpy nor scikit-learn at module level, so command-line parsers can read the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qkvnas_core.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
# A search's validation images at most (`--val-images`): the binomial standard error of an accuracy on 10,000
# images is at most 0.5 points, well inside one architecture's seed-to-seed spread; CIFAR's 10,000 held-out images
# are kept whole; a 5% proxy of ImageNet would otherwise evaluate 256,000 images every epoch.
DEFAULT_VAL_IMAGES = 10_000
# Transfer sets are large (CIFAR: 50,000 training images): a tenth is validation enough, the rest fine-tunes.
TRANSFER_VAL_FRACTION = 0.1
# Which images a fraction and a seed hold out: 1 was a hand-written per-class draw, 2 is scikit-learn's
# train_test_split. search.json and result.json record it, so a resume never mixes two versions' splits.
SPLIT_VERSION = 2
# Separate random streams of one seed: validation never moves with train_fraction or the validation cap, nor a
# built-in test set with any of them.
VAL_STREAM, TRAIN_FRACTION_STREAM, TEST_STREAM, VAL_CAP_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class FractionRange:
    """The shares a fraction setting takes: above 0, below 1, and 1 itself (the whole set) when `whole`."""

    name: str
    whole: bool

    @property
    def expected(self) -> str:
        """What a message says the setting takes."""
        return "a number above 0, at most 1" if self.whole else "a number strictly between 0 and 1"

    def holds(self, value: float) -> bool:
        return 0 < value < 1 or (self.whole and value == 1)

    def check(self, value: float, given: str = "") -> float:
        """`value` when in range, else one UsageError naming it as `given` ('--val-fraction 1.0'; default
        'val_fraction=1.0')."""
        if not self.holds(value):
            raise UsageError(f"{given or f'{self.name}={value}'}: expected {self.expected}")
        return value


# Holding out the whole set would leave nothing to train on; training on the whole of what is left is the default.
VAL_FRACTION = FractionRange("val_fraction", whole=False)
TRAIN_FRACTION = FractionRange("train_fraction", whole=True)


def stratified_sample(labels: np.ndarray, fraction: float, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of a seeded, stratified `fraction` of `labels` (scikit-learn's train_test_split).

    Classes are drawn in proportion to their size; a class with one image is never drawn, and the sample
    holds at least one image per other class and leaves as many (scikit-learn's own minimum). `stream`
    separates the random streams of one seed (validation, train_fraction), so one never moves the other.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    drawable = np.flatnonzero(np.isin(labels, classes[counts > 1]))
    drawable_classes = int((counts > 1).sum())
    if not drawable_classes:
        return np.zeros(0, dtype=np.int64)
    size = min(max(int(fraction * len(drawable) + 0.5), drawable_classes), len(drawable) - drawable_classes)
    random_state = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    _, sample = train_test_split(drawable, test_size=size, stratify=labels[drawable], random_state=random_state)
    return np.sort(sample)


def stratified_subset(labels: np.ndarray, size: int, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of a seeded sample of exactly `size` of `labels` (size < len(labels)), classes kept in
    proportion (scikit-learn's resample without replacement), with no minimum per class: the validation cap, where
    what is left out is not trained on either."""
    import numpy as np
    from sklearn.utils import resample

    random_state = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    picked = resample(np.arange(len(labels)), replace=False, n_samples=size, stratify=labels,
                      random_state=random_state)
    return np.sort(picked)
