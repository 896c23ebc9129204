"""scikit-learn's 8 x 8 handwritten digits (built in): 1,797 images, a fixed fifth of them the test split."""
from __future__ import annotations

import numpy as np

from trainers.datasets.splits import SourceData, SourceRequest, complement, dataset_info, subset, tensor_split
from trainers.holdout import TEST_STREAM, stratified_sample

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed, so the digits test set is the same whatever seed a search uses


def read_digits(request: SourceRequest) -> SourceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    whole = tensor_split(images, digits.target)
    test_index = stratified_sample(digits.target, TEST_FRACTION, TEST_SEED, TEST_STREAM)
    info = dataset_info("digits", 10, 8, 1, (0.3053,), (0.3759,), tuple(str(digit) for digit in range(10)))
    return SourceData(info, subset(whole, complement(test_index, len(whole))), subset(whole, test_index))
